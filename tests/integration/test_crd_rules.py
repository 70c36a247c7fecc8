"""Each single-object rule of the CRDs (schema + CEL) rejects a violating CR at
`kubectl apply`, with a message that names the field and says what is allowed."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.support.cluster import Cluster
from tests.support.objects import deep_merge, example

pytestmark = pytest.mark.cluster

APP = example("celeryapp/examples/shop.yaml")
POOL = example("celeryworkerpool/examples/shop-default.yaml")
FLOWER = example("flower/examples/shop.yaml")


def _with(base: dict[str, Any], spec: dict[str, Any], drop: tuple[str, ...] = ()) -> dict[str, Any]:
    obj = deep_merge(base, {"spec": spec})
    for key in drop:
        obj["spec"].pop(key, None)
    return obj


def _empty_broker_url() -> dict[str, Any]:
    obj = deep_merge(APP, {})
    obj["spec"]["broker"]["url"] = {}
    return obj


AUTO = {"minReplicas": 1, "maxReplicas": 3, "cpu": {"averageUtilization": 80}}

# (id, object, the message the user must see)
VIOLATIONS: list[tuple[str, dict[str, Any], str]] = [
    (
        "broker-url-both",
        _with(
            APP,
            {
                "broker": {
                    "url": {"value": "redis://r:6379/0", "secretKeyRef": {"name": "s", "key": "k"}}
                }
            },
        ),
        "exactly one of value or secretKeyRef must be set",
    ),
    (
        "broker-url-none",
        _empty_broker_url(),
        "exactly one of value or secretKeyRef must be set",
    ),
    ("app-path", _with(APP, {"app": "shop worker"}), "spec.app: Invalid value"),
    ("image-missing", _with(APP, {}, drop=("image",)), "spec.image: Required value"),
    (
        "solo-concurrency",
        _with(POOL, {"pool": "solo", "concurrency": 4}),
        "concurrency must be 1 when pool is solo",
    ),
    (
        "pool-type",
        _with(POOL, {"pool": "processes"}),
        'spec.pool: Unsupported value: "processes": supported values: "prefork", "threads", "gevent", "eventlet", "solo"',
    ),
    (
        "soft-shutdown",
        _with(POOL, {"shutdown": {"terminationGracePeriodSeconds": 30, "softShutdownTimeout": 30}}),
        "shutdown.softShutdownTimeout must be less than shutdown.terminationGracePeriodSeconds",
    ),
    ("queue-name", _with(POOL, {"queues": ["a,b"]}), "spec.queues[0]: Invalid value"),
    (
        "queue-duplicate",
        _with(POOL, {"queues": ["a", "a"]}),
        'spec.queues[1]: Duplicate value: "a"',
    ),
    ("queues-empty", _with(POOL, {"queues": []}), "spec.queues: Invalid value: 0"),
    (
        "min-gt-max",
        _with(POOL, {"autoscaling": {**AUTO, "minReplicas": 5}}),
        "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas",
    ),
    (
        "min-zero-without-queue",
        _with(POOL, {"autoscaling": {**AUTO, "minReplicas": 0}}),
        "autoscaling.minReplicas: 0 is allowed only with autoscaling.queueLength",
    ),
    (
        "autoscaling-no-signal",
        _with(POOL, {"autoscaling": {"minReplicas": 1, "maxReplicas": 3}}),
        "autoscaling needs at least one of cpu, memory or queueLength",
    ),
    (
        "builtin-with-cpu",
        _with(POOL, {"autoscaling": {**AUTO, "queueLength": {"engine": "builtin"}}}),
        "cannot be combined with queueLength.engine builtin",
    ),
    (
        "engine",
        _with(POOL, {"autoscaling": {**AUTO, "queueLength": {"engine": "celery"}}}),
        'spec.autoscaling.queueLength.engine: Unsupported value: "celery"',
    ),
    ("replicas-negative", _with(POOL, {"replicas": -1}), "spec.replicas: Invalid value: -1"),
    (
        "flower-ingress-host",
        _with(FLOWER, {"ingress": {"enabled": True}}),
        "ingress.host is required when ingress.enabled is true",
    ),
    (
        "flower-ingress-path",
        _with(FLOWER, {"ingress": {"enabled": True, "host": "f.example.com", "path": "flower"}}),
        "ingress.path must start with '/'",
    ),
    (
        "flower-prefix",
        _with(FLOWER, {"urlPrefix": "/flower"}),
        "urlPrefix must not start or end with '/'",
    ),
]


@pytest.mark.parametrize(("case", "obj", "message"), VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_violation_is_rejected(
    cluster: Cluster, crds: list[str], namespace: str, case: str, obj: dict[str, Any], message: str
) -> None:
    obj = deep_merge(obj, {"metadata": {"namespace": namespace, "name": f"bad-{case}"}})
    r = cluster.run("apply", "-f", "-", input=yaml.safe_dump(obj))
    assert r.code != 0, f"{case} was accepted"
    assert message in r.stderr, r.stderr
    kind = obj["kind"].lower()
    assert not cluster.exists(kind, obj["metadata"]["name"], namespace)


def test_examples_are_valid(cluster: Cluster, crds: list[str], namespace: str) -> None:
    """The violations above are edits of the examples, which themselves are accepted."""
    for base in (APP, POOL, FLOWER):
        obj = deep_merge(base, {"metadata": {"namespace": namespace}})
        cluster.apply(obj, "--dry-run=server")


def test_app_ref_namespace_is_immutable(cluster: Cluster, crds: list[str], namespace: str) -> None:
    pool = deep_merge(
        POOL, {"metadata": {"namespace": namespace}, "spec": {"appRef": {"namespace": namespace}}}
    )
    cluster.apply(pool)
    moved = deep_merge(pool, {"spec": {"appRef": {"namespace": "elsewhere"}}})
    r = cluster.run("apply", "-f", "-", input=yaml.safe_dump(moved))
    assert r.code != 0
    assert "appRef.namespace is immutable" in r.stderr
    removed = deep_merge(pool, {})
    del removed["spec"]["appRef"]["namespace"]
    r = cluster.run("replace", "-f", "-", input=yaml.safe_dump(removed))
    assert r.code != 0
    assert "appRef.namespace is immutable" in r.stderr


def test_schema_defaults_apply(cluster: Cluster, crds: list[str], namespace: str) -> None:
    minimal = {
        "apiVersion": "celeryproject.org/v1alpha1",
        "kind": "CeleryWorkerPool",
        "metadata": {"name": "minimal", "namespace": namespace},
        "spec": {"appRef": {"name": "shop"}},
    }
    cluster.apply(minimal)
    spec = cluster.get("celeryworkerpool", "minimal", namespace)["spec"]
    assert spec["queues"] == ["celery"]
    assert spec["replicas"] == 1
    assert spec["concurrency"] == 2
    assert spec["pool"] == "prefork"
    assert spec["shutdown"] == {"terminationGracePeriodSeconds": 300, "softShutdownTimeout": 60}
    assert spec["disruptionBudget"] == {"maxUnavailable": 1}
    assert spec["updateStrategy"] == {"maxSurge": "25%", "maxUnavailable": 0}
    assert spec["probes"]["liveness"]["periodSeconds"] == 60


def test_disruption_budget_null_is_kept(cluster: Cluster, crds: list[str], namespace: str) -> None:
    """`disruptionBudget: null` means "no PDB", so null must survive defaulting."""
    pool = deep_merge(POOL, {"metadata": {"namespace": namespace, "name": "nopdb"}})
    pool["spec"]["disruptionBudget"] = None
    cluster.kubectl("create", "-f", "-", input=yaml.safe_dump(pool))
    spec = cluster.get("celeryworkerpool", "nopdb", namespace)["spec"]
    assert "disruptionBudget" in spec
    assert spec["disruptionBudget"] is None
