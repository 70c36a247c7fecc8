"""Busy workers go last (pure): each worker pod's deletion cost from its load, and the
drain of busy workers before the operator itself lowers a pool's replicas.

Whatever lowers the replicas (the built-in scaler, an HPA, KEDA, kubectl scale), the
ReplicaSet removes pods with the lowest `controller.kubernetes.io/pod-deletion-cost` first
(after unscheduled, pending and unready ones): idle workers have none, busy and unknown
ones BUSY_COST, so idle workers go first. A cost is written only when a pod crosses
between idle and busy (or unknown).

When the operator lowers the replicas itself (the built-in engine, or a lower
`spec.replicas`) and the pods that would go include busy ones, those are drained first:
marked (annotation `celeryproject.org/draining-since`, DRAINING_COST: they go before any
other), told to stop consuming the pool's queues, and the replicas are lowered once they
are idle or after `drainTimeoutSeconds`. The state is on the pods, so a restarted operator
carries on. A drained worker that stays (the scale-down was abandoned, or another pod
went) is told to consume again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery_operator.scaling.workers import (
    BUSY_COST,
    DELETION_COST,
    DRAINING_COST,
    DRAINING_SINCE,
    Load,
    PoolHeartbeats,
    load_of,
)

Want = tuple[str | None, str | None]  # (deletion cost, draining-since) a pod should have
DRAIN_RECHECK = 2.0  # seconds between two looks at a drain in progress
_RANK: dict[Load, int] = {"starting": 0, "idle": 0, "busy": 1, "unknown": 2}


@dataclass(frozen=True)
class PodView:
    """A worker pod as the operator's cache keeps it."""

    name: str
    created: float  # epoch seconds
    ready: bool = True
    deleting: bool = False
    cost: str | None = None
    draining_since: str | None = None


@dataclass(frozen=True)
class WorkerPlan:
    replicas: int | None  # what the Deployment gets (held while a drain runs)
    patches: tuple[tuple[str, Mapping[str, str | None]], ...] = ()  # pod -> annotations
    cancel: tuple[str, ...] = ()  # pods whose worker stops consuming
    resume: tuple[str, ...] = ()  # pods whose worker consumes again
    draining: tuple[str, ...] = ()  # pods drained now
    retry_after: float | None = None
    outcome: str | None = None  # started, completed, timed_out, abandoned
    message: str = ""
    loads: Mapping[str, Load] = field(default_factory=dict)


def iso(epoch: float) -> str:
    return (
        dt.datetime.fromtimestamp(epoch, dt.UTC)
        .replace(microsecond=0)
        .isoformat()
        .replace("+00:00", "Z")
    )


def epoch_of(stamp: str) -> float | None:
    try:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def loads(pods: Sequence[PodView], hb: PoolHeartbeats, now: float) -> dict[str, Load]:
    return {p.name: load_of(hb.beat(p.name), now - p.created) for p in pods}


def _annotations(
    pods: Sequence[PodView], want: Mapping[str, Want]
) -> tuple[tuple[str, Mapping[str, str | None]], ...]:
    """The patches that make each pod's (cost, draining-since) what `want` says."""
    out = []
    for p in pods:
        if p.name not in want:
            continue
        cost, since = want[p.name]
        patch: dict[str, str | None] = {}
        if p.cost != cost:
            patch[DELETION_COST] = cost
        if p.draining_since != since:
            patch[DRAINING_SINCE] = since
        if patch:
            out.append((p.name, patch))
    return tuple(out)


def _by_load(
    live: Sequence[PodView], load: Mapping[str, Load], resume: Sequence[str] = ()
) -> dict[str, Want]:
    """Costs that follow the load; a draining pod keeps its marks unless it resumes."""
    return {
        p.name: (DRAINING_COST, p.draining_since)
        if p.draining_since and p.name not in resume
        else (_cost(load[p.name]), None)
        for p in live
    }


def _cost(load: Load) -> str | None:
    return BUSY_COST if load in ("busy", "unknown") else None


def plan_workers(
    pods: Sequence[PodView],
    hb: PoolHeartbeats | None,
    *,
    protect: bool,
    drain_timeout: float,
    desired: int | None,
    current: int | None,
    ours: bool,
    now: float,
    status_only: bool = False,
) -> WorkerPlan:
    """`desired`: the replicas the pool's plan wants (None: an HPA or KEDA owns them);
    `current`: the Deployment's; `ours`: the operator lowers them itself (drain allowed);
    `status_only`: a status pass (costs only; no drain starts, ends or is given up)."""
    live = [p for p in pods if not p.deleting]
    drained = [p for p in live if p.draining_since]
    if not protect or (hb is not None and not hb.supported):
        # Nothing to protect with: give back what the operator set.
        give_back: dict[str, Want] = {p.name: (None, None) for p in live}
        resume = tuple(p.name for p in drained)
        return WorkerPlan(desired, _annotations(live, give_back), resume=resume)
    if hb is None or not hb.known:
        # The broker is not heard (yet): costs stay as they are; a drain in progress runs
        # on to its timeout (its start is on the pods).
        if status_only:
            return WorkerPlan(desired)
        return _drain_unheard(drained, desired, current, ours, drain_timeout, now)
    load = loads(live, hb, now)
    if status_only:  # costs follow the load; drains are the full reconcile's
        return WorkerPlan(desired, _annotations(live, _by_load(live, load)), loads=load)
    if desired is None or current is None or not ours or desired >= current:
        # Not lowering: drained workers consume again once no pod is on its way out.
        target = current if desired is None else desired
        going = 0 if target is None else max(0, len(live) - target)
        resume = () if going else tuple(p.name for p in drained)
        return WorkerPlan(
            desired,
            _annotations(live, _by_load(live, load, resume)),
            resume=resume,
            outcome="abandoned" if resume else None,
            loads=load,
        )
    assert desired is not None
    return _lower(live, hb, load, desired, current or 0, drain_timeout, now)


def _lower(
    live: Sequence[PodView],
    hb: PoolHeartbeats,
    load: Mapping[str, Load],
    desired: int,
    current: int,
    drain_timeout: float,
    now: float,
) -> WorkerPlan:
    """The operator lowers the replicas: which pods go, and whether they drain first."""
    victims = _ranked(live, hb, load)[: max(0, len(live) - desired)]
    names = {v.name for v in victims}
    busy = [v for v in victims if v.ready and load[v.name] in ("busy", "unknown")]
    resume = tuple(p.name for p in live if p.draining_since and p.name not in names)
    want: dict[str, Want] = {
        p.name: (_cost(load[p.name]), None) for p in live if p.name not in names
    }
    if not busy or drain_timeout <= 0:
        # Nothing busy goes (or no drain wanted): lower now; marks of earlier drains stay.
        want |= {
            v.name: (DRAINING_COST if v.draining_since else None, v.draining_since) for v in victims
        }
        done = any(v.draining_since for v in victims)
        outcome = "completed" if done else None
        return WorkerPlan(
            desired, _annotations(live, want), resume=resume, outcome=outcome, loads=load
        )
    want |= {
        v.name: (DRAINING_COST, v.draining_since) if v.draining_since else (None, None)
        for v in victims
        if v not in busy
    }
    want |= {v.name: (DRAINING_COST, v.draining_since or iso(now)) for v in busy}
    return _drain(
        WorkerPlan(current, _annotations(live, want), resume=resume, loads=load),
        hb,
        busy,
        desired,
        drain_timeout,
        now,
    )


def _ranked(live: Sequence[PodView], hb: PoolHeartbeats, load: Mapping[str, Load]) -> list[PodView]:
    """The order pods go in: unready first, then those already draining, then by load,
    then the fewest running tasks (a worker that just finished its last task counts busy
    for a moment, but goes before one in the middle of a task), then by name (stable)."""

    def running(pod: PodView) -> int:
        beat = hb.beat(pod.name)
        return beat.active if beat is not None and beat.fresh else 1 << 30

    return sorted(
        live,
        key=lambda p: (
            p.ready,
            p.draining_since is None,
            _RANK[load[p.name]],
            running(p),
            p.name,
        ),
    )


def _drain(
    held: WorkerPlan,
    hb: PoolHeartbeats,
    busy: Sequence[PodView],
    desired: int,
    drain_timeout: float,
    now: float,
) -> WorkerPlan:
    """Busy workers are going: lower once they finished or the drain timed out, else keep
    the replicas (`held`), stop them consuming and look again."""
    draining = tuple(v.name for v in busy)
    # A drained worker runs no task: its consumer is cancelled, so none comes (no settling).
    pending = [v for v in busy if not (v.draining_since and _finished(hb, v.name))]
    stamps = [e for v in busy if v.draining_since and (e := epoch_of(v.draining_since))]
    started = min(stamps, default=now)
    if not pending or now - started >= drain_timeout:
        outcome = "completed" if not pending else "timed_out"
        return dataclasses.replace(held, replicas=desired, draining=draining, outcome=outcome)
    left = int(drain_timeout - (now - started))
    return dataclasses.replace(
        held,
        cancel=draining,
        draining=draining,
        retry_after=DRAIN_RECHECK,
        outcome="started" if any(v.draining_since is None for v in busy) else None,
        message=(
            f"draining {len(busy)} busy worker(s) ({', '.join(draining)}) before going from "
            f"{held.replicas} to {desired} replicas: they finish their tasks and take no new "
            f"ones (at most {left}s more)"
        ),
    )


def _finished(hb: PoolHeartbeats, pod: str) -> bool:
    beat = hb.beat(pod)
    return beat is not None and beat.fresh and beat.active == 0


def _drain_unheard(
    drained: Sequence[PodView],
    desired: int | None,
    current: int | None,
    ours: bool,
    drain_timeout: float,
    now: float,
) -> WorkerPlan:
    if not drained or desired is None or current is None or not ours or desired >= current:
        return WorkerPlan(desired)
    stamps = [e for p in drained if p.draining_since and (e := epoch_of(p.draining_since))]
    started = min(stamps, default=now)
    if now - started >= drain_timeout:
        return WorkerPlan(desired, draining=tuple(p.name for p in drained), outcome="timed_out")
    return WorkerPlan(
        current,
        draining=tuple(p.name for p in drained),
        retry_after=DRAIN_RECHECK,
        message=(
            f"draining {len(drained)} worker(s) before going from {current} to {desired} "
            "replicas; their heartbeats are not heard: waiting for the broker or the timeout"
        ),
    )


def workers_status(
    pods: Sequence[PodView], hb: PoolHeartbeats, now: float, draining: int
) -> dict[str, Any]:
    """status.workers: online (heartbeats arrive), busy, the tasks they run, unknown."""
    live = [p for p in pods if not p.deleting]
    online = busy = active = unknown = 0
    for p in live:
        beat = hb.beat(p.name)
        load = load_of(beat, now - p.created)
        if load in ("idle", "busy"):
            online += 1
            assert beat is not None
            active += beat.active
            busy += load == "busy"
        elif load == "unknown":
            unknown += 1
    return {
        "online": online,
        "busy": busy,
        "activeTasks": active,
        "unknown": unknown,
        "draining": draining,
        "summary": f"{busy}/{online}",
    }
