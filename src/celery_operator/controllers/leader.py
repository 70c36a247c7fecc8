"""Leader election on a coordination.k8s.io Lease, as client-go's leaderelection does it.

Several operator replicas run; one holds the Lease and reconciles and scales; the others
wait, serving health and metrics. kopf has no such thing (its peering freezes replicas of
equal priority and fails over in about a minute).

- A candidate takes the Lease when it does not exist, is released (no holder), or has not
  changed for `lease_duration` as this candidate observed it (its own clock, never the
  holder's renewTime: clocks differ between nodes).
- The leader renews every `retry_period`; when it could not renew for `renew_deadline`
  (less than the lease duration, so before anyone may take over) it exits at once.
- Every write of the process passes `guard` first (k8s.client.write_guard): a leader whose
  last renewal is older than the renew deadline (stopped, starved, partitioned: SIGCONT
  after SIGSTOP) exits before the write; so does a renewal that finds itself past the
  deadline after its look at the Lease. Two leaders never write, but for one window no
  check can close: a write that passed the guard (its request already built) when the
  process was stopped goes out when it resumes, before the next check exits it.
- On a clean shutdown the leader releases the Lease: a standby takes over at once.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge

from celery_operator.k8s import client

log = logging.getLogger("celery_operator.leader")

LEASE_API = "coordination.k8s.io/v1"
IS_LEADER = Gauge(
    "celery_operator_leader", "1 while this replica holds the leader Lease", ["identity"]
)
TRANSITIONS = Counter(
    "celery_operator_leader_acquisitions_total", "Times this replica took the leader Lease"
)


@dataclass(frozen=True)
class ElectionConfig:
    namespace: str
    name: str = "celery-operator"
    identity: str = ""
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "leader election needs retry period < renew deadline < lease duration, got "
                f"{self.retry_period}s, {self.renew_deadline}s, {self.lease_duration}s"
            )


def micro_time(at: float) -> str:
    """A MicroTime, as Lease.spec.renewTime holds it."""
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---- the decision (pure) -------------------------------------------------------------
@dataclass(frozen=True)
class Observed:
    """A Lease's record as this candidate last saw it change, and when (monotonic)."""

    record: tuple[Any, ...]
    at: float


def record_of(lease: Mapping[str, Any]) -> tuple[Any, ...]:
    spec = lease.get("spec") or {}
    return (
        spec.get("holderIdentity") or "",
        spec.get("renewTime"),
        spec.get("acquireTime"),
        spec.get("leaseDurationSeconds"),
        spec.get("leaseTransitions"),
    )


def may_take(
    lease: Mapping[str, Any], me: str, observed: Observed | None, now: float, duration: float
) -> tuple[bool, Observed]:
    """Whether `me` may write the Lease now (renew it, or take it over), and what is
    observed of it after this look."""
    record = record_of(lease)
    if observed is None or observed.record != record:
        observed = Observed(record, now)
    holder = record[0]
    if not holder or holder == me:
        return True, observed
    return now - observed.at >= duration, observed


def taken(lease: Mapping[str, Any], me: str, wall: float, duration: float) -> dict[str, Any]:
    """The Lease with `me` as holder, renewed at `wall` (acquired now if it was not ours)."""
    spec = dict(lease.get("spec") or {})
    if spec.get("holderIdentity") != me:
        spec["acquireTime"] = micro_time(wall)
        spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (
            1 if spec.get("holderIdentity") else 0
        )
    spec.update(
        holderIdentity=me, leaseDurationSeconds=max(1, round(duration)), renewTime=micro_time(wall)
    )
    return {**lease, "spec": spec}


# ---- the loop ------------------------------------------------------------------------
class LeaderElector:
    def __init__(
        self,
        config: ElectionConfig,
        *,
        on_lost: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.me = config.identity
        self.on_lost = on_lost or _exit
        self.clock = clock
        self._observed: Observed | None = None
        self._renewed_at: float | None = None  # monotonic time of the last renewal
        self._leading = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.holder = ""  # who leads, as last seen
        IS_LEADER.labels(self.me).set(0)

    @property
    def leading(self) -> bool:
        return self._leading.is_set()

    # ---- standby -----------------------------------------------------------------
    def acquire(self) -> None:
        """Blocks until this replica holds the Lease."""
        c = self.config
        log.info("waiting to lead: lease %s/%s as %s", c.namespace, c.name, self.me)
        while not self._stop.is_set():
            if self._try():
                self._leading.set()
                IS_LEADER.labels(self.me).set(1)
                TRANSITIONS.inc()
                log.info("leading: lease %s/%s acquired as %s", c.namespace, c.name, self.me)
                return
            self._stop.wait(c.retry_period)
        raise RuntimeError("stopped before leading")

    def _try(self) -> bool:
        """One look at the Lease: create, renew or take it. False: someone else holds it
        (or the apiserver did not answer, or another candidate wrote first)."""
        c = self.config
        renewing = self.leading
        try:
            lease = client.get_object(LEASE_API, "Lease", c.name, c.namespace)
            now, wall = self.clock(), time.time()
            if lease is None:
                new = taken(
                    {
                        "apiVersion": LEASE_API,
                        "kind": "Lease",
                        "metadata": {"name": c.name, "namespace": c.namespace},
                    },
                    self.me,
                    wall,
                    c.lease_duration,
                )
                lease = client.create_object(new, fenced=False)
            else:
                ok, self._observed = may_take(lease, self.me, self._observed, now, c.lease_duration)
                self._note_holder(str(record_of(lease)[0]))
                if not ok:
                    return False
                renewed = taken(lease, self.me, wall, c.lease_duration)
                # A renewal is a write too: a leader stopped between its look at the Lease
                # and this write is past its deadline when it resumes, and must not write.
                if renewing and (why := self._past_deadline()) is not None:
                    self.on_lost(why)
                    return False
                lease = client.replace_object(renewed, fenced=False)
        except client.ApiError as e:
            if not e.conflict:
                log.warning("lease %s/%s: %s", c.namespace, c.name, e)
            return False
        self._observed = Observed(record_of(lease), now)
        self._renewed_at = now
        self._note_holder(self.me)
        return True

    def _note_holder(self, holder: str) -> None:
        if holder != self.holder:
            self.holder = holder
            if holder and holder != self.me:
                log.info("the leader is %s", holder)

    # ---- leader ------------------------------------------------------------------
    def start_renewing(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, name="lease", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        c = self.config
        while not self._stop.wait(c.retry_period):
            if self._stop.is_set():
                return
            self.guard()  # past the deadline (this process was stopped): out, at once
            if not self._try():
                log.warning("could not renew the lease %s/%s", c.namespace, c.name)
            self.guard()

    def guard(self) -> None:
        """Before a write: a leader that may no longer hold the Lease never writes."""
        if (why := self._past_deadline()) is not None:
            self.on_lost(why)

    def _past_deadline(self) -> str | None:
        """Why this process may no longer write (None: it leads, renewed in time)."""
        renewed = self._renewed_at
        if renewed is None or not self.leading:
            return "not the leader"
        late = self.clock() - renewed
        return f"lease not renewed for {late:.1f}s" if late >= self.config.renew_deadline else None

    def release(self) -> None:
        """On a clean shutdown: give the Lease up, so a standby leads at once."""
        self._stop.set()
        if not self.leading:
            return
        c = self.config
        try:
            lease = client.get_object(LEASE_API, "Lease", c.name, c.namespace)
            if lease is not None and record_of(lease)[0] == self.me:
                spec = {
                    **lease["spec"],
                    "holderIdentity": "",
                    "leaseDurationSeconds": 1,
                    "renewTime": micro_time(time.time()),
                }
                client.replace_object({**lease, "spec": spec}, fenced=False)
                log.info("released the lease %s/%s", c.namespace, c.name)
        except client.ApiError as e:
            log.warning("could not release the lease %s/%s: %s", c.namespace, c.name, e)
        self._leading.clear()
        IS_LEADER.labels(self.me).set(0)

    def stop(self) -> None:
        self._stop.set()


def _exit(why: str) -> None:
    """Lost the lead: stop now, before any other write (controller-runtime exits too);
    the pod restarts as a standby."""
    log.critical("lost the leader lease (%s): exiting", why)
    logging.shutdown()
    os._exit(1)
