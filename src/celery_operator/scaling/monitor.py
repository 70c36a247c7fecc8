"""One broker connection per broker for everything the operator asks of it: the workers'
heartbeats (pushed to it), queue sizes (asked by the built-in scaler) and remote control
(draining a worker before its pod goes).

A monitor is a thread with one kombu Connection, made with the app's transport options
(`spec.broker.transportOptions`), so kombu's own transport code finds the queues and the
event channel where the app's Celery puts them (key prefixes, priority steps). The thread
consumes the `worker.*` events of Celery's event exchange, and between two short waits for
events serves what other threads asked (`_call`): kombu connections are not thread-safe,
so nothing else touches it. Pools of every app on that broker share it.

Nothing here logs a URL with its password: errors carry `redacted` only.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

from celery_operator.brokerurl import parse_broker_url
from celery_operator.scaling.probes import BrokerUnreachableError, Probe
from celery_operator.scaling.workers import (
    Heartbeat,
    Key,
    Load,
    MonitorTarget,
    PoolHeartbeats,
    load_of,
    parse_node,
)

log = logging.getLogger("celery_operator.monitor")

EVENTS = Counter(
    "celery_operator_worker_events_total", "Worker events received from brokers", ["type"]
)
# How long the thread waits for events before serving requests: the added latency of a
# queue-size poll, and the monitor's idle wake-ups (4 a second).
WAIT = 0.25
# After connecting, heartbeats of every live worker arrive within one interval (2 s by
# default): until then the operator knows nothing yet.
SETTLE = 5.0
CALL_TIMEOUT = 10.0
FORGET = 120.0


@dataclass
class _Worker:
    pool: Key
    pod: str
    active: int
    freq: float
    at: float  # monotonic time it arrived
    idle_since: float  # when it last ran a task (-inf: not since the operator hears it)
    told: Load | None = None  # its load, as its pool was last told

    def beat(self, now: float) -> Heartbeat:
        idle_for = None if self.active > 0 else now - self.idle_since
        return Heartbeat(self.active, self.freq, now - self.at, idle_for)


@dataclass(frozen=True)
class _Session:
    conn: Any  # the kombu Connection
    app: Any  # a Celery app for remote control through it
    # A virtual transport (Redis): its channels keep no state on the server, and a command
    # the server refuses (WRONGTYPE, ...) leaves the connection as it was.
    virtual: bool = False


@dataclass
class BrokerMonitor:
    url: str
    redacted: str
    transport_options: Mapping[str, Any]
    on_change: Callable[[Key], None]
    clock: Callable[[], float] = time.monotonic
    _workers: dict[str, _Worker] = field(default_factory=dict)  # by node name
    _pools: set[Key] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _requests: queue.SimpleQueue[
        tuple[Callable[[_Session], Any], concurrent.futures.Future[Any]]
    ] = field(default_factory=queue.SimpleQueue)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _connected_at: float | None = None
    _error: str = "connecting"
    _changed: set[Key] = field(default_factory=set)
    _tried: threading.Event = field(default_factory=threading.Event)  # a first attempt ended

    # ---- what other threads call -----------------------------------------------------------
    def start(self) -> BrokerMonitor:
        self._thread = threading.Thread(target=self._run, name="broker-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def watch(self, key: Key) -> None:
        with self._lock:
            self._pools.add(key)

    def unwatch(self, key: Key) -> bool:
        """Forgets a pool; True when no pool is left (the monitor may stop)."""
        with self._lock:
            self._pools.discard(key)
            return not self._pools

    def heartbeats(self, key: Key) -> PoolHeartbeats:
        now = self.clock()
        with self._lock:
            if self._connected_at is None:
                return PoolHeartbeats(known=False, error=self._error)
            beats = {w.pod: w.beat(now) for w in self._workers.values() if w.pool == key}
            settled = now - self._connected_at >= SETTLE
        return PoolHeartbeats(known=settled, error="" if settled else "waiting", beats=beats)

    def heartbeats_by_pool(self) -> dict[Key, PoolHeartbeats]:
        """heartbeats() of every pool it listens for, in one pass over its workers."""
        now = self.clock()
        with self._lock:
            pools = set(self._pools)
            if self._connected_at is None:
                return {k: PoolHeartbeats(known=False, error=self._error) for k in pools}
            beats: dict[Key, dict[str, Heartbeat]] = {k: {} for k in pools}
            for w in self._workers.values():
                if w.pool in beats:
                    beats[w.pool][w.pod] = w.beat(now)
            settled = now - self._connected_at >= SETTLE
        error = "" if settled else "waiting"
        return {k: PoolHeartbeats(known=settled, error=error, beats=b) for k, b in beats.items()}

    def queue_lengths(self, queues: Sequence[str]) -> list[int]:
        """Messages waiting in each queue (the Probe of the built-in scaler)."""
        return list(self._call(lambda s: _sizes(s.conn, queues)))

    def close(self) -> None:
        self.stop()

    def cancel_consumer(self, queues: Sequence[str], nodes: Sequence[str]) -> None:
        """Tells the workers to stop consuming the queues (their running tasks go on)."""
        self._call(lambda s: _control(s, "cancel_consumer", queues, nodes))

    def add_consumer(self, queues: Sequence[str], nodes: Sequence[str]) -> None:
        """Tells the workers to consume the queues again (a drain abandoned)."""
        self._call(lambda s: _control(s, "add_consumer", queues, nodes))

    def active_tasks(self, key: Key) -> int | None:
        """Tasks the pool's workers run, as their last heartbeats say (a silent worker
        counts its last figure, at least one); None while the broker is not heard."""
        with self._lock:
            if self._connected_at is None or self.clock() - self._connected_at < SETTLE:
                return None
            now = self.clock()
            return sum(
                w.active if w.beat(now).fresh else max(w.active, 1)
                for w in self._workers.values()
                if w.pool == key
            )

    def _call(self, fn: Callable[[_Session], Any]) -> Any:
        self._tried.wait(timeout=CALL_TIMEOUT)
        with self._lock:
            if self._connected_at is None:
                raise BrokerUnreachableError(f"{self.redacted}: {self._error}")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._requests.put((fn, future))
        try:
            return future.result(timeout=CALL_TIMEOUT)
        except concurrent.futures.TimeoutError:
            raise BrokerUnreachableError(f"{self.redacted}: no answer in time") from None

    # ---- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                self._session()
            except Exception as e:  # any failure: say so, wait, connect again
                with self._lock:
                    if self._connected_at is not None:
                        backoff = 1.0  # it was connected: a new outage, not a long one
                # The type only: a driver's message may quote the URL. An import error
                # names a module, never a credential: that is what to fix in the image.
                said = f": {e}" if isinstance(e, ImportError) else ""
                self._disconnected(f"{type(e).__name__}{said}")
                self._tried.set()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
        self._stopped()

    def _stopped(self) -> None:
        """Stopped: callers hear it at once, rather than waiting for an answer in vain."""
        with self._lock:
            self._connected_at = None
            self._error = "stopped"
        self._fail_requests("stopped")

    def _session(self) -> None:
        from celery import Celery
        from celery.events.receiver import EventReceiver
        from kombu.connection import Connection

        opts = dict(self.transport_options)
        with Connection(  # type: ignore[no-untyped-call]
            self.url, transport_options=opts, connect_timeout=5
        ) as conn:
            conn.ensure_connection(max_retries=1, timeout=5)
            app = Celery("celery-operator", set_as_current=False)
            app.conf.broker_transport_options = opts
            # Celery's remote control publishes through the app's producer pool, which
            # connects to the app's broker_url: unset here, so amqp://localhost. Without
            # a pool it publishes on the channel it is given: this connection's.
            app.control.mailbox.producer_pool = None
            receiver = EventReceiver(
                conn,
                app=app,
                routing_key="worker.#",
                node_id=f"celery-operator.{uuid.uuid4().hex[:12]}",
                accept=["json"],
            )
            with conn.Consumer(
                [receiver.queue], callbacks=[self._on_message], no_ack=True, accept=["json"]
            ):
                self._connected()
                session = _Session(conn, app, virtual=hasattr(conn.default_channel, "_size"))
                while not self._stop.is_set():
                    with contextlib.suppress(socket.timeout, TimeoutError):
                        conn.drain_events(timeout=WAIT)
                    self._serve(session)
                    self._sweep()

    def _serve(self, session: _Session) -> None:
        while True:
            try:
                fn, future = self._requests.get_nowait()
            except queue.Empty:
                return
            try:
                future.set_result(fn(session))
            except Exception as e:
                future.set_exception(BrokerUnreachableError(f"{self.redacted}: {type(e).__name__}"))
                # A command Redis refused (a queue's key holding no list): that caller
                # hears it, and the connection goes on. Anything else may have broken the
                # connection, or on RabbitMQ closed the channel the events arrive on: the
                # session ends, and a new one starts.
                if not (session.virtual and isinstance(e, tuple(session.conn.channel_errors))):
                    raise

    def _on_message(self, body: Any, message: Any) -> None:
        for event in body if isinstance(body, list) else [body]:
            if isinstance(event, dict):
                self._on_event(event)

    def _on_event(self, event: Mapping[str, Any]) -> None:
        kind = str(event.get("type", ""))
        EVENTS.labels(kind).inc()
        node = str(event.get("hostname", ""))
        where = parse_node(node)
        if where is None:
            return
        pool, pod = where
        now = self.clock()
        with self._lock:
            old = self._workers.get(node)
            if kind == "worker-offline":
                if self._workers.pop(node, None) is not None:
                    self._changed.add(pool)
                return
            if kind not in ("worker-heartbeat", "worker-online"):
                return
            active = int(event.get("active") or 0)
            idle_since = float("-inf") if old is None else old.idle_since
            if active > 0:
                idle_since = now
            w = _Worker(pool, pod, active, float(event.get("freq") or 2.0), now, idle_since)
            w.told = None if old is None else old.told
            self._workers[node] = w

    def _sweep(self) -> None:
        """Pools whose workers' load changed (idle, busy, silent) are told, once a change."""
        now = self.clock()
        with self._lock:
            for node, w in list(self._workers.items()):
                load = load_of(w.beat(now), pod_age=0.0)
                if load != w.told:
                    w.told = load
                    self._changed.add(w.pool)
                # Silent for long (its pod deleted without a goodbye): forget it. Its pod,
                # if it still exists, is unknown to the plan (no heartbeat), never idle.
                if now - w.at > FORGET:
                    del self._workers[node]
            changed = self._changed & self._pools
            self._changed = set()
        for key in sorted(changed):
            self.on_change(key)

    def _connected(self) -> None:
        with self._lock:
            self._connected_at = self.clock()
            self._error = ""
            pools = set(self._pools)
        self._tried.set()
        log.info("listening to worker heartbeats on %s", self.redacted)
        for key in sorted(pools):
            self.on_change(key)
        # Tell again once the first heartbeats had time to arrive.
        timer = threading.Timer(SETTLE + 0.5, self._tell_all)
        timer.daemon = True  # never holds up the process's exit
        timer.start()

    def _tell_all(self) -> None:
        if self._stop.is_set():
            return
        with self._lock:
            pools = set(self._pools)
        for key in sorted(pools):
            self.on_change(key)

    def _disconnected(self, error: str) -> None:
        with self._lock:
            was = self._connected_at is not None or self._error != error
            self._connected_at = None
            self._error = error
            pools = set(self._pools)
        self._fail_requests(error)
        if was:
            log.warning("cannot read worker heartbeats on %s: %s", self.redacted, error)
            for key in sorted(pools):
                self.on_change(key)

    def _fail_requests(self, error: str) -> None:
        while True:  # callers waiting on this connection hear it now
            try:
                _, future = self._requests.get_nowait()
            except queue.Empty:
                break
            future.set_exception(BrokerUnreachableError(f"{self.redacted}: {error}"))


def _sizes(conn: Any, queues: Sequence[str]) -> list[int]:
    """Queue sizes through kombu's own transport code: a virtual transport's `_size` (Redis:
    the LLEN of every priority list, with the key prefix), else a passive queue.declare
    (RabbitMQ: its message_count, the messages ready)."""
    from kombu.exceptions import ChannelError

    default = conn.default_channel
    if hasattr(default, "_size"):
        # The consumer's own channel: its connection pool serves every poll. A channel of
        # their own would open (and close) connections of its own at each poll.
        return [int(default._size(q)) for q in queues]
    # RabbitMQ closes a channel at a passive declare of a missing queue: never the one the
    # events arrive on.
    out: list[int] = []
    channel = conn.channel()
    try:
        for q in queues:
            try:
                out.append(int(channel.queue_declare(queue=q, passive=True).message_count))
            except ChannelError:
                out.append(0)  # not declared yet: no task was ever sent to it
                with contextlib.suppress(Exception):
                    channel.close()
                channel = conn.channel()  # the broker closed that channel
    finally:
        with contextlib.suppress(Exception):
            channel.close()
    return out


def _control(session: _Session, command: str, queues: Sequence[str], nodes: Sequence[str]) -> None:
    """A remote-control command to the named workers only, for each queue; no reply."""
    for q in queues:
        session.app.control.broadcast(
            command,
            arguments={"queue": q},
            destination=list(nodes),
            connection=session.conn,
            reply=False,
        )


class _Shared:
    """A monitor as the scaler's Probe: closing it leaves the monitor to its registry."""

    def __init__(self, monitor: BrokerMonitor) -> None:
        self.monitor = monitor

    def queue_lengths(self, queues: Sequence[str]) -> list[int]:
        return self.monitor.queue_lengths(queues)

    def close(self) -> None:
        pass


def probe_for(url: str, transport_options: Mapping[str, Any] | None = None) -> BrokerMonitor:
    """A monitor of its own for one broker (tests, benchmarks); close() stops it."""
    redacted = parse_broker_url(url).redacted()
    return BrokerMonitor(url, redacted, dict(transport_options or {}), lambda key: None).start()


class Monitors:
    """The monitors, one per broker, started for the pools that need one."""

    def __init__(self, on_change: Callable[[Key], None]) -> None:
        self.on_change = on_change
        self._monitors: dict[str, BrokerMonitor] = {}
        self._of_pool: dict[Key, str] = {}
        self._unsupported: dict[Key, str] = {}
        self._quiet: set[Key] = set()  # listened to for the metrics only
        self._lock = threading.Lock()

    def _notify(self, key: Key) -> None:
        if key not in self._quiet:
            self.on_change(key)

    def watch(self, key: Key, target: MonitorTarget, quiet: bool = False) -> None:
        with self._lock:
            if quiet:
                self._quiet.add(key)
            else:
                self._quiet.discard(key)
            if not target.supported:
                self._unsupported[key] = target.redacted
                self._drop(key)
                return
            self._unsupported.pop(key, None)
            if self._of_pool.get(key) == target.url_id:
                return
            self._drop(key)
            monitor = self._monitors.get(target.url_id)
            if monitor is None:
                monitor = BrokerMonitor(
                    target.url, target.redacted, dict(target.transport_options), self._notify
                ).start()
                self._monitors[target.url_id] = monitor
            monitor.watch(key)
            self._of_pool[key] = target.url_id

    def unwatch(self, key: Key) -> None:
        with self._lock:
            self._unsupported.pop(key, None)
            self._quiet.discard(key)
            self._drop(key)

    def all_heartbeats(self) -> dict[Key, PoolHeartbeats]:
        """What is heard of every pool listened for (the metrics read it at each scrape)."""
        with self._lock:
            monitors = list(self._monitors.values())
        out: dict[Key, PoolHeartbeats] = {}
        for m in monitors:
            out.update(m.heartbeats_by_pool())
        return out

    def _drop(self, key: Key) -> None:
        url_id = self._of_pool.pop(key, None)
        monitor = self._monitors.get(url_id or "")
        if monitor is not None and monitor.unwatch(key):
            del self._monitors[url_id or ""]
            threading.Thread(target=monitor.stop, daemon=True).start()

    def heartbeats(self, key: Key) -> PoolHeartbeats | None:
        """None: the pool is not watched (yet)."""
        with self._lock:
            if key in self._unsupported:
                return PoolHeartbeats(
                    known=False, supported=False, error="this broker carries no worker events"
                )
            monitor = self._monitors.get(self._of_pool.get(key, ""))
        return None if monitor is None else monitor.heartbeats(key)

    def monitor(self, key: Key) -> BrokerMonitor | None:
        with self._lock:
            return self._monitors.get(self._of_pool.get(key, ""))

    def probe(self, url_id: str) -> Probe:
        """The scaler's Probe for a broker: the monitor its pools' plans asked for."""
        with self._lock:
            monitor = self._monitors.get(url_id)
        if monitor is None:
            raise BrokerUnreachableError("not listening to this broker (yet)")
        return _Shared(monitor)

    def active_tasks(self, key: Key) -> int | None:
        monitor = self.monitor(key)
        return None if monitor is None else monitor.active_tasks(key)

    def stop(self) -> None:
        with self._lock:
            monitors = list(self._monitors.values())
            self._monitors.clear()
            self._of_pool.clear()
        for m in monitors:
            m.stop()
