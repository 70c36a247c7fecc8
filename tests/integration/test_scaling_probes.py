"""The built-in scaler's queue lengths, read through a broker monitor, against real brokers.

`probe_for(url, transport_options)` starts a `BrokerMonitor` of its own: one kombu
connection, made with the app's transport options, whose queue sizes come from kombu's own
transport code (Redis: the priority lists under the key prefix; RabbitMQ: a passive
queue.declare). A private Redis (with a password) and a private RabbitMQ node run on
127.0.0.1 (see tests/support/brokers.py); no Kubernetes is involved. RabbitMQ takes seconds
to start, so one node serves the whole module.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import pytest
import redis
from celery import Celery
from kombu import Connection, Exchange, Producer, Queue

from celery_operator.brokerurl import BrokerURL, parse_broker_url, redis_queue_keys
from celery_operator.scaling.decision import Policy
from celery_operator.scaling.monitor import BrokerMonitor, probe_for
from celery_operator.scaling.probes import BrokerUnreachableError, Probe
from celery_operator.scaling.scaler import BuiltinScaler, Target
from tests.support.brokers import RabbitMQServer, RedisServer

pytestmark = pytest.mark.broker

REDIS_PASSWORD = "pr0be:/@#?%pw"  # characters that must be URL-encoded
RABBIT_PASSWORD = f"rmq-{secrets.token_hex(8)}"
# How long a monitor may take to connect again once its broker is back (it backs off).
RECONNECT = 60.0


def wait_for(condition: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Polls `condition` until it returns something truthy; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


def lengths_or_none(probe: Probe, queues: Sequence[str]) -> list[int] | None:
    """The lengths, or None while the broker cannot be read (for wait_for)."""
    try:
        return probe.queue_lengths(queues)
    except BrokerUnreachableError:
        return None


def assert_safe_message(message: str, url: BrokerURL, password: str) -> None:
    """The error says which broker (redacted) and what went wrong, and nothing else."""
    for form in (password, quote(password, safe=""), quote(password)):
        assert form not in message, message
    assert re.fullmatch(re.escape(url.redacted()) + r": \w+", message), message


def assert_nothing_chained(error: BaseException) -> None:
    """No other exception is attached (a traceback would print it, credentials and all)."""
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


def new_name(prefix: str = "q") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer(password=REDIS_PASSWORD) as server:
        yield server


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis_server.client() as client:
        yield client


@pytest.fixture
def redis_url(redis_server: RedisServer) -> BrokerURL:
    url = parse_broker_url(redis_server.url)
    assert url.password == REDIS_PASSWORD
    return url


@pytest.fixture
def redis_probe(redis_server: RedisServer) -> Iterator[BrokerMonitor]:
    probe = probe_for(redis_server.url)
    yield probe
    probe.close()


@pytest.fixture(scope="module")
def rabbitmq_server() -> Iterator[RabbitMQServer]:
    with RabbitMQServer(password=RABBIT_PASSWORD) as server:
        yield server


@pytest.fixture
def rabbit_url(rabbitmq_server: RabbitMQServer) -> BrokerURL:
    url = parse_broker_url(rabbitmq_server.url)
    assert url.password == RABBIT_PASSWORD
    return url


@pytest.fixture
def rabbit_probe(rabbitmq_server: RabbitMQServer) -> Iterator[BrokerMonitor]:
    probe = probe_for(rabbitmq_server.url)
    yield probe
    probe.close()


# -- Redis -------------------------------------------------------------------------------


def test_redis_counts_base_and_priority_lists_per_queue(
    redis_client: redis.Redis, redis_probe: Probe
) -> None:
    q1, q2, q3, missing = new_name(), new_name(), new_name(), new_name()
    base, p3, p6, p9 = redis_queue_keys(q1)
    for key, n in ((base, 3), (p3, 2), (p6, 1), (p9, 4)):
        redis_client.lpush(key, *[b"task"] * n)
    redis_client.lpush(q2, *[b"task"] * 5)
    redis_client.lpush(f"{q3}\x06\x169", b"task")  # only a priority list
    # Lists that merely look alike are not the queue's.
    redis_client.lpush(f"{q1}x", *[b"other"] * 7)
    redis_client.lpush(f"{q1}\x06\x162", b"other")

    assert redis_probe.queue_lengths([q1, q2, q3, missing]) == [10, 5, 1, 0]
    assert redis_probe.queue_lengths([missing, q2, q1]) == [0, 5, 10]
    assert redis_probe.queue_lengths([q1, q1]) == [10, 10]
    assert redis_probe.queue_lengths([q2]) == [5]
    assert redis_probe.queue_lengths([]) == []


def test_redis_counts_what_kombu_publishes_with_priorities(
    redis_server: RedisServer, redis_probe: Probe
) -> None:
    """The lists are the ones kombu's Redis transport really writes (as Celery does)."""
    name = new_name()
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    priorities = [None, 0, 1, 3, 5, 6, 8, 9, 9]
    with Connection(redis_server.url) as conn:
        producer = Producer(conn)
        for i, pri in enumerate(priorities):
            producer.publish(
                {"n": i}, exchange=queue.exchange, routing_key=name, declare=[queue], priority=pri
            )
    with redis_server.client() as r:
        used = [k for k in redis_queue_keys(name) if r.llen(k)]
    assert len(used) > 1, "kombu should have used several priority lists"
    assert redis_probe.queue_lengths([name]) == [len(priorities)]


def test_redis_empty_or_missing_list_counts_zero(
    redis_client: redis.Redis, redis_probe: Probe
) -> None:
    q = new_name()
    assert redis_probe.queue_lengths([q]) == [0]
    redis_client.lpush(q, b"a", b"b")
    redis_client.lpush(f"{q}\x06\x166", b"c")
    assert redis_probe.queue_lengths([q]) == [3]
    redis_client.delete(*redis_queue_keys(q))
    assert redis_probe.queue_lengths([q]) == [0]
    redis_client.lpush(q, b"a")
    redis_client.rpop(q)  # Redis removes a list once it is empty
    assert redis_client.exists(q) == 0
    assert redis_probe.queue_lengths([q]) == [0]


SHOP_OPTIONS: Mapping[str, Any] = {"global_keyprefix": "shop:", "priority_steps": [0, 5, 9]}


def test_redis_counts_tasks_under_the_apps_key_prefix_and_priority_steps(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """An app whose Celery puts its queues under a key prefix, in lists of its own priority
    steps: read with the app's transport options, every task is counted; read as the
    operator used to (plain LLEN of the queue's default lists), none is seen."""
    q = new_name()
    app = Celery("shop", set_as_current=False)
    app.conf.update(broker_url=redis_server.url, broker_transport_options=dict(SHOP_OPTIONS))
    priorities = [None, 0, 1, 3, 5, 6, 8, 9, 9]
    try:
        for i, pri in enumerate(priorities):
            app.send_task("shop.order", args=(i,), queue=q, priority=pri)
    finally:
        app.close()

    # Where Celery put them: under the prefix, in lists of the app's steps only.
    prefixed = sorted(k.decode() for k in redis_client.keys(f"shop:{q}*"))
    assert prefixed == sorted(f"shop:{q}{s}" for s in ("", "\x06\x165", "\x06\x169")), prefixed
    assert sum(redis_client.llen(k) for k in prefixed) == len(priorities)
    in_step_5 = redis_client.llen(f"shop:{q}\x06\x165")
    assert in_step_5 > 0
    assert not any(redis_client.exists(k) for k in redis_queue_keys(q))

    probes = {
        "app's options": probe_for(redis_server.url, SHOP_OPTIONS),
        "no options": probe_for(redis_server.url),
        "prefix only": probe_for(redis_server.url, {"global_keyprefix": "shop:"}),
    }
    try:
        assert probes["app's options"].queue_lengths([q]) == [len(priorities)]
        # The old way was blind: no prefix, nothing found.
        assert probes["no options"].queue_lengths([q]) == [0]
        # The prefix alone misses the lists of steps other than kombu's default ones.
        assert probes["prefix only"].queue_lengths([q]) == [len(priorities) - in_step_5]
    finally:
        for probe in probes.values():
            probe.close()


def test_redis_polls_reuse_the_monitors_connections(
    redis_client: redis.Redis, redis_probe: Probe
) -> None:
    """A poll opens no connection: the monitor's own serve them all."""
    queues = [new_name() for _ in range(3)]
    redis_client.lpush(queues[1], b"t", b"t")
    assert redis_probe.queue_lengths(queues) == [0, 2, 0]  # connected and warm

    def connections_received() -> int:
        return int(redis_client.info("stats")["total_connections_received"])

    before = connections_received()
    for _ in range(20):
        assert redis_probe.queue_lengths(queues) == [0, 2, 0]
    assert connections_received() == before


def test_redis_a_key_that_is_not_a_list_fails_the_poll_not_the_monitor(
    redis_client: redis.Redis, redis_probe: BrokerMonitor, redis_url: BrokerURL
) -> None:
    """A queue name whose key holds something else (Redis refuses LLEN: WRONGTYPE): that
    poll fails, the monitor's connection, and the heartbeats it carries, stay."""
    q, odd = new_name(), new_name()
    redis_client.lpush(q, b"t")
    redis_client.hset(odd, "not", "a list")
    assert redis_probe.queue_lengths([q]) == [1]  # connected and warm
    before = int(redis_client.info("stats")["total_connections_received"])

    with pytest.raises(BrokerUnreachableError) as info:
        redis_probe.queue_lengths([q, odd])
    assert_safe_message(str(info.value), redis_url, REDIS_PASSWORD)
    assert redis_probe.queue_lengths([q]) == [1]
    assert redis_probe.heartbeats(("ns", "pool")).error in ("", "waiting")
    # No reconnection: not one new connection.
    assert int(redis_client.info("stats")["total_connections_received"]) == before


def test_a_closed_probe_says_so_at_once(redis_server: RedisServer) -> None:
    probe = probe_for(redis_server.url)
    assert probe.queue_lengths([new_name()]) == [0]
    probe.close()
    asked_at = time.monotonic()
    with pytest.raises(BrokerUnreachableError, match=r": stopped$"):
        probe.queue_lengths([new_name()])
    assert time.monotonic() - asked_at < 1.0  # not after waiting for an answer in vain
    assert not probe.heartbeats(("ns", "pool")).known


def test_redis_down_raises_without_credentials_then_reconnects(
    redis_server: RedisServer, redis_client: redis.Redis, redis_url: BrokerURL
) -> None:
    probe = probe_for(redis_server.url)
    q = new_name()
    try:
        redis_client.lpush(q, b"t", b"t")
        assert probe.queue_lengths([q]) == [2]  # connected

        redis_server.stop()
        try:
            for _ in range(2):  # the lost connection, then while it cannot connect
                with pytest.raises(BrokerUnreachableError) as info:
                    probe.queue_lengths([q])
                assert_safe_message(str(info.value), redis_url, REDIS_PASSWORD)
                assert_nothing_chained(info.value)
        finally:
            redis_server.start()

        # The same probe object works again once it has connected again (the server lost
        # its data: no persistence).
        assert wait_for(lambda: lengths_or_none(probe, [q]), RECONNECT, "reconnected") == [0]
        with redis_server.client() as client:
            client.lpush(q, b"t", b"t", b"t")
        assert probe.queue_lengths([q]) == [3]
    finally:
        probe.close()


def test_redis_wrong_password_is_unreachable_without_credentials(
    redis_server: RedisServer,
) -> None:
    wrong = "Wr0ng:/@pw"
    raw = f"redis://:{quote(wrong, safe='')}@127.0.0.1:{redis_server.port}/0"
    url = parse_broker_url(raw)
    probe = probe_for(raw)
    try:
        with pytest.raises(BrokerUnreachableError) as info:
            probe.queue_lengths(["celery"])
        assert_safe_message(str(info.value), url, wrong)
        assert_nothing_chained(info.value)
        # Its heartbeats are not known either, and say no more.
        beats = probe.heartbeats(("ns", "pool"))
        assert not beats.known
        assert beats.error
        assert wrong not in beats.error
        assert quote(wrong, safe="") not in beats.error
    finally:
        probe.close()


# -- RabbitMQ ----------------------------------------------------------------------------


def publish(server: RabbitMQServer, counts: dict[str, int]) -> None:
    """Publishes persistent messages to durable queues, each confirmed by the broker."""
    with Connection(
        server.url, connect_timeout=5, transport_options={"confirm_publish": True}
    ) as conn:
        producer = Producer(conn)
        for name, n in counts.items():
            queue = Queue(name, Exchange(name, type="direct", durable=True), routing_key=name)
            for i in range(n):
                producer.publish(
                    {"n": i},
                    exchange=queue.exchange,
                    routing_key=name,
                    declare=[queue],
                    delivery_mode=2,
                )


def test_rabbitmq_counts_ready_messages(
    rabbitmq_server: RabbitMQServer, rabbit_probe: Probe
) -> None:
    q1, q2 = new_name(), new_name()
    publish(rabbitmq_server, {q1: 7, q2: 3})
    assert rabbit_probe.queue_lengths([q1, q2]) == [7, 3]
    assert rabbit_probe.queue_lengths([q2, q1, q2]) == [3, 7, 3]
    publish(rabbitmq_server, {q2: 4})
    assert rabbit_probe.queue_lengths([q1, q2]) == [7, 7]
    assert rabbit_probe.queue_lengths([]) == []


def test_rabbitmq_counts_only_ready_messages(
    rabbitmq_server: RabbitMQServer, rabbit_probe: Probe
) -> None:
    """A message a worker has taken (delivered, not yet acked) is no longer waiting."""
    q = new_name()
    publish(rabbitmq_server, {q: 5})
    with Connection(rabbitmq_server.url, connect_timeout=5) as conn:
        channel = conn.channel()
        taken = [channel.basic_get(q, no_ack=False) for _ in range(2)]
        assert all(m is not None for m in taken)
        assert rabbit_probe.queue_lengths([q]) == [3]
        channel.basic_recover(requeue=True)
    wait_for(lambda: rabbit_probe.queue_lengths([q]) == [5], what="requeued messages")


def test_rabbitmq_missing_queue_counts_zero_and_the_probe_keeps_working(
    rabbitmq_server: RabbitMQServer, rabbit_probe: BrokerMonitor
) -> None:
    q1, q2 = new_name(), new_name()
    publish(rabbitmq_server, {q1: 2, q2: 1})
    missing, also_missing = new_name("missing"), new_name("missing")
    # The broker closes the channel at each NOT_FOUND; the next queue must still be read.
    assert rabbit_probe.queue_lengths([missing, q1, also_missing, q2]) == [0, 2, 0, 1]
    assert rabbit_probe.queue_lengths([q1, missing]) == [2, 0]
    assert rabbit_probe.queue_lengths([q2]) == [1]
    for _ in range(20):  # no channel leak / exhaustion over many polls
        assert rabbit_probe.queue_lengths([missing, q2]) == [0, 1]
    # A queue that appears later is counted.
    publish(rabbitmq_server, {missing: 2})
    assert rabbit_probe.queue_lengths([missing, q1]) == [2, 2]
    # The closed channels were not the monitor's connection: it still hears the broker.
    assert rabbit_probe.heartbeats(("ns", "pool")).error in ("", "waiting")


def test_rabbitmq_down_raises_without_credentials_then_reconnects(
    rabbitmq_server: RabbitMQServer, rabbit_url: BrokerURL
) -> None:
    q = new_name()
    publish(rabbitmq_server, {q: 4})
    probe = probe_for(rabbitmq_server.url)
    try:
        assert probe.queue_lengths([q]) == [4]
        rabbitmq_server.stop()
        try:
            for _ in range(2):  # the lost connection, then while it cannot connect
                with pytest.raises(BrokerUnreachableError) as info:
                    probe.queue_lengths([q])
                assert_safe_message(str(info.value), rabbit_url, RABBIT_PASSWORD)
                assert_nothing_chained(info.value)
        finally:
            rabbitmq_server.start()
        # Durable queue, persistent messages: still there, read by the same probe object.
        assert wait_for(lambda: lengths_or_none(probe, [q]), RECONNECT, "reconnected") == [4]
        assert probe.queue_lengths([new_name("missing"), q]) == [0, 4]
    finally:
        probe.close()


def test_rabbitmq_wrong_password_is_unreachable_without_credentials(
    rabbitmq_server: RabbitMQServer,
) -> None:
    wrong = "Wr0ng:/@pw"
    raw = f"amqp://celery:{quote(wrong, safe='')}@127.0.0.1:{rabbitmq_server.port}/celery"
    url = parse_broker_url(raw)
    probe = probe_for(raw)
    try:
        with pytest.raises(BrokerUnreachableError) as info:
            probe.queue_lengths(["celery"])
        assert_safe_message(str(info.value), url, wrong)
        assert_nothing_chained(info.value)
    finally:
        probe.close()


# -- the scaler's loop on a real Redis -----------------------------------------------------


class Recorder:
    """What the scaler did, with times: its observations and its on_change calls."""

    def __init__(self, scaler_ref: list[BuiltinScaler]) -> None:
        self._scaler_ref = scaler_ref
        self.lock = threading.Lock()
        self.observations: list[tuple[float, list[int]]] = []  # (after the read, lengths)
        self.changes: list[tuple[float, tuple[str, str], int | None]] = []
        self.closed = 0

    def on_change(self, key: tuple[str, str]) -> None:
        replicas = self._scaler_ref[0].replicas(key)
        with self.lock:
            self.changes.append((time.monotonic(), key, replicas))

    def wrap(self, probe: Probe) -> Probe:
        """The shared monitor as the scaler's probe: closing it leaves the monitor running
        (as the operator's registry does), and is counted."""
        recorder = self

        class Recording:
            def queue_lengths(self, queues: Sequence[str]) -> list[int]:
                lengths = probe.queue_lengths(queues)
                with recorder.lock:
                    recorder.observations.append((time.monotonic(), list(lengths)))
                return lengths

            def close(self) -> None:
                with recorder.lock:
                    recorder.closed += 1

        return Recording()

    def last_busy(self) -> float:
        with self.lock:
            return max(t for t, lengths in self.observations if sum(lengths) > 0)


def test_builtin_scaler_on_a_real_redis(redis_server: RedisServer, redis_url: BrokerURL) -> None:
    scaler_ref: list[BuiltinScaler] = []
    rec = Recorder(scaler_ref)
    monitor = probe_for(redis_server.url)  # one, shared by every poll
    scaler = BuiltinScaler(
        on_change=rec.on_change, probe_for=lambda t: rec.wrap(monitor), workers=2
    )
    scaler_ref.append(scaler)

    key = ("team-a", "workers")
    queue = new_name()
    cooldown = 1.0
    target = Target(
        key=key,
        broker=redis_url,
        url_id=redis_server.url,
        queues=(queue, new_name()),
        policy=Policy(
            min_replicas=1, max_replicas=5, target_per_replica=10, cooldown_seconds=cooldown
        ),
        interval=0.2,
    )
    scaler.track(target, current=1)
    assert scaler.replicas(key) == 1
    scaler.start()
    try:
        with redis_server.client() as r:
            # 25 waiting, target 10 -> 3 at once; on_change tells the pool.
            r.lpush(queue, *[b"task"] * 20)
            r.lpush(f"{queue}\x06\x169", *[b"task"] * 5)
            wait_for(lambda: scaler.replicas(key) == 3, what="3 replicas")
            wait_for(lambda: any(c[1:] == (key, 3) for c in rec.changes), what="on_change")
            status = scaler.status(key)
            assert status is not None
            assert status["queueLength"] == 25
            assert status["error"] is None
            assert isinstance(status["lastScaleTime"], str)

            # Drained: back to min, but only a cooldown after the last busy observation.
            r.delete(*redis_queue_keys(queue))
            wait_for(lambda: scaler.replicas(key) == 1, what="back to min after draining")
            with rec.lock:
                up = next(i for i, c in enumerate(rec.changes) if c[2] == 3)
                down_at = next(t for t, _, n in rec.changes[up:] if n == 1)
            assert down_at - rec.last_busy() > cooldown
            assert wait_for(lambda: scaler.status(key)["queueLength"] == 0, what="length 0")

            # Busy again, then the broker goes away: replicas stay, the error is shown.
            r.lpush(queue, *[b"task"] * 25)
            wait_for(lambda: scaler.replicas(key) == 3, what="3 replicas again")

        redis_server.stop()
        try:
            error = wait_for(lambda: scaler.status(key)["error"], what="the broker error")
            assert_safe_message(str(error), redis_url, REDIS_PASSWORD)
            assert any(k == key for _, k, _ in rec.changes)
            # Longer than a cooldown without a reading: nothing is decided meanwhile.
            outage_until = time.monotonic() + 2 * cooldown
            while time.monotonic() < outage_until:
                assert scaler.replicas(key) == 3
                assert scaler.status(key)["error"]
                time.sleep(0.05)
            changes_during_outage = len(rec.changes)
        finally:
            redis_server.start()

        # Back (and empty: the server keeps no data): the error clears once the monitor has
        # connected again, and the pool goes down to min only after a cooldown of empty
        # readings.
        wait_for(lambda: scaler.status(key)["error"] is None, RECONNECT, "the error cleared")
        assert len(rec.changes) > changes_during_outage  # the pool was told
        wait_for(lambda: scaler.replicas(key) == 1, what="min after the outage")
        assert rec.closed > 0, "the scaler dropped its probe during the outage"
    finally:
        scaler.stop()
        monitor.close()
