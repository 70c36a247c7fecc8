"""Busy workers go last (plans/workers.py), with no cluster: deletion costs follow the
load and are written only when a pod crosses idle <-> busy; the operator's own scale-down
drains busy workers before lowering the replicas; unknown is never idle."""

from __future__ import annotations

from typing import Any

from celery_operator.plans.workers import PodView, iso, plan_workers, workers_status
from celery_operator.scaling.workers import (
    BUSY_COST,
    DELETION_COST,
    DRAINING_COST,
    DRAINING_SINCE,
    IDLE_SETTLE,
    STARTUP_SECONDS,
    Heartbeat,
    PoolHeartbeats,
)

NOW = 1_800_000_000.0
OLD = NOW - 3600


def pod(name: str, **kw: Any) -> PodView:
    return PodView(name, created=kw.pop("created", OLD), **kw)


def beats(*pods: tuple[str, int], **kw: Any) -> PoolHeartbeats:
    """Fresh heartbeats: (pod, active tasks)."""
    return PoolHeartbeats(known=True, beats={n: Heartbeat(a, 2.0, 1.0) for n, a in pods}, **kw)


def plan(pods: list[PodView], hb: PoolHeartbeats | None, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "protect": True,
        "drain_timeout": 600,
        "desired": len(pods),
        "current": len(pods),
        "ours": True,
        "now": NOW,
    }
    return plan_workers(pods, hb, **(args | kw))


def patches(p: Any) -> dict[str, dict[str, str | None]]:
    return {name: dict(marks) for name, marks in p.patches}


# ---- deletion costs ---------------------------------------------------------------------------
def test_costs_follow_the_load_and_idle_pods_carry_none() -> None:
    pods = [pod("idle"), pod("busy"), pod("silent"), pod("new", created=NOW - 5), pod("quiet")]
    hb = PoolHeartbeats(
        known=True,
        beats={
            "idle": Heartbeat(0, 2.0, 1.0),
            "busy": Heartbeat(2, 2.0, 1.0),
            "silent": Heartbeat(0, 2.0, 60.0),  # its heartbeats stopped: unknown, never idle
        },
    )
    p = plan(pods, hb)
    # "new" has not sent its first heartbeat yet (starting); "quiet" never did and is old.
    assert patches(p) == {
        "busy": {DELETION_COST: BUSY_COST},
        "silent": {DELETION_COST: BUSY_COST},
        "quiet": {DELETION_COST: BUSY_COST},
    }
    assert p.loads == {
        "idle": "idle",
        "busy": "busy",
        "silent": "unknown",
        "new": "starting",
        "quiet": "unknown",
    }
    assert STARTUP_SECONDS > 5


def test_a_cost_is_written_only_when_a_pod_crosses_idle_and_busy() -> None:
    pods = [pod("a", cost=BUSY_COST), pod("b")]
    assert plan(pods, beats(("a", 1), ("b", 0))).patches == ()
    crossed = plan(pods, beats(("a", 0), ("b", 3)))
    # "a" finished its last task long ago (first heartbeat seen idle): idle at once.
    assert patches(crossed) == {"a": {DELETION_COST: None}, "b": {DELETION_COST: BUSY_COST}}


def test_a_worker_between_two_short_tasks_stays_busy() -> None:
    pods = [pod("a", cost=BUSY_COST)]
    just_done = PoolHeartbeats(known=True, beats={"a": Heartbeat(0, 2.0, 1.0, idle_for=2.0)})
    assert plan(pods, just_done).patches == ()
    settled = PoolHeartbeats(
        known=True, beats={"a": Heartbeat(0, 2.0, 1.0, idle_for=IDLE_SETTLE + 1)}
    )
    assert patches(plan(pods, settled)) == {"a": {DELETION_COST: None}}


def test_costs_stay_as_they_are_while_the_broker_is_not_heard() -> None:
    pods = [pod("a", cost=BUSY_COST), pod("b")]
    for hb in (PoolHeartbeats(known=False, error="ConnectionRefusedError"), None):
        p = plan(pods, hb, desired=1)
        assert p.patches == ()
        assert p.replicas == 1  # the scale-down goes on with the costs as they were


def test_without_protection_the_operator_gives_its_marks_back() -> None:
    pods = [pod("a", cost=BUSY_COST), pod("b", cost=DRAINING_COST, draining_since=iso(NOW))]
    p = plan(pods, beats(("a", 1), ("b", 1)), protect=False)
    assert patches(p) == {
        "a": {DELETION_COST: None},
        "b": {DELETION_COST: None, DRAINING_SINCE: None},
    }
    assert p.resume == ("b",)


def test_an_hpa_or_keda_scale_down_relies_on_the_costs_alone() -> None:
    pods = [pod("a"), pod("b")]
    p = plan(pods, beats(("a", 1), ("b", 0)), desired=None, current=1, ours=False)
    assert p.replicas is None
    assert p.cancel == ()
    assert patches(p) == {"a": {DELETION_COST: BUSY_COST}}


# ---- the operator's own scale-down -------------------------------------------------------------
def test_idle_workers_go_at_once_and_busy_ones_stay() -> None:
    pods = [pod("a"), pod("b"), pod("c")]
    p = plan(pods, beats(("a", 0), ("b", 1), ("c", 0)), desired=1, current=3)
    assert p.replicas == 1
    assert p.cancel == ()
    assert patches(p) == {"b": {DELETION_COST: BUSY_COST}}  # a and c (cost 0) go first


def test_when_every_worker_is_busy_one_drains_first() -> None:
    pods = [pod("a"), pod("b"), pod("c")]
    p = plan(pods, beats(("a", 1), ("b", 2), ("c", 1)), desired=2, current=3)
    assert p.replicas == 3  # held until the chosen worker is idle
    assert p.draining == ("a",)
    assert p.cancel == ("a",)
    assert p.outcome == "started"
    assert p.retry_after is not None
    assert patches(p) == {
        "a": {DELETION_COST: DRAINING_COST, DRAINING_SINCE: iso(NOW)},
        "b": {DELETION_COST: BUSY_COST},
        "c": {DELETION_COST: BUSY_COST},
    }
    assert "draining 1 busy worker(s) (a)" in p.message


def test_a_drain_in_progress_keeps_its_worker_and_waits() -> None:
    since = iso(NOW - 30)
    pods = [pod("a", cost=DRAINING_COST, draining_since=since), pod("b", cost=BUSY_COST)]
    p = plan(pods, beats(("a", 1), ("b", 0)), desired=1, current=2)
    # b became idle meanwhile, but a was chosen first and drains: it stays the one to go.
    assert p.draining == ("a",)
    assert p.replicas == 2
    assert p.outcome is None  # started before
    assert "at most 570s more" in p.message


def test_a_drained_worker_that_finished_lets_the_replicas_go_down() -> None:
    pods = [pod("a", cost=DRAINING_COST, draining_since=iso(NOW - 30)), pod("b", cost=BUSY_COST)]
    done = PoolHeartbeats(
        known=True,
        beats={"a": Heartbeat(0, 2.0, 1.0, idle_for=1.0), "b": Heartbeat(1, 2.0, 1.0)},
    )
    p = plan(pods, done, desired=1, current=2)
    assert (p.replicas, p.outcome) == (1, "completed")
    assert p.cancel == ()
    assert patches(p) == {}  # a keeps DRAINING_COST: it is the one the ReplicaSet removes


def test_a_drain_ends_at_its_timeout() -> None:
    pods = [pod("a", cost=DRAINING_COST, draining_since=iso(NOW - 61)), pod("b", cost=BUSY_COST)]
    p = plan(pods, beats(("a", 1), ("b", 1)), desired=1, current=2, drain_timeout=60)
    assert (p.replicas, p.outcome) == (1, "timed_out")


def test_no_drain_with_a_zero_timeout() -> None:
    pods = [pod("a"), pod("b")]
    p = plan(pods, beats(("a", 1), ("b", 1)), desired=1, current=2, drain_timeout=0)
    assert (p.replicas, p.cancel) == (1, ())


def test_an_abandoned_drain_resumes_its_worker() -> None:
    pods = [pod("a", cost=DRAINING_COST, draining_since=iso(NOW - 10)), pod("b", cost=BUSY_COST)]
    p = plan(pods, beats(("a", 1), ("b", 1)), desired=2, current=2)
    assert p.resume == ("a",)
    assert p.outcome == "abandoned"
    assert patches(p) == {"a": {DELETION_COST: BUSY_COST, DRAINING_SINCE: None}}


def test_nothing_resumes_while_a_pod_is_on_its_way_out() -> None:
    """Replicas just lowered: the drained pod is still there for a moment, about to be
    deleted; telling it to consume again would give it a task to be killed in."""
    pods = [pod("a", cost=DRAINING_COST, draining_since=iso(NOW - 10)), pod("b", cost=BUSY_COST)]
    p = plan(pods, beats(("a", 0), ("b", 1)), desired=1, current=1)
    assert p.resume == ()
    assert patches(p) == {}


def test_a_drain_continues_to_its_timeout_while_the_broker_is_not_heard() -> None:
    pods = [pod("a", cost=DRAINING_COST, draining_since=iso(NOW - 10)), pod("b")]
    lost = PoolHeartbeats(known=False, error="ConnectionRefusedError")
    p = plan(pods, lost, desired=1, current=2, drain_timeout=60)
    assert p.replicas == 2
    assert p.retry_after is not None
    assert plan(pods, lost, desired=1, current=2, drain_timeout=5).replicas == 1


def test_an_unknown_worker_goes_after_busy_ones_and_never_counts_as_finished() -> None:
    pods = [pod("silent"), pod("busy")]
    hb = PoolHeartbeats(
        known=True, beats={"silent": Heartbeat(0, 2.0, 60.0), "busy": Heartbeat(1, 2.0, 1.0)}
    )
    p = plan(pods, hb, desired=1, current=2)
    assert p.draining == ("busy",)  # the SIGSTOPped worker is kept
    stopped = [pod("silent", draining_since=iso(NOW - 5))]
    q = plan(
        stopped,
        PoolHeartbeats(known=True, beats={"silent": Heartbeat(0, 2.0, 60.0)}),
        desired=0,
        current=1,
    )
    assert q.replicas == 1  # no fresh heartbeat says it finished: wait for the timeout


def test_an_unready_pod_goes_first() -> None:
    pods = [pod("a"), pod("b", ready=False)]
    p = plan(pods, beats(("a", 1), ("b", 1)), desired=1, current=2)
    assert (p.replicas, p.draining) == (1, ())


def test_a_status_pass_updates_costs_but_never_drains() -> None:
    pods = [pod("a", cost=DRAINING_COST, draining_since=iso(NOW - 10)), pod("b")]
    p = plan(pods, beats(("a", 1), ("b", 1)), desired=None, current=2, status_only=True)
    assert (p.resume, p.cancel, p.retry_after) == ((), (), None)
    assert patches(p) == {"b": {DELETION_COST: BUSY_COST}}


def test_workers_status_counts_online_busy_unknown() -> None:
    pods = [pod("a"), pod("b"), pod("c"), pod("gone", deleting=True)]
    hb = PoolHeartbeats(
        known=True,
        beats={
            "a": Heartbeat(0, 2.0, 1.0),
            "b": Heartbeat(3, 2.0, 1.0),
            "gone": Heartbeat(1, 2.0, 1.0),
        },
    )
    assert workers_status(pods, hb, NOW, draining=1) == {
        "online": 2,
        "busy": 1,
        "activeTasks": 3,
        "unknown": 1,
        "draining": 1,
        "summary": "1/2",
    }


def test_a_worker_that_just_finished_goes_before_one_in_the_middle_of_a_task() -> None:
    """Both count busy (the first finished its task 2 s ago), but only one runs a task."""
    pods = [pod("a-running"), pod("b-done")]
    hb = PoolHeartbeats(
        known=True,
        beats={
            "a-running": Heartbeat(1, 2.0, 1.0),
            "b-done": Heartbeat(0, 2.0, 1.0, idle_for=2.0),
        },
    )
    p = plan(pods, hb, desired=1, current=2)
    assert p.draining == ("b-done",)
