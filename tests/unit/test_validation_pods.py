"""What users add to pods (volumes, mounts, init containers, sidecars, the readiness probe):
every rejection, with its field path and what is allowed, in the validators the webhook and
the controllers share, in the plans (a pool or Flower that collides with its app) and at
admission."""

from __future__ import annotations

from typing import Any

import pytest

from celery_operator.api.celeryapp import CeleryApp
from celery_operator.api.conditions import INVALID_SPEC
from celery_operator.api.flower import Flower
from celery_operator.plans.celeryworkerpool import plan_pool
from celery_operator.plans.flower import plan_flower
from celery_operator.validation import errors
from celery_operator.validation.celeryapp import validate_app
from celery_operator.validation.celeryworkerpool import (
    PoolContext,
    utilization_without_requests,
    validate_pool,
    validate_pool_binding,
)
from celery_operator.validation.flower import validate_flower, validate_flower_app
from tests.support import objects as o
from tests.support.objects import deep_merge, example
from tests.unit.test_plans import app_body, flower_inputs, pool_inputs
from tests.unit.test_webhook_app import lookup, verdict

CA = {"name": "shop-ca", "configMap": {"name": "shop-ca"}}
CA_MOUNT = {"name": "shop-ca", "mountPath": "/etc/ssl/shop"}
APP_CA = {"podDefaults": {"volumes": [CA], "volumeMounts": [CA_MOUNT]}}
CONFIG = {"name": "config", "configMap": {"name": "worker-config"}}
PROXY = {"name": "proxy", "image": "proxy:1.0"}


def texts(problems: list[Any]) -> list[str]:
    return [str(p) for p in errors(problems)]


def pool_problems(spec: dict[str, Any]) -> list[str]:
    return texts(validate_pool(o.pool(spec=spec)))


def binding_problems(spec: dict[str, Any], app_spec: dict[str, Any] | None = None) -> list[str]:
    app = o.app(spec=app_spec or APP_CA)
    return texts(validate_pool_binding(o.pool(spec=spec), PoolContext(app=app)))


VALID = {
    "volumes": [CONFIG],
    "volumeMounts": [
        {"name": "config", "mountPath": "/etc/worker"},
        {"name": "shop-ca", "mountPath": "/etc/ssl/extra"},  # the app's volume, mounted again
        {"name": "tmp", "mountPath": "/home/app/.cache", "subPath": "cache"},
    ],
    "initContainers": [{"name": "init", "image": "busybox:1.37"}],
    "sidecars": [
        {
            **PROXY,
            "restartPolicy": "Always",
            "volumeMounts": [{"name": "shop-ca", "mountPath": "/c"}],
        }
    ],
    "probes": {"readiness": {"enabled": True}},
}


def test_a_valid_spec_has_no_problem() -> None:
    assert pool_problems(VALID) == []
    assert binding_problems(VALID) == []
    assert texts(validate_app(o.app(spec=APP_CA))) == []


# ---- one pool alone (the webhook, the controller; CEL where it can) ----------------------------
POOL_ALONE = [
    (
        "tmp-volume",
        {"volumes": [{"name": "tmp", "emptyDir": {}}]},
        "spec.volumes[0].name: volume name 'tmp' is the operator's own",
    ),
    (
        "duplicate-volume",
        {"volumes": [CONFIG, {**CONFIG, "emptyDir": {}}]},
        "spec.volumes[1].name: volume name 'config' is already used by spec.volumes[0]",
    ),
    (
        "tmp-mount",
        {"volumes": [CONFIG], "volumeMounts": [{"name": "config", "mountPath": "/tmp/"}]},
        "spec.volumeMounts[0].mountPath: mountPath /tmp is the operator's own",
    ),
    (
        "duplicate-mount-path",
        {
            "volumes": [CONFIG],
            "volumeMounts": [
                {"name": "config", "mountPath": "/etc/worker"},
                {"name": "config", "mountPath": "/etc/worker/"},
            ],
        },
        "spec.volumeMounts[1].mountPath: /etc/worker/ is already mounted by spec.volumeMounts[0]",
    ),
    (
        "sidecar-named-worker",
        {"sidecars": [{**PROXY, "name": "worker"}]},
        "spec.sidecars[0].name: container name 'worker' is the operator's own container",
    ),
    (
        "init-named-worker",
        {"initContainers": [{**PROXY, "name": "worker"}]},
        "spec.initContainers[0].name: container name 'worker' is the operator's own container",
    ),
    (
        "init-and-sidecar-same-name",
        {"initContainers": [PROXY], "sidecars": [PROXY]},
        "spec.sidecars[0].name: container name 'proxy' is already used by spec.initContainers[0]",
    ),
    (
        "sidecar-restart-policy",
        {"sidecars": [{**PROXY, "restartPolicy": "OnFailure"}]},
        "spec.sidecars[0].restartPolicy: sidecars run as Kubernetes native sidecars: "
        "restartPolicy must be unset or Always",
    ),
    (
        "init-container-with-a-probe",
        {"initContainers": [{**PROXY, "readinessProbe": {"tcpSocket": {"port": 5432}}}]},
        "spec.initContainers[0].readinessProbe: lifecycle and probes are allowed only on an "
        "init container with restartPolicy: Always",
    ),
    (
        "readiness-with-solo",
        {"pool": "solo", "concurrency": 1, "probes": {"readiness": {"enabled": True}}},
        "spec.probes.readiness.enabled: probes.readiness cannot be enabled with pool solo",
    ),
]


@pytest.mark.parametrize(("case", "spec", "message"), POOL_ALONE, ids=[c[0] for c in POOL_ALONE])
def test_pool_alone_rejects(case: str, spec: dict[str, Any], message: str) -> None:
    problems = pool_problems(spec)
    assert any(p.startswith(message) for p in problems), problems
    assert len(problems) == 1, problems


# ---- a pool with its app (the webhook and the controller: the app's podDefaults) ---------------
WITH_APP = [
    (
        "volume-of-the-app",
        {"volumes": [{"name": "shop-ca", "secret": {"secretName": "mine"}}]},
        "spec.volumes[0].name: volume name 'shop-ca' is already used by the app's "
        "spec.podDefaults.volumes[0]: the pod gets both lists",
    ),
    (
        "mount-path-of-the-app",
        {"volumes": [CONFIG], "volumeMounts": [{"name": "config", "mountPath": "/etc/ssl/shop"}]},
        "spec.volumeMounts[0].mountPath: /etc/ssl/shop is already mounted by the app's "
        "spec.podDefaults.volumeMounts[0] in the same container",
    ),
    (
        "unknown-volume",
        {"volumes": [CONFIG], "volumeMounts": [{"name": "settings", "mountPath": "/etc/s"}]},
        "spec.volumeMounts[0].name: no volume 'settings' in the pod; a mount may name one of: "
        "tmp, shop-ca, config",
    ),
    (
        "sidecar-mounts-unknown-volume",
        {"sidecars": [{**PROXY, "volumeMounts": [{"name": "certs", "mountPath": "/c"}]}]},
        "spec.sidecars[0].volumeMounts[0].name: no volume 'certs' in the pod",
    ),
    (
        "init-container-mounts-unknown-volume",
        {"initContainers": [{**PROXY, "volumeMounts": [{"name": "certs", "mountPath": "/c"}]}]},
        "spec.initContainers[0].volumeMounts[0].name: no volume 'certs' in the pod",
    ),
]


@pytest.mark.parametrize(("case", "spec", "message"), WITH_APP, ids=[c[0] for c in WITH_APP])
def test_pool_with_its_app_rejects(case: str, spec: dict[str, Any], message: str) -> None:
    assert pool_problems(spec) == []  # the pool alone cannot tell
    problems = binding_problems(spec)
    assert any(p.startswith(message) for p in problems), problems
    assert len(problems) == 1, problems


def test_a_pool_mount_of_an_app_volume_needs_the_app_to_have_it() -> None:
    spec = {"volumeMounts": [{"name": "shop-ca", "mountPath": "/etc/ssl/pool"}]}
    assert binding_problems(spec, app_spec={"podDefaults": {"volumes": [CA]}}) == []
    assert binding_problems(spec, app_spec={"podDefaults": {"volumes": []}}) == [
        "spec.volumeMounts[0].name: no volume 'shop-ca' in the pod; a mount may name one of: tmp"
    ]


# ---- the app: podDefaults and beat ------------------------------------------------------------
APP_CASES = [
    (
        "default-mount-unknown",
        {"podDefaults": {"volumeMounts": [CA_MOUNT]}},
        "spec.podDefaults.volumeMounts[0].name: no volume 'shop-ca' in the pod; a mount may "
        "name one of: tmp",
    ),
    (
        "default-volume-tmp",
        {"podDefaults": {"volumes": [{"name": "tmp", "emptyDir": {}}]}},
        "spec.podDefaults.volumes[0].name: volume name 'tmp' is the operator's own",
    ),
    (
        "beat-mount-unknown",
        {**APP_CA, "beat": {"volumeMounts": [{"name": "schedule", "mountPath": "/etc/beat"}]}},
        "spec.beat.volumeMounts[0].name: no volume 'schedule' in the pod; a mount may name one "
        "of: tmp, shop-ca",
    ),
    (
        "beat-volume-of-the-defaults",
        {**APP_CA, "beat": {"volumes": [CA]}},
        "spec.beat.volumes[0].name: volume name 'shop-ca' is already used by the app's "
        "spec.podDefaults.volumes[0]",
    ),
    (
        "beat-mount-path-of-the-defaults",
        {**APP_CA, "beat": {"volumeMounts": [{"name": "shop-ca", "mountPath": "/etc/ssl/shop"}]}},
        "spec.beat.volumeMounts[0].mountPath: /etc/ssl/shop is already mounted by the app's "
        "spec.podDefaults.volumeMounts[0]",
    ),
    (
        "beat-sidecar-named-beat",
        {"beat": {"sidecars": [{**PROXY, "name": "beat"}]}},
        "spec.beat.sidecars[0].name: container name 'beat' is the operator's own container",
    ),
]


@pytest.mark.parametrize(("case", "spec", "message"), APP_CASES, ids=[c[0] for c in APP_CASES])
def test_app_rejects(case: str, spec: dict[str, Any], message: str) -> None:
    problems = texts(validate_app(o.app(spec=spec)))
    assert any(p.startswith(message) for p in problems), problems
    assert len(problems) == 1, problems


# ---- Flower ------------------------------------------------------------------------------------
def test_flower_rejects_alone_and_with_its_app() -> None:
    alone = texts(validate_flower(o.flower(spec={"initContainers": [{**PROXY, "name": "flower"}]})))
    assert alone == [
        "spec.initContainers[0].name: container name 'flower' is the operator's own container; "
        "choose another name"
    ]
    flower = o.flower(spec={"volumes": [CA], "volumeMounts": [{"name": "x", "mountPath": "/x"}]})
    assert texts(validate_flower(flower)) == []
    with_app = texts(validate_flower_app(flower, o.app(spec=APP_CA)))
    assert [p.split(":")[0] for p in with_app] == [
        "spec.volumes[0].name",
        "spec.volumeMounts[0].name",
    ]


# ---- the plans: a pool or Flower whose additions collide with its app's renders nothing --------
def test_pool_plan_blocks_a_pool_that_collides_with_its_app() -> None:
    spec = {"volumes": [CA]}
    plan = plan_pool(pool_inputs(spec=spec, app=app_body(spec=APP_CA)))
    assert plan.accepted.ok
    assert plan.blocked is not None
    assert plan.blocked.reason == INVALID_SPEC
    assert "spec.volumes[0].name: volume name 'shop-ca' is already used" in plan.blocked.message
    assert plan.children is None
    assert not plan.delete_children
    ok = plan_pool(pool_inputs(spec=spec, app=app_body()))
    assert ok.blocked is None
    assert ok.children


def test_flower_plan_blocks_a_flower_that_collides_with_its_app() -> None:
    plan = plan_flower(flower_inputs(spec={"volumes": [CA]}, app=app_body(spec=APP_CA)))
    assert plan.accepted.ok
    assert plan.blocked is not None
    assert plan.blocked.reason == INVALID_SPEC
    assert plan.blocked.message.startswith("spec.volumes[0].name: volume name 'shop-ca'")
    assert plan.children is None


# ---- admission: all problems in one denial, with field paths ----------------------------------
def test_webhook_denies_a_pool_with_field_paths() -> None:
    app = deep_merge(example("celeryapp/examples/shop.yaml"), {"spec": APP_CA})
    pool = deep_merge(
        example("celeryworkerpool/examples/shop-default.yaml"),
        {
            "spec": {
                "volumes": [CA],
                "volumeMounts": [{"name": "settings", "mountPath": "/etc/s"}],
                "sidecars": [{**PROXY, "name": "worker"}],
            }
        },
    )
    resp = verdict("/validate/celeryworkerpools", pool, lookup(apps={("shop", "shop"): app}))
    assert not resp["allowed"]
    msg = resp["status"]["message"]
    assert msg.startswith("CeleryWorkerPool shop/default is invalid: ")
    for path in ("spec.sidecars[0].name", "spec.volumes[0].name", "spec.volumeMounts[0].name"):
        assert f"{path}: " in msg, msg


def test_webhook_denies_a_flower_that_collides_with_its_app() -> None:
    app = deep_merge(example("celeryapp/examples/shop.yaml"), {"spec": APP_CA})
    flower = deep_merge(example("flower/examples/shop.yaml"), {"spec": {"volumes": [CA]}})
    resp = verdict("/validate/flowers", flower, lookup(apps={("shop", "shop"): app}))
    assert not resp["allowed"]
    assert (
        "spec.volumes[0].name: volume name 'shop-ca' is already used" in resp["status"]["message"]
    )
    ok = verdict("/validate/flowers", flower)
    assert ok["allowed"]


def test_models_keep_core_types_verbatim() -> None:
    """Unknown-to-us core fields survive parsing: they reach the pod as written."""
    sidecar = {**PROXY, "startupProbe": {"tcpSocket": {"port": 5432}}, "stdin": False}
    pool = o.pool(spec={"sidecars": [sidecar]})
    assert pool.spec.sidecars == [sidecar]
    app = CeleryApp.model_validate(app_body(spec={"beat": {"initContainers": [sidecar]}}))
    assert app.spec.beat.init_containers == [sidecar]
    flower = Flower.model_validate(
        deep_merge(example("flower/examples/shop.yaml"), {"spec": {"lifecycle": {"x": 1}}})
    )
    assert flower.spec.lifecycle == {"x": 1}


def test_an_app_that_breaks_its_pools_and_flower_gets_warnings() -> None:
    """The app's owners learn at admission which pools and Flowers their new podDefaults
    break (a warning: those objects' owners must adapt)."""
    pool = deep_merge(
        example("celeryworkerpool/examples/shop-default.yaml"),
        {"spec": {"volumeMounts": [{"name": "shop-ca", "mountPath": "/etc/pool"}]}},
    )
    flower = deep_merge(example("flower/examples/shop.yaml"), {"spec": {"volumes": [CA]}})
    app = deep_merge(example("celeryapp/examples/shop.yaml"), {"spec": APP_CA})
    lk = lookup(pools=[pool], flower_list=[flower])
    assert verdict("/validate/celeryapps", app, lk).get("warnings") == [
        "spec.podDefaults: Flower shop/shop: spec.volumes[0].name: volume name 'shop-ca' is "
        "already used by the app's spec.podDefaults.volumes[0]: the pod gets both lists, so "
        "the names must differ (rename this one, or drop it and mount the app's volume); it "
        "is not updated (Ready=False InvalidSpec) until it or this app changes"
    ]
    without = deep_merge(example("celeryapp/examples/shop.yaml"), {})
    resp = verdict("/validate/celeryapps", without, lk)
    assert resp["allowed"]
    assert resp["warnings"] == [
        "spec.podDefaults: CeleryWorkerPool shop/default: spec.volumeMounts[0].name: no volume "
        "'shop-ca' in the pod; a mount may name one of: tmp; it is not updated "
        "(Ready=False InvalidSpec) until it or this app changes"
    ]


def test_a_status_only_pass_keeps_reporting_the_collision() -> None:
    """A status pass applies nothing and reads no broker, but still sees the collision:
    Ready does not flip back to Available over a pool that is not updated."""
    plan = plan_pool(pool_inputs(spec={"volumes": [CA]}, app=app_body(spec=APP_CA), apply=False))
    assert plan.blocked is not None
    assert plan.blocked.reason == INVALID_SPEC
    assert plan.children is None


def test_a_utilization_target_needs_requests_on_every_container() -> None:
    """An HPA computes utilization against the requests of every container of the pods
    (native sidecars included) and does not scale when one has none: such a spec is
    refused, naming the target and each missing request. A limit gives the request, and
    so does a LimitRange default of the namespace."""

    def problems(spec: dict[str, Any], defaulted: frozenset[str] = frozenset()) -> list[str]:
        return texts(utilization_without_requests(o.pool(spec=spec), defaulted))

    auto = {"minReplicas": 1, "maxReplicas": 3, "cpu": {"averageUtilization": 60}}
    sidecar = {**PROXY, "resources": {"requests": {"cpu": "10m"}}}
    no_requests = {"requests": None, "limits": {"memory": "1Gi"}}  # the example has some
    (msg,) = problems({"autoscaling": auto, "sidecars": [PROXY], "resources": no_requests})
    assert msg.startswith("spec.autoscaling.cpu: a cpu utilization target is a percentage")
    assert "set spec.resources.requests.cpu, spec.sidecars[0].resources.requests.cpu (proxy)" in msg
    ok = {"autoscaling": auto, "sidecars": [sidecar]}  # the example's worker asks 250m
    assert problems(ok) == []
    memory = {**auto, "memory": {"averageUtilization": 80}}
    (msg,) = problems({**ok, "autoscaling": memory})
    assert msg.startswith("spec.autoscaling.memory:")
    assert "spec.resources.requests.memory" not in msg, "the worker asks 256Mi"
    assert "spec.sidecars[0].resources.requests.memory (proxy)" in msg
    # A limit becomes the request; a LimitRange default counts for every container.
    limited = {"requests": None, "limits": {"cpu": "1", "memory": "1Gi"}}
    assert problems({"autoscaling": auto, "sidecars": [sidecar], "resources": limited}) == []
    bare = {"autoscaling": auto, "sidecars": [PROXY], "resources": no_requests}
    assert problems(bare, frozenset({"cpu"})) == []
    # Queue length alone needs no request.
    queue = {"minReplicas": 0, "maxReplicas": 3, "queueLength": {"engine": "builtin"}}
    assert problems({"autoscaling": queue}) == []
    # The object alone does not decide it (a LimitRange may give the requests): the
    # operator does not block such a pool; admission does (test_webhook_app.py).
    assert pool_problems(bare) == []
