"""Celery workers as their heartbeats tell, and what that means for scale-down (pure).

A worker sends a `worker-heartbeat` event every `freq` seconds (2 by default) carrying
`active`, the number of tasks it is running; `worker-offline` when it stops. Its node name
is `<pool>.<namespace>@<pod>` (the operator renders `--hostname`), which names its pool and
its pod. A worker is busy while it runs a task, idle while it runs none, and unknown once
its heartbeats stop (a SIGSTOPped, hung or cut-off worker): unknown is never idle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Key = tuple[str, str]  # (namespace, pool)
Load = Literal["idle", "busy", "unknown", "starting"]

# Celery's own expiry (celery.events.state): alive while the last heartbeat is younger than
# twice its interval. A little more here: a heartbeat is never late because of the broker
# alone, but a busy operator may read it a moment late.
EXPIRY_INTERVALS = 2.0
EXPIRY_GRACE = 3.0
# A worker that never sent a heartbeat has never consumed a task (Celery starts its
# heartbeats before its consumer). That is "starting" for this long after its pod is
# created, "unknown" after.
STARTUP_SECONDS = 120.0
# A worker that just finished a task counts as busy for this long: a worker taking one short
# task after another is busy, not a pod whose deletion cost flips every second.
IDLE_SETTLE = 10.0

# controller.kubernetes.io/pod-deletion-cost: the ReplicaSet removes lower costs first
# (after unscheduled, pending and unready pods). Idle workers have none (0).
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
BUSY_COST = "100"
DRAINING_COST = "-100"
# When the operator told a worker to stop consuming, before removing its pod (RFC 3339).
DRAINING_SINCE = "celeryproject.org/draining-since"


def parse_node(node: str) -> tuple[Key, str] | None:
    """((namespace, pool), pod) of a node name `<pool>.<namespace>@<pod>`; None for a node
    name the operator did not render (a worker started by hand)."""
    name, sep, pod = node.partition("@")
    pool, dot, namespace = name.rpartition(".")
    if not (sep and dot and pool and namespace and pod):
        return None
    return (namespace, pool), pod


@dataclass(frozen=True)
class Heartbeat:
    """The last heartbeat of one worker, as the monitor keeps it."""

    active: int
    freq: float
    age: float  # seconds since it arrived (the operator's clock, not the worker's)
    idle_for: float | None = None  # seconds since it last ran a task (None: it runs some)

    @property
    def fresh(self) -> bool:
        return self.age <= EXPIRY_INTERVALS * max(self.freq, 0.5) + EXPIRY_GRACE


def load_of(beat: Heartbeat | None, pod_age: float) -> Load:
    if beat is None:
        return "starting" if pod_age < STARTUP_SECONDS else "unknown"
    if not beat.fresh:
        return "unknown"
    if beat.active > 0 or (beat.idle_for is not None and beat.idle_for < IDLE_SETTLE):
        return "busy"
    return "idle"


@dataclass(frozen=True)
class PoolHeartbeats:
    """What the operator hears of one pool's workers."""

    # The broker is read: heartbeats would arrive. False during an outage (then `error`
    # says why) and while the first heartbeats may still be on their way after connecting.
    known: bool
    error: str = ""
    supported: bool = True  # False: this broker carries no events (Amazon SQS)
    beats: Mapping[str, Heartbeat] | None = None  # by pod name

    def beat(self, pod: str) -> Heartbeat | None:
        return (self.beats or {}).get(pod)


@dataclass(frozen=True)
class MonitorTarget:
    """Which broker a pool's workers use, as the pool's plan names it."""

    url: str = field(repr=False)
    url_id: str = field(repr=False)  # the URL and the options: one monitor each
    redacted: str = ""
    transport_options: tuple[tuple[str, Any], ...] = ()
    supported: bool = True  # the broker carries worker events (not SQS)
