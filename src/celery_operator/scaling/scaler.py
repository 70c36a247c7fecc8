"""The built-in queue-length scaler, and the queue lengths of every pool.

Pools with `autoscaling.queueLength.engine: builtin` are tracked by their reconcile; the
scaler polls each one's broker every pollingIntervalSeconds (its work grows with those
pools only, never with the cluster), decides with `decision.decide`, and hands the result
to the pool's reconcile, which applies it as the worker Deployment's replicas: one writer
of the Deployment. When the broker cannot be read, replicas stay as they are and the pool
says so (ScalingActive=False, BrokerUnreachable).

Other pools are tracked for their metrics only (a Target without a policy, polled every
`--celery-metrics-interval`): measured, never scaled, never a status write.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import heapq
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import Counter, Histogram

from celery_operator.brokerurl import BrokerURL
from celery_operator.scaling.decision import History, Policy, decide, total_waiting
from celery_operator.scaling.probes import BrokerUnreachableError, Probe

log = logging.getLogger("celery_operator.scaler")

Key = tuple[str, str]

POLLS = Counter(
    "celery_operator_scaler_polls_total", "Broker polls by the built-in scaler", ["result"]
)
POLL_SECONDS = Histogram(
    "celery_operator_scaler_poll_seconds",
    "Time of one queue-length poll",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5),
)

# A new queue length alone is written to the pool's status at most this often.
STATUS_EVERY = 15.0
# A broker found unreachable is not tried again for this long (or the pool's polling
# interval, if shorter) by any pool: they report the same error meanwhile.
UNREACHABLE_HOLD = 5.0


@dataclass(frozen=True)
class Target:
    key: Key
    broker: BrokerURL
    url_id: str  # identifies the broker connection (the URL itself; never logged)
    queues: tuple[str, ...]
    policy: Policy | None  # None: measured for the metrics, never scaled
    interval: float


@dataclass
class State:
    target: Target
    replicas: int
    history: History
    queue_length: int | None = None
    active_tasks: int | None = None
    last_scale_time: str | None = None
    error: str | None = None
    notified_at: float = 0.0
    reported: tuple[int, int | None] | None = None  # (waiting, running) the pool last heard
    polling: bool = False
    generation: int = 0  # heap entries of an older generation are stale
    lengths: tuple[int, ...] | None = None  # per queue of target.queues, at the last poll
    scaled: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})


@dataclass(frozen=True)
class Measured:
    """What the metrics show of one tracked pool (a copy: read by the metrics thread)."""

    key: Key
    queues: tuple[str, ...]
    lengths: tuple[int, ...] | None  # None: never read (yet)
    broker_up: bool | None  # None: not polled yet
    scaled: tuple[tuple[str, int], ...]  # (direction, count) of the built-in engine
    scaling: bool  # the built-in engine scales it (False: measured only)


def _no_probe(target: Target) -> Probe:
    raise BrokerUnreachableError("no broker probe configured")


@dataclass
class BuiltinScaler:
    on_change: Callable[[Key], None]
    # The Probe of a target's broker (the operator: its broker monitors, by url_id).
    probe_for: Callable[[Target], Probe] = _no_probe
    # Tasks a pool's workers run (their heartbeats); None: not known, then the pool is
    # never scaled in (busy workers are not seen).
    active_of: Callable[[Key], int | None] = lambda key: 0
    workers: int = 4
    clock: Callable[[], float] = time.monotonic
    _states: dict[Key, State] = field(default_factory=dict)
    _probes: dict[str, Probe] = field(default_factory=dict)
    # Brokers found unreachable: url_id -> (until when, the error). Every pool of that
    # broker reports the error until then without connecting again: with two thousand pools
    # on one broker that is down, one connection attempt per UNREACHABLE_HOLD, not dozens
    # a second.
    _down: dict[str, tuple[float, str]] = field(default_factory=dict)
    _heap: list[tuple[float, int, Key]] = field(default_factory=list)
    _generation: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _wake: threading.Condition = field(init=False)
    _stop: threading.Event = field(default_factory=threading.Event)
    _executor: concurrent.futures.ThreadPoolExecutor | None = None
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._wake = threading.Condition(self._lock)

    # ---- what reconciles call ------------------------------------------------------
    def track(self, target: Target, current: int) -> None:
        """Starts (or updates) polling a pool. The first time, the history is seeded with
        the current replicas, so a restart never scales down before a full cooldown."""
        with self._wake:
            state = self._states.get(target.key)
            if state is None:
                now = self.clock()
                self._generation += 1
                gen = self._generation
                self._states[target.key] = State(
                    target, current, History(((now, current),)), generation=gen
                )
                heapq.heappush(self._heap, (now, gen, target.key))
                self._wake.notify()
            elif state.target != target:
                if state.target.url_id != target.url_id:
                    state.error = None
                if state.target.policy is None and target.policy is not None:
                    # Measured only until now: the replicas are whatever another engine
                    # or the spec set, not ours. Start from them, with a fresh history.
                    now = self.clock()
                    state.replicas = current
                    state.history = History(((now, current),))
                    state.last_scale_time = None
                if state.target.queues != target.queues:
                    state.lengths = None
                state.target = target

    def untrack(self, key: Key) -> None:
        with self._lock:
            self._states.pop(key, None)

    def measured(self) -> list[Measured]:
        """Every tracked pool's queues, broker and decisions, for the metrics."""
        with self._lock:
            return [
                Measured(
                    key=key,
                    queues=s.target.queues,
                    lengths=s.lengths,
                    broker_up=None if s.lengths is None and s.error is None else s.error is None,
                    scaled=tuple(sorted(s.scaled.items())),
                    scaling=s.target.policy is not None,
                )
                for key, s in self._states.items()
            ]

    def replicas(self, key: Key) -> int | None:
        with self._lock:
            s = self._states.get(key)
            return None if s is None or s.target.policy is None else s.replicas

    def status(self, key: Key) -> dict[str, object] | None:
        """status.autoscaler fields and the broker error, if any (None: not scaled by it)."""
        with self._lock:
            s = self._states.get(key)
            if s is None or s.target.policy is None:
                return None
            return {
                "desiredReplicas": s.replicas,
                "queueLength": s.queue_length,
                "activeTasks": s.active_tasks,
                "lastScaleTime": s.last_scale_time,
                "error": s.error,
            }

    # ---- the loop ------------------------------------------------------------------
    def start(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            self.workers, thread_name_prefix="scaler"
        )
        self._thread = threading.Thread(target=self._loop, name="scaler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        for probe in list(self._probes.values()):
            probe.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._wake:
                if not self._heap:
                    self._wake.wait(timeout=1.0)
                    continue
                due, gen, key = self._heap[0]
                delay = due - self.clock()
                if delay > 0:
                    self._wake.wait(timeout=min(delay, 1.0))
                    continue
                heapq.heappop(self._heap)
                state = self._states.get(key)
                if state is None or state.generation != gen:
                    continue  # untracked (and maybe tracked again, with its own entry)
                heapq.heappush(
                    self._heap, (max(due + state.target.interval, self.clock()), gen, key)
                )
                if state.polling or self._stop.is_set():
                    continue  # the previous poll is still running: skip a beat
                state.polling = True
            assert self._executor is not None
            try:
                self._executor.submit(self.poll, key)
            except RuntimeError:  # shut down by stop() meanwhile
                return

    def poll(self, key: Key) -> None:
        """One poll of one pool (also called directly by tests and the benchmark)."""
        with self._lock:
            state = self._states.get(key)
            if state is None:
                return
            target = state.target
        started = time.perf_counter()
        error: str | None = None
        lengths: list[int] = []
        active: int | None = None
        with self._lock:
            down = self._down.get(target.url_id)
            if down is not None and down[0] <= self.clock():
                down = None
        try:
            if down is not None:
                raise BrokerUnreachableError(down[1])
            probe = self._probe(target)
            lengths = probe.queue_lengths(target.queues)
            if target.policy is not None:
                active = self.active_of(key)
            POLLS.labels("ok").inc()
            with self._lock:
                self._down.pop(target.url_id, None)
        except BrokerUnreachableError as e:
            error = str(e)
            POLLS.labels("unreachable").inc()
            if down is None:
                self._drop_probe(target.url_id)
                hold = min(target.interval, UNREACHABLE_HOLD)
                with self._lock:
                    self._down[target.url_id] = (self.clock() + hold, error)
        except Exception as e:  # never stop polling a pool over one surprise
            error = f"{target.broker.redacted()}: {type(e).__name__}"
            POLLS.labels("error").inc()
            self._drop_probe(target.url_id)
        finally:
            POLL_SECONDS.observe(time.perf_counter() - started)
            with self._lock:
                if (st := self._states.get(key)) is not None:
                    st.polling = False
        notify = False
        with self._lock:
            state = self._states.get(key)
            if state is None or self._stop.is_set():
                return
            now = self.clock()
            policy = state.target.policy
            # The last read, or none while the broker cannot be read (not a stale figure).
            state.lengths = tuple(lengths) if error is None else None
            if policy is None:  # measured only: the metrics read it; no decision, no status
                if error is not None and state.error != error:
                    log.warning("pool %s/%s: cannot read its queues: %s", *key, error)
                state.error = error
                return
            if error is not None:
                if state.error != error:
                    log.warning("pool %s/%s: %s; replicas stay at %d", *key, error, state.replicas)
                    notify = True
                state.error = error
            else:
                waiting = total_waiting(lengths)
                # The whole load: tasks waiting and tasks running. Waiting alone would
                # scale in while every worker is busy and nothing queues behind them.
                desired, state.history = decide(
                    waiting + (active or 0), state.replicas, policy, state.history, now
                )
                if active is None and desired < state.replicas:
                    desired = state.replicas  # who is busy is not known: never scale in
                if desired != state.replicas:
                    state.scaled["up" if desired > state.replicas else "down"] += 1
                    log.info(
                        "pool %s/%s: %d waiting, %s running -> %d replicas (was %d)",
                        *key,
                        waiting,
                        "?" if active is None else active,
                        desired,
                        state.replicas,
                    )
                    state.replicas = desired
                    state.last_scale_time = (
                        dt.datetime.now(dt.UTC)
                        .replace(microsecond=0)
                        .isoformat()
                        .replace("+00:00", "Z")
                    )
                    notify = True
                if state.error is not None:
                    state.error = None
                    notify = True
                # Compared with what the pool last heard, not with the last poll: a change
                # within STATUS_EVERY of the previous report is reported once that passed.
                moved = (waiting, active) != state.reported
                if moved and now - state.notified_at >= STATUS_EVERY:
                    notify = True
                state.queue_length = waiting
                state.active_tasks = active
            if notify:
                state.notified_at = now
                state.reported = (state.queue_length or 0, state.active_tasks)
        if notify:
            self.on_change(key)

    def _probe(self, target: Target) -> Probe:
        with self._lock:
            probe = self._probes.get(target.url_id)
        if probe is None:
            probe = self.probe_for(target)
            with self._lock:
                probe = self._probes.setdefault(target.url_id, probe)
        return probe

    def _drop_probe(self, url_id: str) -> None:
        with self._lock:
            probe = self._probes.pop(url_id, None)
        if probe is not None:
            probe.close()
