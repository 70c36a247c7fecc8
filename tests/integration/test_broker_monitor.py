"""The broker monitors against real brokers and real Celery workers.

A private Redis (with a password) and a private RabbitMQ node run on 127.0.0.1 (see
tests/support/brokers.py). The workers are real `celery worker` processes from the
repository's virtualenv, running `tests.integration.monitorapp` with the node names the
operator renders (`--hostname=<pool>.<namespace>@<pod>`), without mingle and gossip but
with their heartbeats. Every process a test starts is killed at its end, failed or not.

The monitors are used as the operator uses them: through a `Monitors` registry, whose
`on_change` calls are recorded with what the pool's heartbeats said at that moment.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from celery import Celery

from celery_operator.brokerurl import parse_broker_url
from celery_operator.scaling.monitor import SETTLE, BrokerMonitor, Monitors, probe_for
from celery_operator.scaling.probes import BrokerUnreachableError
from celery_operator.scaling.workers import (
    EXPIRY_GRACE,
    EXPIRY_INTERVALS,
    Heartbeat,
    Key,
    Load,
    MonitorTarget,
    PoolHeartbeats,
    load_of,
)
from tests.fidelity.support import LocalContainer, LocalProcess, wait_for
from tests.integration import monitorapp
from tests.support.brokers import RabbitMQServer, RedisServer

pytestmark = pytest.mark.broker

REDIS_PASSWORD = "m0n:/@#?%pw"  # characters that must be URL-encoded
RABBIT_PASSWORD = f"rmq-{secrets.token_hex(8)}"
# Celery's default heartbeat interval (worker_heartbeat is not set by monitorapp).
FREQ = 2.0
# A heartbeat older than this is stale (workers.py): the worker's load is unknown.
EXPIRY = EXPIRY_INTERVALS * FREQ + EXPIRY_GRACE
KNOWN = SETTLE + 15.0  # until a new monitor knows its pools' workers
WORKER_START = 60.0  # until a new worker's first heartbeat has arrived
RECONNECT = 90.0  # until a monitor (and the workers) are back after a broker restart
SHOP_OPTIONS: Mapping[str, Any] = {"global_keyprefix": "shop:", "priority_steps": [0, 5, 9]}


def new_name(prefix: str = "q") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def new_key() -> Key:
    """(namespace, pool) of a pool no other test uses."""
    return new_name("team"), new_name("pool")


def target(url: str, options: Mapping[str, Any] | None = None) -> MonitorTarget:
    """A pool's MonitorTarget as its plan makes it: one url_id per URL and options."""
    opts = dict(options or {})
    frozen = sorted((k, json.dumps(v, sort_keys=True)) for k, v in opts.items())
    return MonitorTarget(
        url=url,
        url_id=hashlib.sha256(json.dumps([url, frozen]).encode()).hexdigest()[:24],
        redacted=parse_broker_url(url).redacted(),
        transport_options=tuple(sorted(opts.items())),
    )


def observe(seconds: float, check: Callable[[], None], every: float = 0.2) -> None:
    """Runs `check` (assertions) again and again for `seconds`: what must stay true."""
    until = time.monotonic() + seconds
    while True:
        check()
        if time.monotonic() >= until:
            return
        time.sleep(every)


def assert_no_password(text: str, password: str) -> None:
    for form in (password, quote(password, safe=""), quote(password)):
        assert form not in text, text


def collapse(loads: Sequence[Load]) -> list[Load]:
    """The loads without consecutive repeats: the transitions."""
    out: list[Load] = []
    for load in loads:
        if not out or out[-1] != load:
            out.append(load)
    return out


# -- brokers -----------------------------------------------------------------------------


@dataclass
class Broker:
    kind: str
    server: RedisServer | RabbitMQServer
    password: str

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer(password=REDIS_PASSWORD) as server:
        yield server


@pytest.fixture(scope="module")
def rabbitmq_server() -> Iterator[RabbitMQServer]:
    with RabbitMQServer(password=RABBIT_PASSWORD) as server:
        yield server


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Broker:
    if request.param == "redis":
        return Broker("redis", request.getfixturevalue("redis_server"), REDIS_PASSWORD)
    return Broker("rabbitmq", request.getfixturevalue("rabbitmq_server"), RABBIT_PASSWORD)


@pytest.fixture
def redis_broker(redis_server: RedisServer) -> Broker:
    return Broker("redis", redis_server, REDIS_PASSWORD)


@contextlib.contextmanager
def client_app(url: str, options: Mapping[str, Any] | None = None) -> Iterator[Celery]:
    """A Celery app that sends tasks as the app's clients do (same transport options)."""
    app = Celery("monitorapp-client", set_as_current=False)
    app.conf.update(broker_url=url, broker_transport_options=dict(options or {}))
    try:
        yield app
    finally:
        app.close()


# -- workers -----------------------------------------------------------------------------


@dataclass
class Worker:
    proc: LocalProcess
    node: str
    pod: str

    def log(self) -> str:
        return self.proc.log()


class Workers:
    """Starts `celery worker` processes; kills every one of them (process groups) at the
    end of the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Worker] = []

    def start(
        self,
        url: str,
        key: Key,
        queues: Sequence[str],
        options: Mapping[str, Any] | None = None,
    ) -> Worker:
        namespace, pool = key
        pod = new_name(pool)
        node = f"{pool}.{namespace}@{pod}"
        container = {
            "name": "worker",
            "command": ["celery"],
            "args": [
                "-A",
                "tests.integration.monitorapp",
                "worker",
                f"--hostname={node}",
                f"--queues={','.join(queues)}",
                "--concurrency=1",
                "--without-mingle",
                "--without-gossip",
                "--loglevel=INFO",
            ],
            "env": [
                {"name": "CELERY_BROKER_URL", "value": url},
                {"name": monitorapp.TRANSPORT_OPTIONS_ENV, "value": json.dumps(options or {})},
            ],
        }
        local = LocalContainer(container, {}, self.tmp_path / pod)
        worker = Worker(LocalProcess(local, self.tmp_path / f"{pod}.log"), node, pod)
        self.started.append(worker)
        return worker

    def kill_all(self) -> None:
        for worker in self.started:
            worker.proc.kill()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    w = Workers(tmp_path)
    try:
        yield w
    finally:
        w.kill_all()


# -- the registry, as the operator has it -------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One on_change call, with what the pool's heartbeats said when it was made."""

    at: float
    key: Key
    known: bool
    loads: Mapping[str, Load]


class Watcher:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changes: list[Change] = []
        self.monitors = Monitors(self.on_change)

    def on_change(self, key: Key) -> None:
        hb = self.monitors.heartbeats(key)
        known = hb is not None and hb.known
        beats = (hb.beats if hb is not None else None) or {}
        loads = {pod: load_of(beat, pod_age=0.0) for pod, beat in beats.items()}
        with self.lock:
            self.changes.append(Change(time.monotonic(), key, known, loads))

    def watch(self, key: Key, url: str, options: Mapping[str, Any] | None = None) -> None:
        self.monitors.watch(key, target(url, options))

    def monitor(self, key: Key) -> BrokerMonitor:
        monitor = self.monitors.monitor(key)
        assert monitor is not None, f"{key} is not watched"
        return monitor

    def heartbeats(self, key: Key) -> PoolHeartbeats:
        hb = self.monitors.heartbeats(key)
        assert hb is not None, f"{key} is not watched"
        return hb

    def beat(self, key: Key, pod: str) -> Heartbeat | None:
        return self.heartbeats(key).beat(pod)

    def load(self, key: Key, pod: str) -> Load | None:
        """The pod's load as the operator would judge it now; None: nothing known."""
        hb = self.heartbeats(key)
        beat = hb.beat(pod)
        return None if not hb.known or beat is None else load_of(beat, pod_age=0.0)

    def told(self, key: Key, pod: str, since: float = float("-inf")) -> list[Load]:
        """The pod's loads, as the pool was told them (the calls that included it)."""
        with self.lock:
            return [
                c.loads[pod]
                for c in self.changes
                if c.key == key and pod in c.loads and c.at >= since
            ]

    def wait_known(self, key: Key) -> None:
        wait_for(lambda: self.heartbeats(key).known, KNOWN, f"heartbeats of {key} known")


@pytest.fixture
def watcher() -> Iterator[Watcher]:
    w = Watcher()
    try:
        yield w
    finally:
        w.monitors.stop()


def start_idle_worker(
    watcher: Watcher,
    workers: Workers,
    url: str,
    key: Key,
    queues: Sequence[str],
    options: Mapping[str, Any] | None = None,
) -> Worker:
    """A worker of the pool, started once the pool's monitor is settled, and seen idle."""
    watcher.wait_known(key)
    worker = workers.start(url, key, queues, options)
    wait_for(
        lambda: watcher.load(key, worker.pod) == "idle",
        WORKER_START,
        f"the first heartbeat of {worker.node}",
        alive=(worker.proc,),
    )
    return worker


# -- heartbeats ----------------------------------------------------------------------------


def test_heartbeats_arrive_and_the_pool_is_told_when_a_worker_goes_busy(
    broker: Broker, watcher: Watcher, workers: Workers
) -> None:
    key, q = new_key(), new_name()
    watcher.watch(key, broker.url)
    watcher.wait_known(key)
    assert watcher.heartbeats(key).beats == {}  # no worker yet
    assert watcher.monitors.active_tasks(key) == 0

    worker = start_idle_worker(watcher, workers, broker.url, key, [q])
    hb = watcher.heartbeats(key)
    assert hb.known
    assert hb.error == ""
    assert set(hb.beats or {}) == {worker.pod}
    beat = hb.beat(worker.pod)
    assert beat is not None
    assert (beat.active, beat.freq, beat.fresh) == (0, FREQ, True)
    assert watcher.monitors.active_tasks(key) == 0
    # The pool was told of its new worker, idle.
    wait_for(lambda: watcher.told(key, worker.pod), 5, "on_change for the new worker")
    assert collapse(watcher.told(key, worker.pod)) == ["idle"]

    sent_at = time.monotonic()
    with client_app(broker.url) as app:
        app.send_task(monitorapp.SLEEP, args=(120,), queue=q)

    def running() -> bool:
        beat = watcher.beat(key, worker.pod)
        return beat is not None and beat.active == 1

    wait_for(running, 20, "a heartbeat with active 1", alive=(worker.proc,))
    assert watcher.load(key, worker.pod) == "busy"
    assert watcher.monitors.active_tasks(key) == 1
    # The pool was told once it went idle -> busy, and only once while the task runs (its
    # heartbeats come every 2 s; they change nothing).
    wait_for(lambda: "busy" in watcher.told(key, worker.pod), 5, "on_change for busy")

    def still_busy() -> None:
        assert running()
        assert watcher.load(key, worker.pod) == "busy"

    observe(2 * FREQ + 0.5, still_busy)
    told = watcher.told(key, worker.pod)
    assert told.count("busy") == 1, told
    assert collapse(told) == ["idle", "busy"], told
    # Before the worker's first heartbeat with the task, the monitor may tell the pool
    # again that it is idle (its re-tell after connecting, a reconnect): still true then.
    assert collapse(watcher.told(key, worker.pod, since=sent_at)) in (["busy"], ["idle", "busy"])


def test_a_warm_stop_removes_the_worker(broker: Broker, watcher: Watcher, workers: Workers) -> None:
    """SIGTERM: the worker says worker-offline as it goes; the monitor forgets it at once
    (a worker that merely falls silent stays, as unknown, for minutes)."""
    key = new_key()
    watcher.watch(key, broker.url)
    worker = start_idle_worker(watcher, workers, broker.url, key, [new_name()])

    stopped_at = time.monotonic()
    worker.proc.signal(signal.SIGTERM)
    wait_for(
        lambda: worker.pod not in (watcher.heartbeats(key).beats or {}),
        EXPIRY,  # well before its last heartbeat would even be stale
        "the worker removed",
    )
    assert time.monotonic() - stopped_at < EXPIRY
    assert watcher.heartbeats(key).known
    assert worker.proc.wait_exit(30) == 0
    assert watcher.monitors.active_tasks(key) == 0

    def told_gone() -> bool:
        with watcher.lock:
            return any(
                c.key == key and worker.pod not in c.loads
                for c in watcher.changes
                if c.at > stopped_at
            )

    wait_for(told_gone, 5, "on_change for the worker gone")


def test_a_silent_worker_is_unknown_never_idle_and_comes_back(
    broker: Broker, watcher: Watcher, workers: Workers
) -> None:
    key = new_key()
    watcher.watch(key, broker.url)
    worker = start_idle_worker(watcher, workers, broker.url, key, [new_name()])

    stopped_at = time.monotonic()
    worker.proc.signal(signal.SIGSTOP)  # hung: no heartbeats, no worker-offline
    try:
        seen: list[Load | None] = []

        def unknown() -> bool:
            seen.append(watcher.load(key, worker.pod))
            return seen[-1] == "unknown"

        wait_for(unknown, EXPIRY + 10, "the silent worker unknown")
        # Idle until its heartbeats were overdue, then unknown: never anything else.
        assert set(seen) == {"idle", "unknown"}, collapse([s for s in seen if s is not None])
        assert time.monotonic() - stopped_at > EXPIRY - FREQ - 0.5
        beat = watcher.beat(key, worker.pod)
        assert beat is not None
        assert not beat.fresh
        # Who knows what it runs: it counts as running one task at least.
        assert watcher.monitors.active_tasks(key) == 1
        wait_for(lambda: "unknown" in watcher.told(key, worker.pod), 5, "on_change: unknown")
        assert watcher.load(key, worker.pod) == "unknown"
    finally:
        worker.proc.signal(signal.SIGCONT)

    wait_for(
        lambda: watcher.load(key, worker.pod) == "idle",
        3 * FREQ + 5,
        "the worker heard again",
        alive=(worker.proc,),
    )
    assert watcher.monitors.active_tasks(key) == 0
    wait_for(lambda: watcher.told(key, worker.pod)[-1] == "idle", 5, "on_change: idle again")
    assert collapse(watcher.told(key, worker.pod)) == ["idle", "unknown", "idle"]


# -- remote control ------------------------------------------------------------------------


def test_cancel_consumer_keeps_tasks_waiting_until_add_consumer(
    broker: Broker, watcher: Watcher, workers: Workers
) -> None:
    key, q = new_key(), new_name()
    watcher.watch(key, broker.url)
    worker = start_idle_worker(watcher, workers, broker.url, key, [q])
    monitor = watcher.monitor(key)

    monitor.cancel_consumer([q], [worker.node])
    wait_for(
        lambda: f"Canceling queue {q}" in worker.log(),
        15,
        "the worker to cancel its consumer",
        alive=(worker.proc,),
    )
    with client_app(broker.url) as app:
        task_id = app.send_task(monitorapp.SLEEP, args=(0,), queue=q).id
    received = f"[{task_id}] received"
    wait_for(lambda: monitor.queue_lengths([q]) == [1], 10, "the task waiting")

    def waits() -> None:
        assert worker.proc.running()
        assert received not in worker.log()
        beat = watcher.beat(key, worker.pod)
        assert beat is not None
        assert beat.fresh
        assert beat.active == 0

    # Two heartbeat intervals: the worker is alive and well, and takes nothing from q.
    observe(2 * FREQ + 1, waits)
    assert monitor.queue_lengths([q]) == [1]

    monitor.add_consumer([q], [worker.node])
    wait_for(
        lambda: f"[{task_id}] succeeded" in worker.log(),
        30,
        "the task run once the worker consumes q again",
        alive=(worker.proc,),
    )
    assert f"Started consuming from {q}" in worker.log()
    assert monitor.queue_lengths([q]) == [0]


# -- the registry ----------------------------------------------------------------------------


def test_pools_of_one_broker_share_one_monitor(
    broker: Broker, watcher: Watcher, workers: Workers
) -> None:
    namespace = new_name("team")
    a, b = (namespace, new_name("pool")), (namespace, new_name("pool"))
    other = new_key()  # another app on the same broker, with other transport options
    watcher.watch(a, broker.url)
    watcher.watch(b, broker.url)
    watcher.watch(other, broker.url, {"visibility_timeout": 7200})
    shared = watcher.monitor(a)
    assert watcher.monitor(b) is shared
    assert watcher.monitor(other) is not shared

    # Each pool hears its own workers only, through the one monitor.
    qa, qb = new_name(), new_name()
    worker_a = start_idle_worker(watcher, workers, broker.url, a, [qa])
    worker_b = start_idle_worker(watcher, workers, broker.url, b, [qb])
    assert set(watcher.heartbeats(a).beats or {}) == {worker_a.pod}
    assert set(watcher.heartbeats(b).beats or {}) == {worker_b.pod}
    watcher.wait_known(other)
    assert watcher.heartbeats(other).beats == {}

    # The scaler's probe for the broker is that monitor too.
    with client_app(broker.url) as app:
        app.send_task(monitorapp.SLEEP, args=(0,), queue=(waiting := new_name()))
    probe = watcher.monitors.probe(target(broker.url).url_id)
    wait_for(lambda: probe.queue_lengths([waiting, qa]) == [1, 0], 10, "the waiting task")

    # One pool gone: the monitor goes on for the other; both gone: it stops.
    watcher.monitors.unwatch(a)
    assert watcher.monitors.monitor(a) is None
    assert watcher.monitors.heartbeats(a) is None
    assert watcher.monitor(b) is shared
    assert watcher.load(b, worker_b.pod) == "idle"
    watcher.monitors.unwatch(b)
    assert watcher.monitors.monitor(b) is None
    with pytest.raises(BrokerUnreachableError):
        watcher.monitors.probe(target(broker.url).url_id)
    assert watcher.monitor(other) is not shared


def test_redis_connections_do_not_grow_with_pools(watcher: Watcher) -> None:
    """The operator's connections to a Redis, counted by the server (CLIENT LIST): a second
    pool of the broker adds none, nor do polls; another app's options add a monitor."""
    with RedisServer(password=REDIS_PASSWORD) as server, server.client() as r:
        me = int(r.client_id())

        def clients() -> int:
            return sum(1 for c in r.client_list() if int(c["id"]) != me)

        def received() -> int:
            return int(r.info("stats")["total_connections_received"])

        wait_for(lambda: clients() == 0, 5, "no other client")  # the server's readiness check
        a, b, c = new_key(), new_key(), new_key()
        watcher.watch(a, server.url)
        watcher.wait_known(a)
        probe = watcher.monitors.probe(target(server.url).url_id)
        assert probe.queue_lengths([new_name()]) == [0]
        one_pool = clients()
        assert one_pool > 0
        before = received()

        watcher.watch(b, server.url)
        watcher.wait_known(b)
        for _ in range(10):
            assert probe.queue_lengths([new_name(), new_name()]) == [0, 0]
        watcher.monitor(b).cancel_consumer(["nothing"], ["nobody.anywhere@none"])
        assert clients() == one_pool
        assert received() == before  # nothing connected and went away meanwhile either

        watcher.watch(c, server.url, {"visibility_timeout": 7200})
        watcher.wait_known(c)
        assert clients() > one_pool

        for key in (a, b, c):
            watcher.monitors.unwatch(key)
        wait_for(lambda: clients() == 0, 15, "the stopped monitors' connections closed")


# -- outages and key prefixes ------------------------------------------------------------------


def test_broker_down_is_not_known_then_recovers(
    broker: Broker, watcher: Watcher, workers: Workers
) -> None:
    key, q = new_key(), new_name()
    watcher.watch(key, broker.url)
    worker = start_idle_worker(watcher, workers, broker.url, key, [q])
    redacted = parse_broker_url(broker.url).redacted()

    stopped_at = time.monotonic()
    broker.server.stop()
    try:

        def down() -> PoolHeartbeats | None:
            hb = watcher.heartbeats(key)
            return None if hb.known else hb

        hb = wait_for(down, 30, "the outage noticed")
        assert hb.error
        assert hb.error != "waiting"
        assert_no_password(hb.error, broker.password)
        assert hb.beats is None  # nothing is claimed of the workers meanwhile
        assert watcher.monitors.active_tasks(key) is None
        with pytest.raises(BrokerUnreachableError) as info:
            watcher.monitor(key).queue_lengths([q])
        assert str(info.value).startswith(f"{redacted}: ")
        assert_no_password(str(info.value), broker.password)

        def told_down() -> bool:
            with watcher.lock:
                return any(
                    c.key == key and not c.known for c in watcher.changes if c.at > stopped_at
                )

        wait_for(told_down, 5, "on_change for the outage")
    finally:
        broker.server.start()

    wait_for(lambda: watcher.heartbeats(key).known, RECONNECT, "heartbeats known again")
    # The worker reconnected as well: its heartbeats are heard again.
    wait_for(
        lambda: watcher.load(key, worker.pod) == "idle",
        RECONNECT,
        "the worker heard again",
        alive=(worker.proc,),
    )
    assert watcher.monitor(key).queue_lengths([q]) == [0]


def test_heartbeats_with_a_global_keyprefix(
    redis_broker: Broker, watcher: Watcher, workers: Workers
) -> None:
    """Workers whose app puts everything under a key prefix (events included) are heard by a
    monitor with the app's transport options, and by no other."""
    url = redis_broker.url
    key, q = new_key(), new_name()
    watcher.watch(key, url, SHOP_OPTIONS)
    worker = start_idle_worker(watcher, workers, url, key, [q], SHOP_OPTIONS)

    plain = probe_for(url)  # no transport options: as the operator listened before
    try:
        wait_for(lambda: plain.heartbeats(key).known, KNOWN, "the plain monitor settled")
        since = time.monotonic()

        def beat_since() -> bool:
            beat = watcher.beat(key, worker.pod)
            return beat is not None and time.monotonic() - beat.age > since

        wait_for(beat_since, 2 * FREQ + 2, "a heartbeat while both listen", alive=(worker.proc,))
        assert plain.heartbeats(key).beats == {}

        # Its queues are under the prefix as well.
        with client_app(url, SHOP_OPTIONS) as app:
            app.send_task(monitorapp.SLEEP, args=(0,), queue=(waiting := new_name()), priority=7)
        monitor = watcher.monitor(key)
        wait_for(lambda: monitor.queue_lengths([waiting]) == [1], 10, "the waiting task")
        assert plain.queue_lengths([waiting]) == [0]

        # And remote control reaches it.
        monitor.cancel_consumer([q], [worker.node])
        wait_for(lambda: f"Canceling queue {q}" in worker.log(), 15, "cancel_consumer")
    finally:
        plain.close()
