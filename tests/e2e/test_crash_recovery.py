"""SIGKILL the operator while it creates 20 apps; after a restart everything converges
with no duplicate and no orphaned child."""

from __future__ import annotations

import json
import select
import subprocess
from typing import Any

import pytest

from tests.e2e.test_controllers import app, pool, secret
from tests.support.cluster import Cluster
from tests.support.operator import OperatorProcess, new_workdir

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

N = 20


def managed(cluster: Cluster, kind: str, ns: str) -> list[dict[str, Any]]:
    out = cluster.kubectl(
        "get", kind, "-n", ns, "-l", "app.kubernetes.io/managed-by=celery-operator", "-o", "json"
    )
    return list(json.loads(out)["items"])


def kill_on_first_child(cluster: Cluster, victim: OperatorProcess, ns: str) -> None:
    """Starts `victim` and SIGKILLs it the moment a watch shows its first Deployment."""
    watch = subprocess.Popen(
        [
            str(cluster.kubectl_bin),
            f"--kubeconfig={cluster.kubeconfig}",
            "get",
            "deployments",
            "-n",
            ns,
            "--watch",
            "-o",
            "name",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        victim.start()
        ready, _, _ = select.select([watch.stdout], [], [], 60)
        assert ready, "the operator created no child within 60s"
        victim.kill()
    finally:
        watch.kill()
        watch.wait()


def test_sigkill_mid_creation_converges(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    objs: list[dict[str, Any]] = [secret(namespace)]
    for i in range(N):
        objs += [app(namespace, f"app{i}"), pool(namespace, f"workers{i}", app_name=f"app{i}")]
    operator.stop()  # the objects wait for an operator
    try:
        cluster.apply(objs)
        # One reconcile at a time, killed at its first child: it cannot have finished.
        victim = OperatorProcess(cluster, new_workdir(), "--workers=1")
        kill_on_first_child(cluster, victim, namespace)
        created_before_kill = len(managed(cluster, "deployments", namespace))
        assert 1 <= created_before_kill < 2 * N, created_before_kill
    finally:
        operator.start()
    for i in range(N):
        cluster.wait("--for=condition=Ready", f"celeryapp/app{i}", "-n", namespace, timeout=120)

    deployments = managed(cluster, "deployments", namespace)
    names = sorted(d["metadata"]["name"] for d in deployments)
    expected = sorted([f"app{i}-beat" for i in range(N)] + [f"app{i}-workers{i}" for i in range(N)])
    assert names == expected, "one beat and one worker Deployment per app, no duplicates"

    owners = {
        o["metadata"]["uid"]
        for kind in ("celeryapps", "celeryworkerpools")
        for o in json.loads(cluster.kubectl("get", kind, "-n", namespace, "-o", "json"))["items"]
    }
    for kind in ("deployments", "poddisruptionbudgets"):
        for obj in managed(cluster, kind, namespace):
            refs = [r for r in obj["metadata"].get("ownerReferences", []) if r.get("controller")]
            assert len(refs) == 1, f"{kind} {obj['metadata']['name']} has {len(refs)} controllers"
            assert refs[0]["uid"] in owners, f"{kind} {obj['metadata']['name']} is orphaned"
    # Each Deployment was created once: exactly one ReplicaSet each (no rollout churn).
    rs = json.loads(cluster.kubectl("get", "rs", "-n", namespace, "-o", "json"))["items"]
    assert len(rs) == 2 * N
