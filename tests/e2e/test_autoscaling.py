"""Autoscaling on the real control plane: the built-in scaler against real Redis and
RabbitMQ servers on 127.0.0.1, the HorizontalPodAutoscaler, and KEDA objects checked by
KEDA's real CRDs, with switching between engines."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.test_controllers import app, pool, secret
from tests.e2e.test_events import events_of, wait_event
from tests.support.brokers import RabbitMQServer, RedisServer
from tests.support.cluster import Cluster, wait_for
from tests.support.operator import OperatorProcess

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.broker]

REDIS_PASSWORD = "r3dis-Pa55-zz9"
RABBIT_PASSWORD = "rabb1t-Pa55-qq7"
PRIORITY_6 = "\x06\x166"


@pytest.fixture(scope="module")
def redis_broker() -> Iterator[RedisServer]:
    with RedisServer(password=REDIS_PASSWORD) as r:
        yield r


@pytest.fixture(scope="module")
def rabbit_broker() -> Iterator[RabbitMQServer]:
    with RabbitMQServer(password=RABBIT_PASSWORD) as r:
        yield r


def builtin(ns: str, target: int = 5, **ql: Any) -> dict[str, Any]:
    minimum = ql.pop("minReplicas", 1)
    return pool(
        ns,
        "emails",
        queues=["emails"],
        autoscaling={
            "minReplicas": minimum,
            "maxReplicas": 6,
            "queueLength": {
                "engine": "builtin",
                "targetPerReplica": target,
                "pollingIntervalSeconds": 1,
                "cooldownSeconds": 4,
                **ql,
            },
        },
    )


def patch_pool(cluster: Cluster, ns: str, patch: str, patch_type: str = "merge") -> None:
    """kubectl patch of the pool `emails` (a JSON merge patch, or a JSON patch)."""
    cluster.kubectl("patch", "cwp", "emails", "-n", ns, f"--type={patch_type}", "-p", patch)


def replicas(cluster: Cluster, ns: str) -> int:
    return int(cluster.get("deployment", "shop-emails", ns)["spec"].get("replicas", 1))


def wait_replicas(cluster: Cluster, ns: str, n: int, timeout: float = 30) -> float:
    """Waits for the Deployment's replicas; returns how long it took (reported, not asserted)."""
    started = time.monotonic()
    wait_for(f"{n} worker replicas", lambda: replicas(cluster, ns) == n, timeout=timeout)
    return time.monotonic() - started


def autoscaler(cluster: Cluster, ns: str) -> dict[str, Any]:
    return dict(cluster.get("cwp", "emails", ns)["status"].get("autoscaler") or {})


def condition(cluster: Cluster, ns: str, type_: str) -> dict[str, Any]:
    for c in cluster.get("cwp", "emails", ns)["status"].get("conditions", []):
        if c["type"] == type_:
            return dict(c)
    return {}


def polls(op: OperatorProcess) -> float:
    m = re.search(
        r'^celery_operator_scaler_polls_total\{result="ok"\} ([0-9.e+]+)$', op.metrics(), re.M
    )
    return float(m.group(1)) if m else 0.0


def test_builtin_scales_with_a_redis_backlog(
    cluster: Cluster, operator: OperatorProcess, namespace: str, redis_broker: RedisServer
) -> None:
    r = redis_broker.client()
    r.delete("emails", "emails" + PRIORITY_6)
    cluster.apply([secret(namespace, url=redis_broker.url), app(namespace), builtin(namespace)])
    cluster.wait("--for=condition=Ready", "cwp/emails", "-n", namespace)
    assert replicas(cluster, namespace) == 1

    r.lpush("emails", *["task"] * 23)
    took = wait_replicas(cluster, namespace, math.ceil(23 / 5))
    print(f"\nbuiltin/redis: 23 waiting -> 5 replicas in {took:.2f}s (polling interval 1s)")
    # The decision is an Event on the pool: from, to, and the scaler's why.
    up = re.compile(
        r"Scaled up Deployment shop-emails from \d+ to 5 replicas \(the built-in scaler: "
        r"23 tasks waiting, (\d+|\?) running, 5 per replica\)"
    )
    wait_for(
        "a Scaled Event with the scaler's reason",
        lambda: any(
            e["reason"] == "Scaled" and up.fullmatch(e["message"])
            for e in events_of(cluster, namespace, "emails", "CeleryWorkerPool")
        ),
    )
    # Celery's priority sub-lists count too.
    r.lpush("emails" + PRIORITY_6, *["task"] * 4)
    wait_replicas(cluster, namespace, 6)
    wait_for(
        "status.autoscaler to show the backlog",
        lambda: autoscaler(cluster, namespace).get("desiredReplicas") == 6,
    )
    st = autoscaler(cluster, namespace)
    assert st["engine"] == "builtin"
    assert st["queueLength"] == 27
    assert st["lastScaleTime"]
    assert condition(cluster, namespace, "ScalingActive")["status"] == "True"

    # Drained: back to min, but only after the cooldown (4s) of the stabilization window.
    r.delete("emails", "emails" + PRIORITY_6)
    drained = time.monotonic()
    wait_replicas(cluster, namespace, 1)
    assert time.monotonic() - drained >= 3.0, "scaled down before the cooldown"


def test_unreachable_broker_leaves_replicas_and_says_so(
    cluster: Cluster, operator: OperatorProcess, namespace: str, redis_broker: RedisServer
) -> None:
    r = redis_broker.client()
    r.delete("emails")
    cluster.apply([secret(namespace, url=redis_broker.url), app(namespace), builtin(namespace)])
    r.lpush("emails", *["task"] * 14)
    wait_replicas(cluster, namespace, 3)
    redis_broker.stop()
    try:
        wait_for(
            "ScalingActive=False BrokerUnreachable",
            lambda: (
                condition(cluster, namespace, "ScalingActive").get("reason") == "BrokerUnreachable"
            ),
        )
        msg = condition(cluster, namespace, "ScalingActive")["message"]
        assert "replicas stay as they are" in msg
        assert REDIS_PASSWORD not in msg
        warning = wait_for(
            "a BrokerUnreachable Event about the queue lengths",
            lambda: next(
                (
                    e
                    for e in events_of(cluster, namespace, "emails", "CeleryWorkerPool")
                    if e["reason"] == "BrokerUnreachable"
                    and e["message"].startswith("Cannot read queue lengths")
                ),
                None,
            ),
        )
        assert warning["type"] == "Warning"
        assert REDIS_PASSWORD not in json.dumps(warning)
        assert replicas(cluster, namespace) == 3
        assert operator.healthy()
    finally:
        redis_broker.start()
    wait_for(
        "ScalingActive=True again",
        lambda: condition(cluster, namespace, "ScalingActive").get("status") == "True",
    )
    wait_event(cluster, namespace, "emails", "CeleryWorkerPool", "BrokerReachable")
    r.delete("emails")


def test_scale_to_zero_and_back(
    cluster: Cluster, operator: OperatorProcess, namespace: str, redis_broker: RedisServer
) -> None:
    r = redis_broker.client()
    r.delete("emails")
    cluster.apply(
        [
            secret(namespace, url=redis_broker.url),
            app(namespace),
            builtin(namespace, minReplicas=0, activation=2),
        ]
    )
    wait_replicas(cluster, namespace, 0)
    cluster.wait("--for=condition=Ready", "cwp/emails", "-n", namespace)
    assert cluster.get("cwp", "emails", namespace)["status"]["readySummary"] == "0/0"

    r.lpush("emails", "a", "b")  # not above activation: stays at zero
    seen = polls(operator)
    wait_for("two more polls", lambda: polls(operator) >= seen + 2)
    assert replicas(cluster, namespace) == 0
    r.lpush("emails", "c")  # 3 > activation: wakes up
    wait_replicas(cluster, namespace, 1)
    r.delete("emails")


def test_builtin_scales_with_a_rabbitmq_backlog(
    cluster: Cluster, operator: OperatorProcess, namespace: str, rabbit_broker: RabbitMQServer
) -> None:
    from kombu import Connection, Exchange, Producer, Queue

    cluster.apply(
        [secret(namespace, url=rabbit_broker.url), app(namespace), builtin(namespace, target=4)]
    )
    cluster.wait("--for=condition=Ready", "cwp/emails", "-n", namespace)
    queue = Queue("emails", Exchange("emails"), routing_key="emails", durable=True)
    with Connection(rabbit_broker.url) as conn:
        producer = Producer(conn.channel())
        for i in range(11):
            producer.publish(
                {"n": i},
                exchange=queue.exchange,
                routing_key="emails",
                declare=[queue],
                delivery_mode=2,
                retry=True,
            )
    took = wait_replicas(cluster, namespace, math.ceil(11 / 4))
    print(f"\nbuiltin/rabbitmq: 11 waiting -> 3 replicas in {took:.2f}s")
    with Connection(rabbit_broker.url) as conn:
        queue.bind(conn.channel()).purge()
    wait_replicas(cluster, namespace, 1)


def test_hpa_follows_the_spec(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    cpu = {"maxReplicas": 4, "cpu": {"averageUtilization": 80}}
    cluster.apply(
        [secret(namespace), app(namespace), pool(namespace, "emails", replicas=2, autoscaling=cpu)]
    )
    wait_for("the HPA", lambda: cluster.exists("hpa", "shop-emails", namespace))
    hpa = cluster.get("hpa", "shop-emails", namespace)["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 4)
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 80
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300

    patch_pool(
        cluster,
        namespace,
        '{"spec":{"autoscaling":{"cpu":{"averageUtilization":60},"maxReplicas":7}}}',
        "merge",
    )
    wait_for(
        "the HPA to follow",
        lambda: (
            cluster.get("hpa", "shop-emails", namespace)["spec"]["maxReplicas"] == 7
            and cluster.get("hpa", "shop-emails", namespace)["spec"]["metrics"][0]["resource"][
                "target"
            ]["averageUtilization"]
            == 60
        ),
    )
    patch_pool(cluster, namespace, '[{"op":"remove","path":"/spec/autoscaling"}]', "json")
    cluster.wait("--for=delete", "hpa/shop-emails", "-n", namespace)
    wait_replicas(cluster, namespace, 2)  # fixed replicas again


def owned_kinds(cluster: Cluster, ns: str) -> set[str]:
    found = set()
    for kind in ("hpa", "scaledobjects.keda.sh", "triggerauthentications.keda.sh", "secret"):
        out = json.loads(
            cluster.kubectl(
                "get", kind, "-n", ns, "-l", "celeryproject.org/pool=emails", "-o", "json"
            )
        )
        found |= {f"{i['kind']}/{i['metadata']['name']}" for i in out["items"]}
    return found


def test_switching_engines_leaves_nothing_stale(
    cluster: Cluster,
    operator: OperatorProcess,
    keda_crds: None,
    namespace: str,
    redis_broker: RedisServer,
) -> None:
    cluster.apply([secret(namespace, url=redis_broker.url), app(namespace), builtin(namespace)])
    cluster.wait("--for=condition=Ready", "cwp/emails", "-n", namespace)
    assert owned_kinds(cluster, namespace) == set()

    patch_pool(
        cluster, namespace, '{"spec":{"autoscaling":{"queueLength":{"engine":"keda"}}}}', "merge"
    )
    keda = {
        "ScaledObject/shop-emails",
        "TriggerAuthentication/shop-emails",
        "Secret/shop-emails-keda",
    }
    wait_for("the KEDA objects", lambda: owned_kinds(cluster, namespace) == keda)
    so = cluster.get("scaledobjects.keda.sh", "shop-emails", namespace)["spec"]
    assert so["scaleTargetRef"]["name"] == "shop-emails"
    assert len(so["triggers"]) == 4  # the queue's list and its three priority lists
    assert so["advanced"]["scalingModifiers"]["formula"] == "q0p0 + q0p3 + q0p6 + q0p9"
    # KEDA owns replicas now: the operator's field manager does not.
    shown = cluster.kubectl(
        "get", "deployment", "shop-emails", "-n", namespace, "--show-managed-fields", "-o", "json"
    )
    managers = json.loads(shown)["metadata"]["managedFields"]
    ours = [m for m in managers if m["manager"] == "celery-operator"]
    assert all(
        "f:replicas" not in json.dumps(m.get("fieldsV1", {}).get("f:spec", {})) for m in ours
    )

    patch_pool(
        cluster,
        namespace,
        '[{"op":"replace","path":"/spec/autoscaling","value":{"maxReplicas":3,"cpu":{"averageUtilization":70}}}]',
        "json",
    )
    wait_for(
        "only the HPA",
        lambda: owned_kinds(cluster, namespace) == {"HorizontalPodAutoscaler/shop-emails"},
    )
    patch_pool(cluster, namespace, '[{"op":"remove","path":"/spec/autoscaling"}]', "json")
    wait_for("no autoscaler at all", lambda: owned_kinds(cluster, namespace) == set())


def test_credentials_never_appear_in_logs_status_or_events(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    """Runs after the tests above: the broker passwords went through the operator."""
    log = operator.log.read_text(errors="replace")
    events = cluster.kubectl("get", "events", "-A", "-o", "json")
    statuses = cluster.kubectl("get", "celery", "-A", "-o", "json")
    for secret_text in (REDIS_PASSWORD, RABBIT_PASSWORD):
        assert secret_text not in log
        assert secret_text not in events
        assert secret_text not in statuses


def test_switching_to_an_autoscaler_keeps_the_replicas(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    """When the operator stops writing spec.replicas (an HPA takes over), server-side apply
    would drop the field and the Deployment would fall to 1; the hand-off keeps it."""
    cluster.apply([secret(namespace), app(namespace), pool(namespace, "emails", replicas=3)])
    wait_replicas(cluster, namespace, 3)
    before = cluster.get("deployment", "shop-emails", namespace)["metadata"]["annotations"][
        "celeryproject.org/applied-hash"
    ]
    patch_pool(
        cluster,
        namespace,
        '{"spec":{"autoscaling":{"maxReplicas":5,"cpu":{"averageUtilization":80}}}}',
        "merge",
    )
    wait_for(
        "the operator to apply the Deployment without replicas",
        lambda: (
            cluster.get("deployment", "shop-emails", namespace)["metadata"]["annotations"][
                "celeryproject.org/applied-hash"
            ]
            != before
        ),
    )
    assert cluster.exists("hpa", "shop-emails", namespace)
    assert replicas(cluster, namespace) == 3
