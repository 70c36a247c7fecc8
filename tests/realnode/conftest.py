"""Fixtures of the real-node suite: a namespace that enforces Pod Security "restricted"
on the real node, and a Redis that pods on the node can reach."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from testenv.realnode import GATEWAY, RealNode

from tests.support.brokers import RedisServer
from tests.support.cluster import Cluster


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
