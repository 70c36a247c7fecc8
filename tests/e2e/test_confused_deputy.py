"""No confused deputy, on the real control plane: a user who may edit CeleryApps and
Flowers but not `get` a Secret cannot make the operator read it for them by naming it.

The users are impersonated with kubectl (`--as`, `--as-group`), their rights are real
RBAC Roles, and the webhook asks the real apiserver with SubjectAccessReviews under the
RBAC that ships (it needs `create` on subjectaccessreviews)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.e2e.test_controllers import POOL, app, secret
from tests.e2e.test_webhooks import FLOWER
from tests.support.cluster import Cluster, Result, wait_for
from tests.support.objects import deep_merge
from tests.support.operator import NAMESPACE, OperatorProcess, WebhookProcess
from tests.support.webhook import serving_webhook

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

USER = "alice"
EDIT = {
    "apiGroups": ["celeryproject.org"],
    "resources": ["celeryapps", "flowers", "celeryworkerpools"],
    "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
}


def grant(
    cluster: Cluster, ns: str, name: str, rule: dict[str, Any], *, user: str = "", group: str = ""
) -> None:
    """A Role with one rule, bound to a user or a group."""
    subject = {"kind": "User", "name": user} if user else {"kind": "Group", "name": group}
    cluster.apply(
        [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": name, "namespace": ns},
                "rules": [rule],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": name, "namespace": ns},
                "subjects": [{**subject, "apiGroup": "rbac.authorization.k8s.io"}],
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            },
        ]
    )


def can_i(cluster: Cluster, ns: str, *args: str) -> bool:
    return cluster.run("auth", "can-i", *args, "-n", ns).stdout.strip() == "yes"


def wait_can_i(cluster: Cluster, ns: str, *args: str, expect: bool = True) -> None:
    """Until the apiserver's RBAC authorizer has seen a new Role or binding."""
    wait_for(
        f"`kubectl auth can-i {' '.join(args)}` to say {'yes' if expect else 'no'}",
        lambda: can_i(cluster, ns, *args) == expect,
    )


def secret_reader(cluster: Cluster, ns: str, name: str, *, user: str = "", group: str = "") -> None:
    """`get` on one Secret, by name."""
    rule = {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [name], "verbs": ["get"]}
    grant(cluster, ns, f"read-{name}", rule, user=user, group=group)
    who = [f"--as={user}"] if user else [f"--as={USER}", f"--as-group={group}"]
    wait_can_i(cluster, ns, "get", f"secret/{name}", *who)


def as_user(cluster: Cluster, *args: str, obj: Any = None, groups: tuple[str, ...] = ()) -> Result:
    """kubectl as the impersonated user (and groups); `obj` is applied from stdin."""
    who = [f"--as={USER}", *(f"--as-group={g}" for g in groups)]
    text = yaml.safe_dump_all(obj if isinstance(obj, list) else [obj]) if obj is not None else None
    return cluster.run(*who, *args, input=text)


@pytest.fixture(scope="module")
def webhook(
    cluster: Cluster, crds: list[str], operator: OperatorProcess
) -> Iterator[WebhookProcess]:
    yield from serving_webhook(cluster)


@pytest.fixture
def team(cluster: Cluster, namespace: str) -> str:
    """A namespace where alice may edit CeleryApps, Flowers and pools, and read no Secret;
    the Secrets `shop-broker` and `other` exist."""
    cluster.apply([secret(namespace), secret(namespace, "other")])
    grant(cluster, namespace, "celery-editor", EDIT, user=USER)
    wait_can_i(cluster, namespace, "create", "celeryapps.celeryproject.org", f"--as={USER}")
    assert not can_i(cluster, namespace, "get", "secret/shop-broker", f"--as={USER}")
    return namespace


def denial(ns: str, secret_name: str, field: str) -> str:
    return f'{field}: user "{USER}" may not get secret "{ns}/{secret_name}"'


def test_naming_a_secret_the_user_may_not_get_is_refused_until_granted(
    cluster: Cluster, webhook: WebhookProcess, team: str
) -> None:
    r = as_user(cluster, "apply", "-f", "-", obj=app(team))
    assert r.code != 0, f"admitted: {r.stdout}"
    assert 'admission webhook "vceleryapp.celeryproject.org" denied the request' in r.stderr
    assert denial(team, "shop-broker", "spec.broker.url.secretKeyRef.name") in r.stderr
    assert 'ask for "get" on that Secret' in r.stderr
    assert not cluster.exists("celeryapp", "shop", team)

    # Server-side dry run: the same verdict, nothing stored.
    r = as_user(cluster, "apply", "--dry-run=server", "-f", "-", obj=app(team))
    assert r.code != 0, f"admitted: {r.stdout}"
    assert "may not get secret" in r.stderr

    secret_reader(cluster, team, "shop-broker", user=USER)
    r = as_user(cluster, "apply", "-f", "-", obj=app(team))
    assert r.code == 0, r.stderr
    assert cluster.exists("celeryapp", "shop", team)


def test_every_secret_reference_of_an_app_is_checked(
    cluster: Cluster, webhook: WebhookProcess, team: str
) -> None:
    secret_reader(cluster, team, "shop-broker", user=USER)
    spec = {
        "resultBackend": {"url": {"secretKeyRef": {"name": "other", "key": "url"}}},
        "imagePullSecrets": [{"name": "other"}],
        "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "other", "key": "url"}}}],
        "envFrom": [{"secretRef": {"name": "other"}}],
    }
    r = as_user(
        cluster, "apply", "-f", "-", obj={**app(team), "spec": {**app(team)["spec"], **spec}}
    )
    assert r.code != 0, f"admitted: {r.stdout}"
    for field in (
        "spec.resultBackend.url.secretKeyRef.name",
        "spec.imagePullSecrets[0].name",
        "spec.env[0].valueFrom.secretKeyRef.name",
        "spec.envFrom[0].secretRef.name",
    ):
        assert denial(team, "other", field) in r.stderr
    assert "shop-broker" not in r.stderr  # the one alice may read is not reported


def test_updates_check_only_new_secret_references(
    cluster: Cluster, webhook: WebhookProcess, team: str
) -> None:
    cluster.apply(app(team))  # by an admin, who may read the Secret
    # An unrelated field: no secret rights needed, the reference did not change.
    r = as_user(
        cluster, "patch", "celeryapp", "shop", "-n", team, "--type=merge", "-p",
        '{"spec": {"image": "ghcr.io/example/shop:1.4.3"}}',
    )  # fmt: skip
    assert r.code == 0, r.stderr
    assert cluster.get("celeryapp", "shop", team)["spec"]["image"] == "ghcr.io/example/shop:1.4.3"

    # A reference to a Secret alice may not read: refused, and nothing changed.
    r = as_user(
        cluster, "patch", "celeryapp", "shop", "-n", team, "--type=merge", "-p",
        '{"spec": {"broker": {"url": {"secretKeyRef": {"name": "other", "key": "url"}}}}}',
    )  # fmt: skip
    assert r.code != 0, f"admitted: {r.stdout}"
    assert denial(team, "other", "spec.broker.url.secretKeyRef.name") in r.stderr
    live = cluster.get("celeryapp", "shop", team)
    assert live["spec"]["broker"]["url"]["secretKeyRef"]["name"] == "shop-broker"

    # Admitting every namespace spreads mirrors of the broker Secret: checked too.
    r = as_user(
        cluster, "patch", "celeryapp", "shop", "-n", team, "--type=json", "-p",
        '[{"op": "replace", "path": "/spec/workerPoolPolicy", "value": {"namespaceSelector": {}}}]',
    )  # fmt: skip
    assert r.code != 0, f"admitted: {r.stdout}"
    assert denial(team, "shop-broker", "spec.broker.url.secretKeyRef.name") in r.stderr

    # Once alice may read it, the same change goes through.
    secret_reader(cluster, team, "other", user=USER)
    r = as_user(
        cluster, "patch", "celeryapp", "shop", "-n", team, "--type=merge", "-p",
        '{"spec": {"broker": {"url": {"secretKeyRef": {"name": "other", "key": "url"}}}}}',
    )  # fmt: skip
    assert r.code == 0, r.stderr


def test_flower_secret_references_are_checked(
    cluster: Cluster, webhook: WebhookProcess, team: str
) -> None:
    cluster.apply(app(team))
    flower = deep_merge(
        FLOWER,
        {
            "metadata": {"namespace": team},
            "spec": {
                "basicAuth": {"secretRef": {"name": "other", "key": "url"}},
                "ingress": {"enabled": True, "host": "f.example", "tls": {"secretName": "other"}},
            },
        },
    )
    r = as_user(cluster, "apply", "-f", "-", obj=flower)
    assert r.code != 0, f"admitted: {r.stdout}"
    assert 'admission webhook "vflower.celeryproject.org" denied the request' in r.stderr
    assert denial(team, "other", "spec.basicAuth.secretRef.name") in r.stderr
    assert denial(team, "other", "spec.ingress.tls.secretName") in r.stderr

    no_auth = copy.deepcopy(flower)
    no_auth["spec"].pop("basicAuth")
    no_auth["spec"].pop("ingress")
    r = as_user(cluster, "apply", "-f", "-", obj=no_auth)  # names no Secret
    assert r.code == 0, r.stderr


def test_secrets_in_pool_volumes_and_sidecars_are_checked(
    cluster: Cluster, webhook: WebhookProcess, team: str
) -> None:
    """A Secret volume or a sidecar's env hands a Secret to the pods just as env does."""
    cluster.apply(app(team))
    spec = {
        "volumes": [{"name": "creds", "secret": {"secretName": "other"}}],
        "volumeMounts": [{"name": "creds", "mountPath": "/creds"}],
        "sidecars": [
            {
                "name": "proxy",
                "image": "registry.example.com/proxy:1.0",
                "envFrom": [{"secretRef": {"name": "other"}}],
            }
        ],
    }
    pool = deep_merge(POOL, {"metadata": {"namespace": team}, "spec": spec})
    r = as_user(cluster, "apply", "-f", "-", obj=pool)
    assert r.code != 0, f"admitted: {r.stdout}"
    assert denial(team, "other", "spec.volumes[0].secret.secretName") in r.stderr
    assert denial(team, "other", "spec.sidecars[0].envFrom[0].secretRef.name") in r.stderr
    assert not cluster.exists("celeryworkerpool", "default", team)

    secret_reader(cluster, team, "other", user=USER)
    r = as_user(cluster, "apply", "-f", "-", obj=pool)
    assert r.code == 0, r.stderr


def test_rights_through_a_group_count(cluster: Cluster, webhook: WebhookProcess, team: str) -> None:
    secret_reader(cluster, team, "shop-broker", group="broker-readers")
    r = as_user(cluster, "apply", "-f", "-", obj=app(team))
    assert r.code != 0, f"admitted: {r.stdout}"
    assert denial(team, "shop-broker", "spec.broker.url.secretKeyRef.name") in r.stderr
    r = as_user(cluster, "apply", "-f", "-", obj=app(team), groups=("broker-readers",))
    assert r.code == 0, r.stderr


def test_a_failing_access_review_refuses_the_request(
    cluster: Cluster, webhook: WebhookProcess, team: str
) -> None:
    """Without the right to create SubjectAccessReviews the webhook cannot check: it
    refuses (fail closed) and says why, even to a user who may read the Secret."""
    secret_reader(cluster, team, "shop-broker", user=USER)
    role = next(d for d in webhook.rbac() if d["kind"] == "ClusterRole")
    sa = f"--as=system:serviceaccount:{NAMESPACE}:{webhook.service_account}"
    review = "subjectaccessreviews.authorization.k8s.io"
    crippled = copy.deepcopy(role)
    crippled["rules"] = [
        r for r in role["rules"] if "subjectaccessreviews" not in r.get("resources", [])
    ]
    assert crippled["rules"] != role["rules"], "the shipped webhook RBAC creates reviews"
    try:
        cluster.apply(crippled)
        wait_can_i(cluster, team, "create", review, sa, expect=False)
        r = as_user(cluster, "apply", "-f", "-", obj=app(team))
        assert r.code != 0, f"admitted: {r.stdout}"
        assert (
            f'spec.broker.url.secretKeyRef.name: could not check whether user "{USER}" may get '
            f'secret "{team}/shop-broker": the SubjectAccessReview failed (403 Forbidden'
        ) in r.stderr
        assert "refused until the check succeeds" in r.stderr
        assert not cluster.exists("celeryapp", "shop", team)
    finally:
        cluster.apply(role)
        wait_can_i(cluster, team, "create", review, sa)
    r = as_user(cluster, "apply", "-f", "-", obj=app(team))  # the check works again
    assert r.code == 0, r.stderr


def test_webhook_log_is_clean(webhook: WebhookProcess) -> None:
    assert webhook.errors() == [], webhook.tail(60)
