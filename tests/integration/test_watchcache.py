"""The watch-driven cache the webhook reads from follows the real apiserver."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from celery_operator.k8s import client
from celery_operator.k8s.watchcache import WatchCache, wait_synced
from tests.support.cluster import Cluster, wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture
def namespaces(cluster: Cluster) -> Iterator[WatchCache]:
    client.configure(str(cluster.kubeconfig))
    cache = WatchCache("v1", "Namespace").start()
    try:
        assert wait_synced([cache], 30)
        yield cache
    finally:
        cache.stop()


def test_cache_follows_creates_updates_and_deletes(
    cluster: Cluster, namespaces: WatchCache
) -> None:
    assert namespaces.get("", "default") is not None  # from the initial LIST
    ns = cluster.create_namespace("watched")
    wait_for("the new namespace in the cache", lambda: namespaces.get("", ns) is not None)
    cluster.kubectl("label", "namespace", ns, "team=a")
    wait_for(
        "the label in the cache",
        lambda: (
            (namespaces.get("", ns) or {}).get("metadata", {}).get("labels", {}).get("team") == "a"
        ),
    )
    assert [
        n["metadata"]["name"] for n in namespaces.list(lambda n: n["metadata"]["name"] == ns)
    ] == [ns]
    cluster.kubectl("delete", "namespace", ns, "--wait=true", timeout=120)
    wait_for("the namespace to leave the cache", lambda: namespaces.get("", ns) is None)
