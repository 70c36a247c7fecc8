"""`engine: keda` read by a real KEDA (issue 18): the operator (in its pod, installed by the
chart) writes the ScaledObject, TriggerAuthentication and Secret; KEDA's operator and
metrics adapter (host processes, testenv/keda.py) read them, poll the real Redis, and the
HPA controller scales the pool's Deployment through the external metrics API: a backlog
takes the pool from 0 to N, an empty queue back to 0 after the cooldown. The worker pods
are kwok's: what is proved is the scaling, not the work (test_product.py does the work).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterator

import pytest
from testenv.keda import Keda
from testenv.paths import cache_dir, versions
from testenv.realnode import GATEWAY, RealNode

from tests.support.brokers import RedisServer
from tests.support.cluster import Cluster, wait_for

pytestmark = pytest.mark.timeout(600)
GROUP = "celeryproject.org/v1alpha1"


@pytest.fixture(scope="module")
def keda(cluster: Cluster, real_node: RealNode, keda_crds: None) -> Iterator[Keda]:
    version = versions()["KEDA_VERSION"]
    bindir = cache_dir() / f"keda-{version}" / "bin"
    if not (bindir / "keda").exists():
        pytest.fail(
            f"KEDA {version} is not built: run `testenv/build.sh keda-server`", pytrace=False
        )
    assert cluster.control_plane is not None
    k = Keda(cluster.control_plane, bindir).start()
    try:
        yield k
    finally:
        k.stop()


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer(password=secrets.token_hex(8), pod_host=GATEWAY) as r:
        yield r


def replicas(cluster: Cluster, ns: str) -> int:
    return int(cluster.get("deployment", "shop-emails", ns)["spec"].get("replicas", 1))


def test_keda_scales_a_pool_from_zero_on_a_redis_backlog_and_back(
    cluster: Cluster, installed: str, keda: Keda, redis: RedisServer, namespace: str
) -> None:
    cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "shop-broker", "namespace": namespace},
                "stringData": {"url": redis.url_for(GATEWAY)},
            },
            {
                "apiVersion": GROUP,
                "kind": "CeleryApp",
                "metadata": {"name": "shop", "namespace": namespace},
                "spec": {
                    "image": "example/shop:1",
                    "app": "shop.worker:app",
                    "broker": {"url": {"secretKeyRef": {"name": "shop-broker", "key": "url"}}},
                },
            },
            {
                "apiVersion": GROUP,
                "kind": "CeleryWorkerPool",
                "metadata": {"name": "emails", "namespace": namespace},
                "spec": {
                    "appRef": {"name": "shop"},
                    "queues": ["emails"],
                    "autoscaling": {
                        "minReplicas": 0,
                        "maxReplicas": 4,
                        "queueLength": {
                            "engine": "keda",
                            "targetPerReplica": 5,
                            "pollingIntervalSeconds": 2,
                            "cooldownSeconds": 10,
                        },
                    },
                },
            },
        ]
    )
    wait_for(
        "KEDA to take the ScaledObject (Ready)",
        lambda: any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (
                cluster.get("scaledobject", "shop-emails", namespace).get("status") or {}
            ).get("conditions", [])
        ),
        timeout=120,
    )
    wait_for("an idle pool at 0", lambda: replicas(cluster, namespace) == 0, timeout=120)
    r = redis.client()
    r.lpush("emails", *["task"] * 17)
    wait_for(
        "KEDA to scale the pool up on the backlog",
        lambda: replicas(cluster, namespace) == math.ceil(17 / 5),
        timeout=120,
    )
    r.delete("emails")
    wait_for("back to 0 after the cooldown", lambda: replicas(cluster, namespace) == 0, timeout=180)
