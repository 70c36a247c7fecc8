"""`engine: keda` read by a real KEDA (issue 18): the operator (in its pod, installed by the
chart) writes the ScaledObject, TriggerAuthentication and Secret; KEDA's operator and
metrics adapter (host processes, testenv/keda.py) read them, poll the real Redis or
RabbitMQ, and the HPA controller scales the pool's Deployment through the external metrics
API. The worker pods are kwok's (they never consume, so a backlog stays put): these tests
are about scaling; KEDA scaling real workers on CPU is in test_autoscalers.py.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from kombu import Connection
from testenv.keda import Keda
from testenv.realnode import GATEWAY

from tests.support.brokers import RabbitMQServer, RedisServer
from tests.support.cluster import Cluster, wait_for

pytestmark = pytest.mark.timeout(900)
GROUP = "celeryproject.org/v1alpha1"
DEPLOYMENT = "shop-emails"  # <app>-<pool>
KEDA_SECRET = "shop-emails-keda"


@pytest.fixture(scope="module")
def redis(keda: Keda) -> Iterator[RedisServer]:
    with RedisServer(password=secrets.token_hex(8), pod_host=GATEWAY) as r:
        yield r


@pytest.fixture(scope="module")
def rabbitmq(keda: Keda) -> Iterator[RabbitMQServer]:
    with RabbitMQServer(pod_host=GATEWAY) as r:
        yield r


def app_and_pool(ns: str, broker_url: str, pool: dict[str, Any]) -> list[dict[str, Any]]:
    """The app `shop` (kwok pods: its image is never pulled) and its pool `emails`."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "shop-broker", "namespace": ns},
            "stringData": {"url": broker_url},
        },
        {
            "apiVersion": GROUP,
            "kind": "CeleryApp",
            "metadata": {"name": "shop", "namespace": ns},
            "spec": {
                "image": "example/shop:1",
                "app": "shop.worker:app",
                "broker": {"url": {"secretKeyRef": {"name": "shop-broker", "key": "url"}}},
            },
        },
        {
            "apiVersion": GROUP,
            "kind": "CeleryWorkerPool",
            "metadata": {"name": "emails", "namespace": ns},
            "spec": {"appRef": {"name": "shop"}, "queues": ["emails"], **pool},
        },
    ]


def replicas(cluster: Cluster, ns: str) -> int:
    return int(cluster.get("deployment", DEPLOYMENT, ns)["spec"].get("replicas", 1))


def keda_ready(cluster: Cluster, ns: str, name: str = DEPLOYMENT) -> bool:
    conditions = (cluster.get("scaledobject", name, ns).get("status") or {}).get("conditions")
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions or [])


def scaling_active(cluster: Cluster, ns: str, pool: str = "emails") -> tuple[str, str, str] | None:
    """The pool's ScalingActive condition: (status, reason, message)."""
    st = cluster.get("cwp", pool, ns).get("status") or {}
    c = next((c for c in st.get("conditions") or [] if c["type"] == "ScalingActive"), None)
    return None if c is None else (c["status"], c["reason"], c["message"])


def keda_says(keda: Keda, ns: str, name: str = DEPLOYMENT) -> dict[str, list[float]]:
    """KEDA's own figures for the ScaledObject, from its operator's /metrics: the values its
    scalers read (keda_scaler_metrics_value) and whether they count as active."""
    with urllib.request.urlopen(keda.metrics_url, timeout=5) as r:
        text = r.read().decode()
    out: dict[str, list[float]] = {"metrics_value": [], "active": []}
    for family in out:
        pattern = rf"^keda_scaler_{family}\{{([^}}]*)\}} (\S+)$"
        for m in re.finditer(pattern, text, re.M):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            if labels.get("namespace") == ns and labels.get("scaledObject") == name:
                out[family].append(float(m.group(2)))
    return out


def send(url: str, queue: str, priorities: list[int]) -> None:
    """Real Celery messages (never consumed here): one per priority given."""
    client = Celery("sender", broker=url)
    try:
        for p in priorities:
            client.send_task("shop.add", args=(1, 2), queue=queue, priority=p)
    finally:
        client.close()


def purge(url: str, queue: str) -> None:
    with Connection(url) as conn:
        conn.default_channel.queue_purge(queue)


# ---- a backlog: 0 -> N -> 0 ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("broker", "cpu"),
    [("redis", False), ("rabbitmq", False), ("redis", True)],
    ids=["redis", "rabbitmq", "redis-and-cpu"],
)
def test_keda_scales_a_pool_from_zero_on_a_backlog_and_back(
    cluster: Cluster,
    installed: str,
    keda: Keda,
    request: pytest.FixtureRequest,
    namespace: str,
    broker: str,
    cpu: bool,
) -> None:
    """17 tasks, 5 per replica: 4 workers (of at most 6), then 0 once the queue empties.

    On Redis the tasks go to three of the queue's priority lists (7 at priority 0, 5 at 4,
    5 at 9): KEDA sees 4 only if the lists are summed, as docs/autoscaling.md says. With a
    `cpu` trigger too, KEDA still takes an idle pool to zero (its CPU scaler counts as
    inactive once the queue triggers are): the kwok pods have no CPU figures, which is what
    an idle pool's HPA sees between samples too."""
    server = request.getfixturevalue(broker)
    pool: dict[str, Any] = {
        "autoscaling": {
            "minReplicas": 0,
            "maxReplicas": 6,
            "queueLength": {
                "engine": "keda",
                "targetPerReplica": 5,
                "activation": 5,
                "pollingIntervalSeconds": 2,
                "cooldownSeconds": 10,
            },
        }
    }
    if cpu:
        pool["autoscaling"]["cpu"] = {"averageUtilization": 50}
        pool["resources"] = {"requests": {"cpu": "50m", "memory": "64Mi"}}
    cluster.apply(app_and_pool(namespace, server.url_for(GATEWAY), pool))
    if broker == "rabbitmq":
        # No worker has declared the queue yet (kwok's never start Celery): KEDA's RabbitMQ
        # scaler fails on a missing queue, KEDA holds the replicas, and the pool says why.
        failing = wait_for(
            "the pool to say KEDA's trigger fails",
            lambda: (c := scaling_active(cluster, namespace)) and "TriggerError" in c[2] and c,
            timeout=120,
        )
        assert failing[:2] == ("False", "AutoscalerFailing"), failing
        assert "kubectl describe scaledobject shop-emails" in failing[2], failing
        send(server.url, "emails", [0])  # a producer (or the first worker) declares it
        purge(server.url, "emails")
    wait_for("KEDA to take the ScaledObject (Ready)", lambda: keda_ready(cluster, namespace), 120)
    wait_for(
        "the pool to say KEDA scales it",
        lambda: (scaling_active(cluster, namespace) or ("",))[0] == "True",
        timeout=60,
    )
    keda_hpa = cluster.get("hpa", f"keda-hpa-{DEPLOYMENT}", namespace)
    kinds = sorted(m["type"] for m in keda_hpa["spec"]["metrics"])
    assert kinds == (["External", "Resource"] if cpu else ["External"]), keda_hpa["spec"]
    wait_for("an idle pool at 0", lambda: replicas(cluster, namespace) == 0, timeout=120)

    # Activation 5: 4 waiting tasks do not wake the pool. KEDA records the value it read and
    # whether that makes the ScaledObject active in the same poll: once it has read 4, it
    # said inactive, and the pool is still at 0.
    send(server.url, "emails", [0] * 4)
    seen = wait_for(
        "KEDA to read 4 waiting tasks",
        lambda: (v := keda_says(keda, namespace)) and max(v["metrics_value"]) == 4 and v,
        timeout=60,
    )
    assert set(seen["active"]) == {0.0}, seen
    assert replicas(cluster, namespace) == 0
    # 13 more: 17 in all.
    priorities = [0] * 3 + [4] * 5 + [9] * 5 if broker == "redis" else [0] * 13
    send(server.url, "emails", priorities)
    if broker == "redis":
        r = server.client()
        lengths = [r.llen(k) for k in ("emails", "emails\x06\x163", "emails\x06\x169")]
        assert lengths == [7, 5, 5], lengths  # what the test stands on: kombu's lists
    want = math.ceil(17 / 5)
    wait_for(
        f"KEDA to scale the pool to {want} on the backlog",
        lambda: replicas(cluster, namespace) == want,
        timeout=120,
    )
    purge(server.url, "emails")  # kombu purges every priority list of the queue
    wait_for("back to 0 after the cooldown", lambda: replicas(cluster, namespace) == 0, timeout=180)


# ---- switching engines on a live pool -------------------------------------------------------
class ReplicaWatch:
    """Every spec.replicas the Deployment has had while the watch ran (kubectl get -w)."""

    def __init__(self, cluster: Cluster, ns: str) -> None:
        self.seen: list[str] = []
        kubectl = [str(cluster.kubectl_bin), "--kubeconfig", str(cluster.kubeconfig)]
        watch = ["get", "deployment", DEPLOYMENT, "-n", ns, "--watch"]
        jsonpath = ["-o", 'jsonpath={.spec.replicas}{"\\n"}']
        self._proc = subprocess.Popen(
            [*kubectl, *watch, *jsonpath], stdout=subprocess.PIPE, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.seen.append(line.strip())

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)
        self._reader.join(timeout=10)


def engine_objects(cluster: Cluster, ns: str) -> dict[str, list[str]]:
    """The autoscaling objects in the namespace: HPAs, KEDA's objects, the KEDA Secret."""
    out = cluster.kubectl(
        "get", "hpa,scaledobjects,triggerauthentications,secrets", "-n", ns, "-o", "json"
    )
    found: dict[str, list[str]] = {}
    for o in json.loads(out)["items"]:
        name = o["metadata"]["name"]
        if o["kind"] != "Secret" or name == KEDA_SECRET:
            found.setdefault(o["kind"], []).append(name)
    return found


def test_switching_engines_on_a_live_pool_keeps_its_replicas(
    cluster: Cluster, installed: str, keda: Keda, redis: RedisServer, namespace: str
) -> None:
    """15 tasks wait, 5 per replica: every engine wants 3, as the fixed replicas do (an HPA
    on CPU has no figures for kwok pods and keeps what it finds). The pool goes none ->
    builtin -> keda -> hpa -> none -> keda -> builtin -> hpa -> builtin: the Deployment's
    replicas stay 3 throughout, and each engine's objects go with it."""
    queue = {"targetPerReplica": 5, "pollingIntervalSeconds": 2, "cooldownSeconds": 30}
    bounds = {"minReplicas": 1, "maxReplicas": 6}
    engines: dict[str, dict[str, Any] | None] = {
        "none": None,
        # A merge patch: what an engine does not use is set to null, or it would stay.
        "builtin": {**bounds, "queueLength": {**queue, "engine": "builtin"}, "cpu": None},
        "keda": {**bounds, "queueLength": {**queue, "engine": "keda"}, "cpu": None},
        "hpa": {**bounds, "cpu": {"averageUtilization": 50}, "queueLength": None},
    }
    expected: dict[str, dict[str, list[str]]] = {
        "none": {},
        "builtin": {},
        "keda": {
            "HorizontalPodAutoscaler": [f"keda-hpa-{DEPLOYMENT}"],
            "ScaledObject": [DEPLOYMENT],
            "TriggerAuthentication": [DEPLOYMENT],
            "Secret": [KEDA_SECRET],
        },
        "hpa": {"HorizontalPodAutoscaler": [DEPLOYMENT]},
    }
    base = {"replicas": 3, "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}}
    cluster.apply(app_and_pool(namespace, redis.url_for(GATEWAY), base))
    wait_for("3 replicas", lambda: replicas(cluster, namespace) == 3, timeout=60)
    send(redis.url, "emails", [0] * 15)

    def settled(engine: str) -> bool:
        """Only this engine's objects, and the engine has decided (3) at least once."""
        if engine_objects(cluster, namespace) != expected[engine]:
            return False
        status = cluster.get("cwp", "emails", namespace).get("status") or {}
        scaler = status.get("autoscaler") or {}
        if engine == "none":
            return not scaler
        if engine == "builtin":
            return scaler.get("engine") == "builtin" and scaler.get("queueLength") == 15
        hpa = cluster.get("hpa", expected[engine]["HorizontalPodAutoscaler"][0], namespace)
        hpa_status = hpa.get("status") or {}
        if engine == "keda":
            return keda_ready(cluster, namespace) and bool(hpa_status.get("currentMetrics"))
        return bool(hpa_status.get("conditions"))  # the HPA controller has read it

    watch = ReplicaWatch(cluster, namespace)
    try:
        for engine in ("builtin", "keda", "hpa", "none", "keda", "builtin", "hpa", "builtin"):
            cluster.kubectl(
                "patch", "cwp", "emails", "-n", namespace, "--type=merge",
                "-p", json.dumps({"spec": {"autoscaling": engines[engine]}}),
            )  # fmt: skip
            try:
                wait_for(f"{engine} in charge, alone", lambda e=engine: settled(e), timeout=120)
            except AssertionError as e:
                hpas = cluster.kubectl("get", "hpa", "-n", namespace, "-o", "yaml")
                raise AssertionError(
                    f"{e}\nfound: {engine_objects(cluster, namespace)}\n"
                    f"pool: {json.dumps(cluster.get('cwp', 'emails', namespace).get('status'))}\n"
                    f"{hpas}"
                ) from None
    finally:
        watch.close()
    assert replicas(cluster, namespace) == 3
    assert set(watch.seen) == {"3"}, f"the replicas moved: {watch.seen}"
