"""What one app-set costs the shared apiserver: the operator's own requests, counted by
its `celery_operator_api_requests_total`, while a CeleryApp, two pools and a Flower are
created at once and become Ready (issue 19: every extra request is load other teams pay
for). A fresh operator watches only the test's namespace, so nothing else is counted."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from tests.e2e.test_controllers import FLOWER, deep_merge
from tests.support.cluster import Cluster, wait_for
from tests.support.operator import OperatorProcess, new_workdir

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

GROUP = "celeryproject.org/v1alpha1"
CHILDREN = ("deployments", "services", "poddisruptionbudgets", "secrets")


def requests(op: OperatorProcess) -> Counter[str]:
    out: Counter[str] = Counter()
    pat = r'^celery_operator_api_requests_total\{code="[^"]*",method="([A-Z]+)",resource="([^"]+)"\} ([0-9.e+]+)$'
    for m in re.finditer(pat, op.metrics(), re.M):
        out[f"{m.group(1)} {m.group(2)}"] += int(float(m.group(3)))
    return out


def app_set(ns: str) -> list[dict[str, object]]:
    app = {
        "apiVersion": GROUP,
        "kind": "CeleryApp",
        "metadata": {"name": "shop", "namespace": ns},
        "spec": {
            "image": "example/app:1.0.0",
            "app": "app.worker:app",
            "broker": {"url": {"value": "redis://redis.invalid:6379/0"}},
        },
    }
    pools = [
        {
            "apiVersion": GROUP,
            "kind": "CeleryWorkerPool",
            "metadata": {"name": q, "namespace": ns},
            "spec": {"appRef": {"name": "shop"}, "queues": [q]},
        }
        for q in ("default", "emails")
    ]
    flower = deep_merge(FLOWER, {"metadata": {"name": "shop", "namespace": ns}})
    flower["spec"] = {"appRef": {"name": "shop"}}
    return [app, *pools, flower]


def converged(cluster: Cluster, ns: str) -> bool:
    st = cluster.get("celeryapp", "shop", ns).get("status") or {}
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in st.get("conditions") or [])
    return (
        ready
        and (st.get("pools") or {}).get("ready") == 2
        and bool((st.get("flower") or {}).get("ready"))
    )


def test_one_app_set_is_created_without_reads_and_written_a_few_times(
    cluster: Cluster, alone: None, namespace: str
) -> None:
    op = OperatorProcess(cluster, new_workdir(), f"--namespace={namespace}")
    op.start()
    try:
        wait_for(
            "the operator to lead",
            lambda: re.search(r"^celery_operator_leader\{[^}]*\} 1\.0$", op.metrics(), re.M),
            30,
        )
        # The informers list and watch once they lead: only then does the app-set start.
        wait_for(
            "the informers to watch",
            lambda: all(f"WATCH {k}" in requests(op) for k in (*CHILDREN[:3], "pods")),
            30,
        )
        before = requests(op)
        cluster.apply(app_set(namespace))
        wait_for(
            "the app to be Ready with both pools and its Flower",
            lambda: converged(cluster, namespace),
        )
        spent = requests(op) - before
    finally:
        op.stop()
    print("\nrequests for one app-set:", dict(sorted(spent.items())))
    # No read before a create: the apply itself tells whether a name is taken.
    assert not [k for k in spent if k.startswith("GET ") and k.split()[1] in CHILDREN], spent
    # Each child is applied once: two Deployments and PDBs, a Deployment and a Service.
    applies = {
        k: v for k, v in spent.items() if k.startswith("PATCH ") and k.split()[1] in CHILDREN
    }
    assert applies == {
        "PATCH deployments": 3,
        "PATCH poddisruptionbudgets": 2,
        "PATCH services": 1,
    }, spent
    # Each object's status: its first state and Ready, at most one more (its workers'
    # broker found unreachable apart, or a count held back by the window).
    writes = {k: v for k, v in spent.items() if k.endswith("/status")}
    for kind, objects in (("celeryapps", 1), ("celeryworkerpools", 2), ("flowers", 1)):
        assert writes.get(f"PATCH {kind}/status", 0) <= 3 * objects, writes
    assert sum(writes.values()) <= 10, writes
