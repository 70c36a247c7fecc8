"""The informer against the real apiserver: it follows a kind, and after a watch is cut
and its resourceVersion is gone (apiserver restarted, etcd compacted) it relists and
delivers, as DELETED, what was deleted meanwhile (kopf's watches did not)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from celery_operator.k8s import client
from celery_operator.k8s.informer import GONE_ON_RELIST, Informer, wait_synced
from tests.support.cluster import Cluster, wait_for

pytestmark = pytest.mark.cluster

LABEL = "informer-test=yes"


@dataclass
class Recorder:
    """The informer's handler: records events; `gate` closed parks the informer's thread
    inside its watch, as a stopped process would be."""

    events: list[tuple[str, str]] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    parked: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.gate.set()

    def __call__(self, kind: str, body: dict[str, Any]) -> None:
        if not self.gate.is_set():
            self.parked.set()
            self.gate.wait()
        self.events.append((kind, body["metadata"]["name"]))

    def of(self, name: str) -> list[str]:
        return [k for k, n in list(self.events) if n == name]


def secret(ns: str, name: str, labelled: bool = True) -> dict[str, Any]:
    labels = {"informer-test": "yes"} if labelled else {}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "stringData": {"k": "v"},
    }


@pytest.fixture
def watched(cluster: Cluster, namespace: str) -> Iterator[tuple[Informer, Recorder]]:
    client.configure(str(cluster.kubeconfig))
    cluster.apply([secret(namespace, "before"), secret(namespace, "unlabelled", labelled=False)])
    rec = Recorder()
    inf = Informer("v1", "Secret", rec, namespace=namespace, label_selector=LABEL).start()
    try:
        assert not wait_synced([inf], 30)
        yield inf, rec
    finally:
        rec.gate.set()
        inf.stop()


def test_it_follows_adds_changes_and_deletes_of_what_it_selects(
    cluster: Cluster, namespace: str, watched: tuple[Informer, Recorder]
) -> None:
    _, rec = watched
    assert rec.of("before") == ["ADDED"]  # from the first LIST
    assert rec.of("unlabelled") == []  # the selector applies
    cluster.apply(secret(namespace, "new"))
    wait_for("ADDED", lambda: rec.of("new") == ["ADDED"])
    cluster.kubectl("annotate", "secret", "new", "-n", namespace, "a=b")
    wait_for("MODIFIED", lambda: rec.of("new") == ["ADDED", "MODIFIED"])
    cluster.kubectl("delete", "secret", "new", "-n", namespace)
    wait_for("DELETED", lambda: rec.of("new") == ["ADDED", "MODIFIED", "DELETED"])


def test_a_delete_while_the_watch_is_cut_is_delivered_by_the_relist(
    cluster: Cluster, namespace: str, watched: tuple[Informer, Recorder]
) -> None:
    inf, rec = watched
    cp = cluster.control_plane
    if cp is None:
        pytest.fail("this test restarts the apiserver: it needs the local control plane")
    cluster.apply([secret(namespace, "doomed"), secret(namespace, "kept")])
    wait_for("both listed", lambda: rec.of("doomed") == ["ADDED"] and rec.of("kept") == ["ADDED"])
    gone_before = GONE_ON_RELIST.labels("secrets")._value.get()
    lists_before = inf.lists

    rec.gate.clear()
    cluster.apply(secret(namespace, "park"))  # its ADDED parks the informer in its watch
    assert rec.parked.wait(30), "the informer did not see the parking event"
    # The watch's connection dies with this apiserver; the next one starts with an empty
    # watch cache, and etcd forgets the old revisions: the informer's version is gone.
    cp.restart("kube-apiserver")
    cluster.kubectl("delete", "secret", "doomed", "-n", namespace)
    cluster.kubectl("annotate", "secret", "kept", "-n", namespace, "changed=meanwhile")
    cp.compact_etcd()
    rec.gate.set()

    wait_for("the deletion delivered", lambda: rec.of("doomed") == ["ADDED", "DELETED"], 60)
    assert inf.lists == lists_before + 1, "it relisted once"
    assert GONE_ON_RELIST.labels("secrets")._value.get() == gone_before + 1
    wait_for("the change delivered", lambda: rec.of("kept") == ["ADDED", "MODIFIED"])
    assert rec.of("before") == ["ADDED"]  # unchanged: not delivered again
    assert rec.of("park") == ["ADDED"]
    # And it watches on from the relist.
    cluster.apply(secret(namespace, "after"))
    wait_for("ADDED after the relist", lambda: rec.of("after") == ["ADDED"])
