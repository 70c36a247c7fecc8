"""High availability and faults on the real control plane: two operators elect a leader on
a Lease; the leader SIGKILLed or SIGSTOPped mid-convergence; the apiserver and etcd
restarted; watches cut while a child is deleted. Nothing is lost, nothing duplicated,
and a stopped leader that resumes writes nothing (the apiserver's audit log says who
wrote what, by user agent)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from celery_operator.certs.manager import DEFAULT_SECRET_NAME
from tests.e2e.test_controllers import FLOWER, app, deep_merge, pool, secret
from tests.e2e.test_crash_recovery import managed
from tests.support.cluster import Cluster, wait_for
from tests.support.operator import NAMESPACE, OperatorProcess, WebhookProcess, new_workdir
from tests.support.webhook import serving_webhook

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

N = 50
FAILOVER_LIMIT = 20.0  # seconds: lease 15 s, a standby looks every 2 s
# The pair's own resync is long: what converges, converges through watches and leadership.
ARGS = ("--resync-seconds=3600",)


# ---- helpers ----------------------------------------------------------------------------
def health(op: OperatorProcess) -> str:
    """/healthz's body: "ok leader <me>; leader: <holder>" or "ok standby <me>; ..."."""
    with urllib.request.urlopen(op.health_url(), timeout=2) as r:
        return str(r.read().decode())


def role(op: OperatorProcess) -> str:
    try:
        return health(op).split()[1]
    except OSError:
        return "down"


def identity(op: OperatorProcess) -> str:
    return health(op).split()[2].rstrip(";")


def lease_holder(cluster: Cluster) -> str:
    lease = cluster.get("lease", "celery-operator", NAMESPACE)
    return str(lease["spec"].get("holderIdentity") or "")


def signal_group(op: OperatorProcess, sig: int) -> None:
    assert op.proc is not None
    os.killpg(op.proc.pid, sig)


def apps_and_pools(ns: str, n: int, prefix: str = "app") -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = [secret(ns)]
    for i in range(n):
        objs += [
            app(ns, f"{prefix}{i}"),
            pool(ns, f"{prefix}-workers{i}", app_name=f"{prefix}{i}"),
        ]
    return objs


def wait_all_ready(cluster: Cluster, ns: str, n: int, prefix: str = "app") -> None:
    deadline = time.monotonic() + 240
    for i in range(n):
        left = max(5, int(deadline - time.monotonic()))
        cluster.wait("--for=condition=Ready", f"celeryapp/{prefix}{i}", "-n", ns, timeout=left)


def assert_no_duplicate_or_orphan(
    cluster: Cluster, ns: str, n: int, prefixes: tuple[str, ...] = ("app",)
) -> None:
    deployments = managed(cluster, "deployments", ns)
    names = sorted(d["metadata"]["name"] for d in deployments)
    expected = sorted(
        name
        for p in prefixes
        for i in range(n)
        for name in (f"{p}{i}-beat", f"{p}{i}-{p}-workers{i}")
    )
    assert names == expected, "one beat and one worker Deployment per app, no duplicates"
    owners = {
        o["metadata"]["uid"]
        for kind in ("celeryapps", "celeryworkerpools")
        for o in json.loads(cluster.kubectl("get", kind, "-n", ns, "-o", "json"))["items"]
    }
    for kind in ("deployments", "poddisruptionbudgets"):
        for obj in managed(cluster, kind, ns):
            refs = [r for r in obj["metadata"].get("ownerReferences", []) if r.get("controller")]
            assert len(refs) == 1, f"{kind} {obj['metadata']['name']} has {len(refs)} controllers"
            assert refs[0]["uid"] in owners, f"{kind} {obj['metadata']['name']} is orphaned"
    # Each Deployment was created once and never rolled: one ReplicaSet each.
    rs = json.loads(cluster.kubectl("get", "rs", "-n", ns, "-o", "json"))["items"]
    assert len(rs) == 2 * n * len(prefixes), sorted(r["metadata"]["name"] for r in rs)


def first_child(cluster: Cluster, ns: str) -> None:
    wait_for("the leader's first child", lambda: managed(cluster, "deployments", ns), 60)


def writes_by(cluster: Cluster, who: str, since: float = 0.0) -> list[dict[str, Any]]:
    """Writes the apiserver audited from the process named `who` (its user agent)."""
    cp = cluster.control_plane
    assert cp is not None, "these tests read the local control plane's audit log"
    out = []
    for e in cp.audit_events():
        if who not in str(e.get("userAgent", "")):
            continue
        at = dt.datetime.fromisoformat(e["requestReceivedTimestamp"].replace("Z", "+00:00"))
        if at.timestamp() >= since:
            out.append(e)
    return out


@pytest.fixture
def pair(cluster: Cluster, alone: None) -> Iterator[tuple[OperatorProcess, OperatorProcess]]:
    a = OperatorProcess(cluster, new_workdir(), *ARGS)
    b = OperatorProcess(cluster, new_workdir(), *ARGS)
    try:
        a.start()
        wait_for("the first operator to lead", lambda: role(a) == "leader", 30)
        b.start()
        assert role(b) == "standby", health(b)
        # Its health endpoint answers before its first look at the Lease: wait for that.
        wait_for("a standby to show who leads", lambda: identity(a) in health(b), 10)
        assert lease_holder(cluster) == identity(a)
        yield a, b
    finally:
        for op in (a, b):
            if op.proc is not None and op.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    signal_group(op, signal.SIGCONT)
            op.stop()
        print(f"\n--- first operator ---\n{a.tail(15)}\n--- second operator ---\n{b.tail(15)}")


# ---- leader election --------------------------------------------------------------------
def test_sigkill_of_the_leader_while_50_apps_converge(
    cluster: Cluster, pair: tuple[OperatorProcess, OperatorProcess], namespace: str
) -> None:
    a, b = pair
    cluster.apply(apps_and_pools(namespace, N))
    first_child(cluster, namespace)
    killed = time.monotonic()
    a.kill()
    wait_for("the standby to lead", lambda: role(b) == "leader", 40)
    took = time.monotonic() - killed
    print(f"\nfailover: the standby led {took:.1f}s after SIGKILL of the leader")
    assert took <= FAILOVER_LIMIT, f"the standby took {took:.1f}s to lead"
    assert lease_holder(cluster) == identity(b)
    wait_all_ready(cluster, namespace, N)
    assert_no_duplicate_or_orphan(cluster, namespace, N)
    assert not b.errors(), b.errors()


def test_a_stopped_leader_writes_nothing_when_it_resumes(
    cluster: Cluster, pair: tuple[OperatorProcess, OperatorProcess], namespace: str
) -> None:
    a, b = pair
    me = identity(a)
    cluster.apply(apps_and_pools(namespace, 5))
    wait_all_ready(cluster, namespace, 5)
    assert writes_by(cluster, me), "the audit log names the leader's writes"

    signal_group(a, signal.SIGSTOP)  # past its lease: a partition, a frozen VM
    wait_for("the standby to lead", lambda: role(b) == "leader", 40)
    # Work that the stopped leader's watches hold for it when it resumes: it would write.
    cluster.apply(apps_and_pools(namespace, 5, prefix="late"))
    wait_all_ready(cluster, namespace, 5, prefix="late")

    resumed = time.time()
    signal_group(a, signal.SIGCONT)
    assert a.proc is not None
    code = a.proc.wait(timeout=30)
    assert code == 1, f"the old leader exited with {code}"
    assert "lost the leader lease" in a.tail(5), a.tail(5)
    assert writes_by(cluster, me, since=resumed) == [], "the old leader wrote after it resumed"
    assert writes_by(cluster, identity(b)), "the new leader's writes are in the audit log"
    assert_no_duplicate_or_orphan(cluster, namespace, 5, ("app", "late"))


def test_a_clean_shutdown_hands_over_at_once(
    cluster: Cluster, pair: tuple[OperatorProcess, OperatorProcess], namespace: str
) -> None:
    """SIGTERM (a rollout, a drain): the leader releases the Lease; the standby leads
    within a retry period or two, not a lease duration."""
    a, b = pair
    stopped = time.monotonic()
    a.stop()
    wait_for("the standby to lead", lambda: role(b) == "leader", 15)
    assert time.monotonic() - stopped < 8
    cluster.apply(apps_and_pools(namespace, 2))
    wait_all_ready(cluster, namespace, 2)


# ---- watches cut, apiserver and etcd restarted ------------------------------------------
def test_a_child_deleted_while_the_watches_are_cut_comes_back(
    cluster: Cluster, alone: None, namespace: str
) -> None:
    """The operator's watches die with the apiserver; the child is deleted and etcd
    compacted before they resume: their resourceVersion is gone (410), they relist, and
    the relist must report the deletion. The operator's resync is an hour away."""
    cp = cluster.control_plane
    assert cp is not None, "this test restarts the local apiserver"
    # A single replica without the Lease: a stopped leader would rightly exit on resuming.
    op = OperatorProcess(cluster, new_workdir(), *ARGS, "--no-leader-elect")
    op.start()
    try:
        flower = deep_merge(FLOWER, {"metadata": {"name": "shop", "namespace": namespace}})
        flower["spec"].pop("basicAuth", None)
        cluster.apply([secret(namespace), app(namespace), pool(namespace), flower])
        cluster.wait("--for=condition=Ready", "flower/shop", "-n", namespace, timeout=60)
        old = cluster.get("service", "shop-flower", namespace)["metadata"]["uid"]

        signal_group(op, signal.SIGSTOP)
        try:
            cp.restart("kube-apiserver")
            cluster.kubectl("delete", "service", "shop-flower", "-n", namespace)
            cp.compact_etcd()
        finally:
            signal_group(op, signal.SIGCONT)
        wait_for(
            "the Service deleted while the watches were cut to come back",
            lambda: (
                cluster.exists("service", "shop-flower", namespace)
                and cluster.get("service", "shop-flower", namespace)["metadata"]["uid"] != old
            ),
            timeout=60,
        )
        assert "was deleted while the watch was cut" in op.log.read_text()
        assert not op.errors(), op.errors()
    finally:
        op.stop()
        print(f"\n--- operator ---\n{op.tail(60)}")


@pytest.fixture
def webhook(cluster: Cluster, crds: list[str]) -> Iterator[WebhookProcess]:
    yield from serving_webhook(cluster)


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_a_restart_while_50_apps_converge(
    cluster: Cluster,
    webhook: WebhookProcess,
    pair: tuple[OperatorProcess, OperatorProcess],
    namespace: str,
    component: str,
) -> None:
    """Everything converges through the outage (a leader that cannot renew for 10 s
    exits, and the standby takes over once the apiserver is back); the webhook keeps its
    certificates (the same CA Secret) and answers."""
    cp = cluster.control_plane
    assert cp is not None, "this test restarts the local control plane's components"
    ca_before = cluster.get("secret", DEFAULT_SECRET_NAME, NAMESPACE)["metadata"]["uid"]
    cluster.apply(apps_and_pools(namespace, N))
    first_child(cluster, namespace)
    cp.restart(component, down=3)
    wait_all_ready(cluster, namespace, N)
    assert_no_duplicate_or_orphan(cluster, namespace, N)
    assert cluster.get("secret", DEFAULT_SECRET_NAME, NAMESPACE)["metadata"]["uid"] == ca_before
    # Admission still answers with those certificates: the mutating webhook labels a new
    # pool with its app (nothing else does; its failurePolicy is Ignore, so a webhook the
    # apiserver could not call would leave the pool unlabelled).
    cluster.apply(pool(namespace, "probe", app_name="app0"))
    labels = cluster.get("celeryworkerpool", "probe", namespace)["metadata"].get("labels") or {}
    assert labels.get("celeryproject.org/app") == "app0", labels
    assert webhook.proc is not None
    assert webhook.proc.poll() is None
