"""LeaderElector against the real apiserver's Lease (in-process, short timings): one
leads, the other waits; release hands over at once; a leader whose renewals stopped
fences itself before its next write."""

from __future__ import annotations

import threading
import time

import pytest

from celery_operator.controllers.leader import ElectionConfig, LeaderElector
from celery_operator.k8s import client
from tests.support.cluster import Cluster, wait_for

pytestmark = pytest.mark.cluster


class Clock:
    """time.monotonic, with a jump the test makes (a process stopped for that long)."""

    def __init__(self) -> None:
        self.skew = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skew


@pytest.fixture
def config(cluster: Cluster, namespace: str) -> ElectionConfig:
    client.configure(str(cluster.kubeconfig))
    return ElectionConfig(
        namespace, "test-lease", lease_duration=3.0, renew_deadline=2.0, retry_period=0.3
    )


def elector(
    config: ElectionConfig, me: str, lost: list[str], clock: Clock | None = None
) -> LeaderElector:
    c = ElectionConfig(
        config.namespace,
        config.name,
        identity=me,
        lease_duration=config.lease_duration,
        renew_deadline=config.renew_deadline,
        retry_period=config.retry_period,
    )
    return LeaderElector(c, on_lost=lambda why: lost.append(f"{me}: {why}"), clock=clock or Clock())


def holder(cluster: Cluster, config: ElectionConfig) -> str:
    return str(
        cluster.get("lease", config.name, config.namespace)["spec"].get("holderIdentity") or ""
    )


def test_one_leads_the_other_waits_and_a_release_hands_over(
    cluster: Cluster, config: ElectionConfig
) -> None:
    lost: list[str] = []
    a, b = elector(config, "a", lost), elector(config, "b", lost)
    a.acquire()
    a.start_renewing()
    assert holder(cluster, config) == "a"
    t = threading.Thread(target=b.acquire, daemon=True)
    t.start()
    time.sleep(2 * config.lease_duration)  # b must keep waiting while a renews: that is the point
    assert not b.leading
    assert b.holder == "a"
    assert holder(cluster, config) == "a"
    released = time.monotonic()
    a.release()
    t.join(timeout=10)
    assert b.leading
    assert time.monotonic() - released < 2 * config.retry_period + 1
    assert holder(cluster, config) == "b"
    lease = cluster.get("lease", config.name, config.namespace)["spec"]
    assert lease["leaseTransitions"] == 0  # a took it new, b took it released
    b.release()
    assert lost == []


def test_a_dead_leader_is_replaced_after_the_lease_duration(
    cluster: Cluster, config: ElectionConfig
) -> None:
    lost: list[str] = []
    a, b = elector(config, "a", lost), elector(config, "b", lost)
    a.acquire()  # and never renews: as if SIGKILLed at once
    started = time.monotonic()
    b.acquire()
    took = time.monotonic() - started
    assert config.lease_duration <= took < config.lease_duration + 3 * config.retry_period, took
    assert holder(cluster, config) == "b"
    assert cluster.get("lease", config.name, config.namespace)["spec"]["leaseTransitions"] == 1
    b.release()


def test_a_leader_past_its_renew_deadline_fences_its_writes(
    cluster: Cluster, config: ElectionConfig
) -> None:
    lost: list[str] = []
    clock = Clock()
    a = elector(config, "a", lost, clock)
    a.acquire()
    a.guard()  # just renewed: may write
    assert lost == []
    clock.skew += config.renew_deadline  # stopped that long (SIGSTOP, a frozen VM)
    a.guard()
    assert len(lost) == 1, lost
    assert "lease not renewed for" in lost[0], lost
    b = elector(config, "b", [])
    assert not b.leading
    b.guard()  # a standby never writes either
    assert b.leading is False


def test_a_leader_stopped_past_its_deadline_does_not_renew_when_it_resumes(
    cluster: Cluster, config: ElectionConfig
) -> None:
    """Stopped between its look at the Lease and the renewal (SIGSTOP mid-renewal): when
    it resumes past its renew deadline, the renewal is a write it must not make."""
    lost: list[str] = []
    clock = Clock()
    a = elector(config, "a", lost, clock)
    a.acquire()
    version = cluster.get("lease", config.name, config.namespace)["metadata"]["resourceVersion"]
    clock.skew += config.renew_deadline
    assert a._try() is False
    assert len(lost) == 1, lost
    assert "lease not renewed for" in lost[0], lost
    after = cluster.get("lease", config.name, config.namespace)["metadata"]["resourceVersion"]
    assert after == version, "the stopped leader wrote the Lease"


def test_the_renewal_loop_gives_up_when_the_lease_is_taken(
    cluster: Cluster, config: ElectionConfig
) -> None:
    """Someone else wrote the Lease (an admin, a split brain): renewals fail with 409 and
    the leader fences itself within the renew deadline."""
    lost: list[str] = []
    a = elector(config, "a", lost)
    a.acquire()
    a.start_renewing()
    lease = cluster.get("lease", config.name, config.namespace)
    cluster.kubectl(
        "patch",
        "lease",
        config.name,
        "-n",
        config.namespace,
        "--type=merge",
        "-p",
        '{"spec":{"holderIdentity":"intruder"}}',
    )
    assert lease["spec"]["holderIdentity"] == "a"
    wait_for("the leader to fence itself", lambda: lost, timeout=config.renew_deadline + 3)
    assert "a: lease not renewed" in lost[0], lost
    a.stop()
