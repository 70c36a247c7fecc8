"""Secrets, with no cluster: which Secret data the pods read at start (and so roll on), the
checksum of it (stable, blind to keys nobody reads, absent Secrets hash as absent) on the
worker, beat and Flower pod templates, and the mirrors of the app's image pull Secrets in
a team's namespace."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

from celery_operator.api.labels import (
    MIRROR_OF_ANNOTATION,
    PULL_SECRET_MIRRORS_ANNOTATION,
    SECRET_CHECKSUM_ANNOTATION,
)
from celery_operator.plans.celeryapp import plan_app
from celery_operator.plans.celeryapp import secret_reads as app_reads
from celery_operator.plans.celeryworkerpool import PoolPlan, plan_pool, secret_reads
from celery_operator.plans.flower import plan_flower
from celery_operator.plans.flower import secret_reads as flower_reads
from celery_operator.plans.secrets import (
    SecretKey,
    SecretUse,
    SecretView,
    pod_checksum,
    pod_secret_uses,
    secret_checksum,
)
from celery_operator.render import celeryworkerpool as render
from tests.support import objects as o
from tests.unit.test_plans import CROSS, TEAM, app_body, app_inputs, flower_inputs, pool_inputs


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def view(**data: str) -> SecretView:
    return SecretView(True, "Opaque", {k: b64(v) for k, v in data.items()})


DOCKER = SecretView(
    True, "kubernetes.io/dockerconfigjson", {".dockerconfigjson": b64('{"auths": {}}')}
)


# ---- which Secret data a pod reads at start ---------------------------------------------------
def test_env_keys_and_env_from_count_volumes_and_pull_secrets_do_not() -> None:
    deployment = render.build_worker_deployment(
        o.app(
            spec={
                "imagePullSecrets": [{"name": "regcred"}],
                "env": [
                    {"name": "A", "valueFrom": {"secretKeyRef": {"name": "app-env", "key": "a"}}},
                    {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "c"}}},
                ],
                "envFrom": [{"secretRef": {"name": "app-all"}}, {"configMapRef": {"name": "cm"}}],
                "podDefaults": {
                    "volumes": [{"name": "certs", "secret": {"secretName": "tls"}}],
                    "volumeMounts": [{"name": "certs", "mountPath": "/certs"}],
                },
            }
        ),
        o.pool(
            spec={
                "envFrom": [{"secretRef": {"name": "pool-all", "optional": True}}],
                "initContainers": [
                    {
                        "name": "init",
                        "image": "busybox",
                        "env": [
                            {
                                "name": "T",
                                "valueFrom": {"secretKeyRef": {"name": "init", "key": "t"}},
                            }
                        ],
                    }
                ],
                "sidecars": [
                    {"name": "side", "image": "busybox", "envFrom": [{"secretRef": {"name": "sc"}}]}
                ],
            }
        ),
        None,
        replicas=1,
    )
    assert pod_secret_uses(deployment) == (
        SecretUse("shop", "app-all"),
        SecretUse("shop", "app-env", "a"),
        SecretUse("shop", "init", "t"),
        SecretUse("shop", "pool-all"),
        SecretUse("shop", "sc"),
        SecretUse("shop", "shop-backend", "url"),
        SecretUse("shop", "shop-broker", "url"),
    )


def test_flower_reads_its_basic_auth_key() -> None:
    plan = plan_flower(flower_inputs())
    assert flower_reads(flower_inputs()) == (
        ("shop", "shop-backend"),
        ("shop", "shop-broker"),
        ("shop", "shop-flower-auth"),
    )
    assert plan.children is not None
    assert SecretUse("shop", "shop-flower-auth", "auth") in pod_secret_uses(plan.children[0])


# ---- the checksum ------------------------------------------------------------------------------
USES = (SecretUse("shop", "broker", "url"), SecretUse("shop", "extra"))
VIEWS: dict[SecretKey, SecretView] = {
    ("shop", "broker"): view(url="redis://:pw@r/0", other="x"),
    ("shop", "extra"): view(A="1", B="2"),
}


def test_the_checksum_follows_the_keys_read_and_only_those() -> None:
    base = secret_checksum(USES, VIEWS)
    assert len(base) == 64
    # Stable: the same data in any order is the same checksum (and after a restart: it
    # depends on nothing but the data).
    assert secret_checksum(tuple(reversed(USES)), dict(reversed(VIEWS.items()))) == base
    assert base == secret_checksum(USES, {k: dataclasses.replace(v) for k, v in VIEWS.items()})
    # A key of the secretKeyRef Secret that no pod reads: no change.
    unrelated = {**VIEWS, ("shop", "broker"): view(url="redis://:pw@r/0", other="y")}
    assert secret_checksum(USES, unrelated) == base
    # The key read: a change.
    rotated = {**VIEWS, ("shop", "broker"): view(url="redis://:new@r/0", other="x")}
    assert secret_checksum(USES, rotated) != base
    # envFrom reads all of its Secret: any key, added or changed, is a change.
    for data in ({"A": "1", "B": "3"}, {"A": "1", "B": "2", "C": "3"}, {"A": "1"}):
        assert secret_checksum(USES, {**VIEWS, ("shop", "extra"): view(**data)}) != base


def test_a_secret_that_does_not_exist_hashes_as_absent() -> None:
    gone = {("shop", "broker"): VIEWS[("shop", "broker")]}
    absent = secret_checksum(USES, gone)
    assert absent != secret_checksum(USES, VIEWS)
    assert absent == secret_checksum(USES, {**gone, ("shop", "extra"): SecretView(exists=False)})
    # A key that is not there is absent too; an empty Secret is not an absent one.
    assert secret_checksum(USES, {**VIEWS, ("shop", "broker"): view(other="x")}) != (
        secret_checksum(USES, VIEWS)
    )
    assert secret_checksum(USES, {**gone, ("shop", "extra"): view()}) != absent


def test_no_secret_read_no_checksum_and_an_unreadable_one_keeps_the_current() -> None:
    assert pod_checksum((), VIEWS, "old") is None
    failed = {**VIEWS, ("shop", "extra"): SecretView(error="cannot read it: 0 TimeoutError")}
    assert pod_checksum(USES, failed, "old") == "old"
    # With none yet (a new Deployment), it is computed with what could be read.
    assert pod_checksum(USES, failed, None) == secret_checksum(
        USES, {**VIEWS, ("shop", "extra"): SecretView()}
    )
    assert pod_checksum(USES, VIEWS, "old") == secret_checksum(USES, VIEWS)


# ---- the worker, beat and Flower Deployments carry it ------------------------------------------
def deployment_of(plan: Any) -> dict[str, Any]:
    assert plan.children is not None
    return dict(next(c for c in plan.children if c["kind"] == "Deployment"))


def template_checksum(d: dict[str, Any]) -> str | None:
    annotations = d["spec"]["template"]["metadata"].get("annotations") or {}
    value = annotations.get(SECRET_CHECKSUM_ANNOTATION)
    assert (d["metadata"].get("annotations") or {}).get(SECRET_CHECKSUM_ANNOTATION) == value
    return None if value is None else str(value)


SHOP = {
    ("shop", "shop-broker"): view(url="redis://:pw@redis.shop:6379/0", note="a"),
    ("shop", "shop-backend"): view(url="redis://:pw@redis.shop:6379/1"),
}


def test_a_pool_in_the_apps_namespace_rolls_on_the_apps_secrets() -> None:
    i = pool_inputs(secrets=SHOP)
    assert secret_reads(i) == (("shop", "shop-backend"), ("shop", "shop-broker"))
    before = template_checksum(deployment_of(plan_pool(i)))
    assert before is not None
    unrelated = {**SHOP, ("shop", "shop-broker"): view(url="redis://:pw@redis.shop:6379/0")}
    assert template_checksum(deployment_of(plan_pool(pool_inputs(secrets=unrelated)))) == before
    rotated = {**SHOP, ("shop", "shop-broker"): view(url="redis://:new@redis.shop:6379/0")}
    assert template_checksum(deployment_of(plan_pool(pool_inputs(secrets=rotated)))) != before


def test_a_team_pool_rolls_on_the_source_of_its_connection_mirror() -> None:
    """The workers read the mirror, the checksum reads the app's Secret it copies: the new
    mirror and the new template come from the same reconcile (one rollout, not two)."""
    spec = {"autoscaling": None, "envFrom": [{"secretRef": {"name": "team-env"}}]}
    views = {**SHOP, ("team-a", "team-env"): view(K="v")}
    i = pool_inputs(TEAM, spec=spec, connections=CROSS, secrets=views)
    assert secret_reads(i) == (
        ("shop", "shop-backend"),
        ("shop", "shop-broker"),
        ("team-a", "team-env"),
    )
    d = deployment_of(plan_pool(i))
    env = {e["name"]: e for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CELERY_BROKER_URL"]["valueFrom"]["secretKeyRef"]["name"] == "shop-emails-connection"
    expected = secret_checksum(
        (
            SecretUse("shop", "shop-backend", "url"),
            SecretUse("shop", "shop-broker", "url"),
            SecretUse("team-a", "team-env"),
        ),
        views,
    )
    assert template_checksum(d) == expected


def test_beat_and_flower_carry_the_checksum_too() -> None:
    i = app_inputs(secrets=SHOP)
    assert app_reads(i) == (("shop", "shop-backend"), ("shop", "shop-broker"))
    beat = deployment_of(plan_app(i))
    assert template_checksum(beat) is not None
    assert app_reads(app_inputs(spec={"beat": {"enabled": False}})) == ()
    assert app_reads(app_inputs(apply=False)) == ()
    auth = {**SHOP, ("shop", "shop-flower-auth"): view(auth="admin:pw")}
    flower = template_checksum(deployment_of(plan_flower(flower_inputs(secrets=auth))))
    changed = {**auth, ("shop", "shop-flower-auth"): view(auth="admin:new")}
    assert template_checksum(deployment_of(plan_flower(flower_inputs(secrets=changed)))) != flower


def test_a_literal_broker_and_no_secret_means_no_annotation() -> None:
    app = app_body(spec={"broker": {"url": {"value": "redis://redis.shop:6379/0"}}})
    app["spec"].pop("resultBackend")
    app["spec"]["broker"]["url"].pop("secretKeyRef")
    i = pool_inputs(app=app, spec={"scaleDown": {"protectBusyWorkers": False}})
    assert secret_reads(i) == ()
    d = deployment_of(plan_pool(i))
    assert template_checksum(d) is None
    assert "annotations" not in d["metadata"]


def test_nothing_is_read_for_a_pass_that_renders_nothing() -> None:
    assert secret_reads(pool_inputs(TEAM, labels={})) == ()
    assert secret_reads(pool_inputs(TEAM, apply=False)) == ()
    assert secret_reads(pool_inputs(app=app_body(spec={"paused": True}))) == ()
    assert flower_reads(flower_inputs(apply=False)) == ()


# ---- the image pull Secrets of a team's pool ----------------------------------------------------
PULLS = {"imagePullSecrets": [{"name": "regcred"}, {"name": "mirror"}, {"name": "regcred"}]}


def team_plan(secrets: dict[SecretKey, SecretView], **kw: Any) -> PoolPlan:
    return plan_pool(
        pool_inputs(
            TEAM,
            spec={"autoscaling": None},
            app=app_body(spec=PULLS),
            connections=CROSS,
            secrets=secrets,
            **kw,
        )
    )


def test_a_team_pool_gets_mirrors_of_the_apps_pull_secrets() -> None:
    plan = team_plan({("shop", "regcred"): DOCKER, ("shop", "mirror"): DOCKER})
    assert plan.children is not None
    secrets = [c for c in plan.children if c["kind"] == "Secret"]
    assert [s["metadata"]["name"] for s in secrets] == [
        "shop-emails-connection",
        "shop-emails-pull-regcred",
        "shop-emails-pull-mirror",
    ]
    pull = secrets[1]
    assert pull["type"] == "kubernetes.io/dockerconfigjson"
    assert pull["data"] == DOCKER.data
    assert pull["metadata"]["annotations"] == {MIRROR_OF_ANNOTATION: "shop/regcred"}
    assert pull["metadata"]["ownerReferences"][0]["kind"] == "CeleryWorkerPool"
    d = deployment_of(plan)
    assert d["spec"]["template"]["spec"]["imagePullSecrets"] == [
        {"name": "shop-emails-pull-regcred"},
        {"name": "shop-emails-pull-mirror"},
    ]
    assert d["metadata"]["annotations"][PULL_SECRET_MIRRORS_ANNOTATION] == (
        "shop-emails-pull-regcred,shop-emails-pull-mirror"
    )
    # The mirrors come before the Deployment: pods of a new template find them.
    kinds = [c["kind"] for c in plan.children]
    assert kinds.index("Deployment") > 2
    assert plan.unready is None
    assert (plan.keep_secrets, plan.stale_secrets) == ((), ())
    # A pull Secret's data is not read by the pods: it does not roll them.
    other = team_plan({("shop", "regcred"): view(x="y"), ("shop", "mirror"): DOCKER})
    assert template_checksum(deployment_of(other)) == template_checksum(d)


def test_a_pool_in_the_apps_namespace_uses_the_apps_pull_secrets_as_they_are() -> None:
    plan = plan_pool(pool_inputs(app=app_body(spec=PULLS)))
    assert plan.children is not None
    assert [c["kind"] for c in plan.children] == ["Deployment", "PodDisruptionBudget"]
    assert (
        deployment_of(plan)["spec"]["template"]["spec"]["imagePullSecrets"]
        == PULLS["imagePullSecrets"]
    )
    assert secret_reads(pool_inputs(app=app_body(spec=PULLS))) == (
        ("shop", "shop-backend"),
        ("shop", "shop-broker"),
    )


def test_a_missing_or_unreadable_pull_secret_is_reported_and_its_mirror_kept() -> None:
    forbidden = SecretView(error="cannot read it: 403 Forbidden")
    plan = team_plan({("shop", "regcred"): forbidden})
    assert plan.children is not None
    names = [c["metadata"]["name"] for c in plan.children if c["kind"] == "Secret"]
    assert names == ["shop-emails-connection"]
    assert plan.keep_secrets == ("shop-emails-pull-regcred", "shop-emails-pull-mirror")
    assert plan.unready is not None
    assert plan.unready.reason == "PullSecretUnreadable"
    assert "Secret shop/regcred (cannot read it: 403 Forbidden) as shop-emails-pull-regcred" in (
        plan.unready.message
    )
    assert "Secret shop/mirror (it does not exist) as shop-emails-pull-mirror" in (
        plan.unready.message
    )
    # The pods keep naming both: their template does not move while a Secret is missing.
    ok = team_plan({("shop", "regcred"): DOCKER, ("shop", "mirror"): DOCKER})
    assert deployment_of(plan)["spec"]["template"] == deployment_of(ok)["spec"]["template"]


def test_mirrors_of_pull_secrets_no_longer_named_are_deleted_by_name() -> None:
    cached = {
        "metadata": {
            "annotations": {
                PULL_SECRET_MIRRORS_ANNOTATION: "shop-emails-pull-regcred,shop-emails-pull-old"
            }
        },
        "spec": {"replicas": 1},
    }
    plan = team_plan({("shop", "regcred"): DOCKER, ("shop", "mirror"): DOCKER}, deployment=cached)
    assert plan.stale_secrets == ("shop-emails-pull-old",)
    # Not accepted any more: every mirror the Deployment names goes with the workers.
    unbound = plan_pool(pool_inputs(TEAM, labels={}, deployment=cached))
    assert unbound.delete_children
    assert unbound.known_secrets == (
        "shop-emails-connection",
        "shop-emails-keda",
        "shop-emails-pull-old",
        "shop-emails-pull-regcred",
    )


def test_a_deployment_from_before_checksums_is_adopted_without_a_roll() -> None:
    """An upgrade: the live Deployment's template has no checksum. The checksum becomes its
    baseline (metadata only: no new template, no roll); a later change of the data puts
    the checksum on the template (one roll); from then on the template follows it."""
    from celery_operator.api.labels import SECRET_BASELINE_ANNOTATION, SECRET_CHECKSUM_ANNOTATION
    from celery_operator.plans.secrets import current_checksum, secret_rollout

    def deployment(**annotations: str) -> dict[str, Any]:
        return {"metadata": {"name": "d", "annotations": annotations}}

    assert secret_rollout("c1", None) == ("c1", None), "a new Deployment: on the template"
    assert secret_rollout(None, deployment()) == (None, None), "reads no Secret"
    old = deployment()
    assert secret_rollout("c1", old) == (None, "c1"), "adopted: baseline only"
    adopted = deployment(**{SECRET_BASELINE_ANNOTATION: "c1"})
    assert current_checksum(adopted) == "c1"
    assert secret_rollout("c1", adopted) == (None, "c1"), "unchanged: still no roll"
    assert secret_rollout("c2", adopted) == ("c2", None), "changed: on the template, once"
    rolled = deployment(**{SECRET_CHECKSUM_ANNOTATION: "c2"})
    assert secret_rollout("c2", rolled) == ("c2", None)
    assert secret_rollout("c3", rolled) == ("c3", None)
