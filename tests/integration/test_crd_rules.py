"""Each single-object rule of the CRDs (schema + CEL) rejects a violating CR at
`kubectl apply`, with a message that names the field and says what is allowed."""

from __future__ import annotations

import json
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
CONFIG = {"name": "config", "configMap": {"name": "worker-config"}}
SIDECAR = {"name": "proxy", "image": "registry.example.com/proxy:1.0"}

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
    # What users add to pods (docs/pods.md).
    (
        "pool-volume-tmp",
        _with(POOL, {"volumes": [{"name": "tmp", "emptyDir": {}}]}),
        "volume name 'tmp' is the operator's own",
    ),
    (
        "pool-volume-duplicate",
        _with(POOL, {"volumes": [CONFIG, {"name": "config", "emptyDir": {}}]}),
        "spec.volumes[1]: Duplicate value",
    ),
    (
        "pool-volume-invalid",
        _with(POOL, {"volumes": [{"name": "config", "configMap": {"name": 5}}]}),
        "spec.volumes[0].configMap.name: Invalid value",
    ),
    (
        "pool-mount-tmp",
        _with(
            POOL, {"volumes": [CONFIG], "volumeMounts": [{"name": "config", "mountPath": "/tmp"}]}
        ),
        "mountPath /tmp is the operator's own",
    ),
    (
        "pool-mount-path-duplicate",
        _with(
            POOL,
            {
                "volumes": [CONFIG],
                "volumeMounts": [
                    {"name": "config", "mountPath": "/etc/a"},
                    {"name": "config", "mountPath": "/etc/a"},
                ],
            },
        ),
        "spec.volumeMounts[1]: Duplicate value",
    ),
    (
        "pool-sidecar-named-worker",
        _with(POOL, {"sidecars": [{**SIDECAR, "name": "worker"}]}),
        "container name 'worker' is the operator's own container",
    ),
    (
        "pool-init-container-named-worker",
        _with(POOL, {"initContainers": [{**SIDECAR, "name": "worker"}]}),
        "container name 'worker' is the operator's own container",
    ),
    (
        "pool-init-container-and-sidecar-same-name",
        _with(POOL, {"initContainers": [SIDECAR], "sidecars": [SIDECAR]}),
        "initContainers and sidecars must not share a name",
    ),
    (
        "pool-volume-name-too-long",
        _with(POOL, {"volumes": [{"name": "v" * 64, "emptyDir": {}}]}),
        "spec.volumes[0].name: Too long",
    ),
    (
        "pool-sidecar-restart-policy",
        _with(POOL, {"sidecars": [{**SIDECAR, "restartPolicy": "Never"}]}),
        "sidecars run as Kubernetes native sidecars: restartPolicy must be unset or Always",
    ),
    (
        "pool-init-container-with-lifecycle",
        _with(
            POOL,
            {"initContainers": [{**SIDECAR, "lifecycle": {"preStop": {"sleep": {"seconds": 1}}}}]},
        ),
        "lifecycle and probes are allowed only on an init container with restartPolicy: Always",
    ),
    (
        "pool-sidecar-without-name",
        _with(POOL, {"sidecars": [{"image": "x:1"}]}),
        "spec.sidecars[0].name: Required value",
    ),
    (
        "pool-readiness-solo",
        _with(POOL, {"pool": "solo", "concurrency": 1, "probes": {"readiness": {"enabled": True}}}),
        "probes.readiness cannot be enabled with pool solo",
    ),
    (
        "app-default-mount-unknown",
        _with(APP, {"podDefaults": {"volumeMounts": [{"name": "ca", "mountPath": "/etc/ca"}]}}),
        "podDefaults.volumeMounts may only name 'tmp' or a volume of podDefaults.volumes",
    ),
    (
        "app-beat-mount-unknown",
        _with(APP, {"beat": {"volumeMounts": [{"name": "ca", "mountPath": "/etc/ca"}]}}),
        "beat.volumeMounts may only name 'tmp', a volume of podDefaults.volumes or one of beat.volumes",
    ),
    (
        "app-beat-volume-of-the-defaults",
        _with(APP, {"podDefaults": {"volumes": [CONFIG]}, "beat": {"volumes": [CONFIG]}}),
        "beat.volumes must not repeat a name of podDefaults.volumes",
    ),
    (
        "flower-sidecar-named-flower",
        _with(FLOWER, {"sidecars": [{**SIDECAR, "name": "flower"}]}),
        "container name 'flower' is the operator's own container",
    ),
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


def test_every_addition_is_accepted_as_written(
    cluster: Cluster, crds: list[str], namespace: str
) -> None:
    """Volumes, mounts, init containers, sidecars (core/v1, with their full schemas) and the
    readiness probe pass the CRD's schema and rules, and are stored as written."""
    from tests.unit.test_render_golden import CA_BUNDLE, POD_ADDITIONS, SQL_PROXY

    pool = deep_merge(
        POOL,
        {
            "metadata": {"namespace": namespace, "name": "additions"},
            "spec": {**POD_ADDITIONS, "probes": {"readiness": {"enabled": True}}},
        },
    )
    app = deep_merge(
        APP,
        {
            "metadata": {"namespace": namespace},
            "spec": {
                **CA_BUNDLE,
                "beat": {
                    "sidecars": [SQL_PROXY],
                    "volumeMounts": [{"name": "shop-ca", "mountPath": "/c"}],
                },
            },
        },
    )
    flower = deep_merge(
        FLOWER,
        {
            "metadata": {"namespace": namespace},
            "spec": {
                "env": [{"name": "FLOWER_OAUTH2_KEY", "value": "k"}],
                "envFrom": [{"secretRef": {"name": "flower-oauth"}}],
                "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
                "sidecars": [SQL_PROXY],
            },
        },
    )
    cluster.apply([pool, app, flower])
    stored = cluster.get("celeryworkerpool", "additions", namespace)["spec"]
    for key in ("volumes", "volumeMounts", "initContainers", "sidecars"):
        assert stored[key] == json.loads(json.dumps(POD_ADDITIONS[key])), key
    assert stored["probes"]["readiness"]["enabled"] is True
    assert cluster.get("flower", "shop", namespace)["spec"]["lifecycle"] == {
        "preStop": {"sleep": {"seconds": 5}}
    }
    explained = cluster.kubectl("explain", "celeryworkerpool.spec.sidecars")
    assert "native sidecars" in explained
    assert "securityContext" in explained  # the core/v1 Container's fields


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
    assert spec["probes"]["readiness"] == {
        "enabled": False,
        "initialDelaySeconds": 5,
        "periodSeconds": 30,
        "timeoutSeconds": 10,
        "failureThreshold": 3,
    }


def test_disruption_budget_null_is_kept(cluster: Cluster, crds: list[str], namespace: str) -> None:
    """`disruptionBudget: null` means "no PDB", so null must survive defaulting."""
    pool = deep_merge(POOL, {"metadata": {"namespace": namespace, "name": "nopdb"}})
    pool["spec"]["disruptionBudget"] = None
    cluster.kubectl("create", "-f", "-", input=yaml.safe_dump(pool))
    spec = cluster.get("celeryworkerpool", "nopdb", namespace)["spec"]
    assert "disruptionBudget" in spec
    assert spec["disruptionBudget"] is None
