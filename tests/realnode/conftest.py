"""Fixtures of the real-node suite: a namespace that enforces Pod Security "restricted"
on the real node, a Redis that pods on the node can reach, and the product (the chart and
the shop app, once per session: tests/support/shop.py)."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator

import pytest
from celery import Celery
from testenv.keda import Keda
from testenv.metricsserver import MetricsServer
from testenv.paths import cache_dir, versions
from testenv.realnode import GATEWAY, RealNode

from tests.support.brokers import RedisServer
from tests.support.cluster import Cluster
from tests.support.realnode import PLACEMENT, image
from tests.support.shop import (
    OPERATOR_NS,
    RELEASE,
    RESTRICTED,
    Shop,
    app_objects,
    helm,
)


@pytest.fixture
def restricted_ns(cluster: Cluster, real_node: RealNode) -> Iterator[str]:
    """A fresh namespace enforcing Pod Security "restricted", on a running real node."""
    name = cluster.create_namespace(
        "rn",
        labels={
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        },
    )
    yield name
    cluster.run("delete", "namespace", name, "--wait=false")


@pytest.fixture(scope="module")
def pod_redis(real_node: RealNode) -> Iterator[RedisServer]:
    """A real Redis on 127.0.0.1 (for the test) and on the bridge gateway (for pods)."""
    with RedisServer(pod_host=GATEWAY) as server:
        yield server


@pytest.fixture(scope="module")
def metrics_server(cluster: Cluster, real_node: RealNode) -> Iterator[MetricsServer]:
    """metrics-server reading the real node's kubelet (host process, testenv/metricsserver.py)."""
    version = versions()["METRICS_SERVER_VERSION"]
    binary = cache_dir() / f"metrics-server-{version}" / "bin" / "metrics-server"
    if not binary.exists():
        pytest.fail(
            f"metrics-server {version} is not built: run `testenv/build.sh metrics-server` "
            "(or `make testenv`)",
            pytrace=False,
        )
    assert cluster.control_plane is not None
    ms = MetricsServer(cluster.control_plane, binary).start()
    try:
        yield ms
    finally:
        ms.stop()


@pytest.fixture(scope="module")
def keda(cluster: Cluster, real_node: RealNode, keda_crds: None) -> Iterator[Keda]:
    """KEDA's operator and metrics adapter (host processes, testenv/keda.py)."""
    version = versions()["KEDA_VERSION"]
    bindir = cache_dir() / f"keda-{version}" / "bin"
    if not (bindir / "keda").exists():
        pytest.fail(
            f"KEDA {version} is not built: run `testenv/build.sh keda-server` (or `make testenv`)",
            pytrace=False,
        )
    assert cluster.control_plane is not None
    k = Keda(cluster.control_plane, bindir).start()
    try:
        yield k
    finally:
        k.stop()


@pytest.fixture(scope="session")
def installed(cluster: Cluster, real_node: RealNode) -> Iterator[str]:
    """`helm install` of the chart, its image built here, both components on the real node."""
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": OPERATOR_NS, "labels": RESTRICTED},
        }
    )
    ref = image("operator")
    repo, tag = ref.rsplit(":", 1)
    values = {
        "image": {"repository": repo, "tag": tag, "pullPolicy": "Never"},
        "operator": {**PLACEMENT},
        "webhook": {**PLACEMENT},
    }
    helm(
        cluster,
        "install",
        RELEASE,
        "charts/celery-operator",
        "--namespace",
        OPERATOR_NS,
        "--values",
        "-",
        "--wait",
        "--timeout=180s",
        input=json.dumps(values),
    )
    try:
        yield OPERATOR_NS
    finally:
        helm(cluster, "uninstall", RELEASE, "--namespace", OPERATOR_NS, "--wait")
        cluster.run("delete", "namespace", OPERATOR_NS, "--wait=false")


@pytest.fixture(scope="session")
def shop(cluster: Cluster, installed: str) -> Iterator[Shop]:
    with RedisServer(password=secrets.token_hex(8), pod_host=GATEWAY) as redis:
        ns = cluster.create_namespace("shop", labels=RESTRICTED)
        started = time.monotonic()
        cluster.apply(app_objects(ns, redis))
        cluster.wait("--for=condition=Ready", "celeryapp/shop", "-n", ns, timeout=180)
        for pool in ("default", "long", "oldest"):
            cluster.wait(
                "--for=condition=Ready",
                "pod",
                "-l",
                f"celeryproject.org/pool={pool}",
                "-n",
                ns,
                timeout=120,
            )
        print(
            f"\nexample app: kubectl apply -> every worker pod Ready in {time.monotonic() - started:.1f}s"
        )
        producer = Celery(
            "shop", broker=redis.url_for("127.0.0.1", 0), backend=redis.url_for("127.0.0.1", 1)
        )
        try:
            yield Shop(cluster, ns, redis, producer)
        finally:
            producer.close()
            cluster.run("delete", "namespace", ns, "--wait=false")
