"""The real-broker fixtures work: a private Redis and a private RabbitMQ on 127.0.0.1.

These tests need no Kubernetes control plane. They check exactly what the operator's
built-in scaler relies on: the length of a Celery queue, read as LLEN of a Redis list and
as the message count of a passive queue.declare on RabbitMQ, and that a broker that goes
down and comes back on the same address is reachable again.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Producer, Queue
from kombu.exceptions import OperationalError
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.brokers import RabbitMQServer, RedisServer

REDIS_PASSWORD = "s3cret:/@pw"  # characters that must be quoted in the URL
_NO_RETRY = Retry(NoBackoff(), 0)  # fail at once instead of retrying with backoff


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer(password=REDIS_PASSWORD) as server:
        yield server


@pytest.fixture(scope="module")
def rabbitmq_server() -> Iterator[RabbitMQServer]:
    with RabbitMQServer() as server:
        yield server


def _celery_like_message(task: str) -> bytes:
    """The envelope kombu's Redis transport pushes for a Celery task (protocol 2)."""
    task_id = str(uuid.uuid4())
    return json.dumps(
        {
            "body": "W1tdLCB7fSwgeyJjYWxsYmFja3MiOiBudWxsfV0=",
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"lang": "py", "task": task, "id": task_id, "root_id": task_id},
            "properties": {
                "correlation_id": task_id,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": "celery"},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    ).encode()


def _amqp(url: str, **kwargs: Any) -> Connection:
    return Connection(url, connect_timeout=2, transport_options={"confirm_publish": True}, **kwargs)


def _rabbit_count(server: RabbitMQServer, queue: str) -> int:
    """What the scaler reads: message_count of a passive queue.declare."""
    with _amqp(server.url) as conn:
        ok = conn.default_channel.queue_declare(queue=queue, passive=True)
        return int(ok.message_count)


# -- Redis ------------------------------------------------------------------------------


def test_redis_lpush_then_llen(redis_server: RedisServer) -> None:
    key = f"queue-{uuid.uuid4().hex[:8]}"
    with redis.Redis.from_url(redis_server.url) as r:
        assert r.llen(key) == 0
        for _ in range(3):
            r.lpush(key, _celery_like_message("app.tasks.add"))
        assert r.llen(key) == 3


def test_redis_kombu_publish_lands_in_a_list(redis_server: RedisServer) -> None:
    """A Celery producer (kombu's Redis transport) makes the queue a list named after it."""
    name = f"queue-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    with Connection(redis_server.url) as conn:
        producer = Producer(conn)
        for i in range(3):
            producer.publish({"n": i}, exchange=queue.exchange, routing_key=name, declare=[queue])
    with redis.Redis.from_url(redis_server.url) as r:
        assert r.type(name) == b"list"
        assert r.llen(name) == 3


def test_redis_requires_the_password(redis_server: RedisServer) -> None:
    assert redis_server.url.startswith("redis://:s3cret%3A%2F%40pw@127.0.0.1:")
    with (
        redis.Redis(host="127.0.0.1", port=redis_server.port, retry=_NO_RETRY) as r,
        pytest.raises(redis.AuthenticationError),
    ):
        r.ping()


def test_redis_down_then_back_on_the_same_port(redis_server: RedisServer) -> None:
    port, url = redis_server.port, redis_server.url
    redis_server.stop()
    try:
        assert not redis_server.running
        with (
            redis.Redis.from_url(url, socket_connect_timeout=1, retry=_NO_RETRY) as r,
            pytest.raises(redis.ConnectionError),
        ):
            r.ping()
    finally:
        redis_server.start()
    assert (redis_server.port, redis_server.url) == (port, url)
    with redis.Redis.from_url(url) as r:
        assert r.ping()
        r.lpush("after-restart", b"x")
        assert r.llen("after-restart") == 1


# -- RabbitMQ ---------------------------------------------------------------------------


def test_rabbitmq_passive_declare_counts_published_messages(
    rabbitmq_server: RabbitMQServer,
) -> None:
    name = f"queue-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name, durable=True)
    with _amqp(rabbitmq_server.url) as conn:
        queue(conn.default_channel).declare()
        assert _rabbit_count(rabbitmq_server, name) == 0
        producer = Producer(conn)
        for i in range(3):
            # confirm_publish: returns only once the broker has acked, so the count is final
            producer.publish(
                {"n": i}, exchange=queue.exchange, routing_key=name, delivery_mode="persistent"
            )
    assert _rabbit_count(rabbitmq_server, name) == 3


def test_rabbitmq_unknown_queue_is_not_found(rabbitmq_server: RabbitMQServer) -> None:
    """A passive declare of a missing queue is a channel error (404), not a count of 0."""
    with _amqp(rabbitmq_server.url) as conn, pytest.raises(Exception, match="NOT_FOUND"):
        conn.default_channel.queue_declare(queue="no-such-queue", passive=True)


def test_rabbitmq_down_then_back_on_the_same_port(rabbitmq_server: RabbitMQServer) -> None:
    name = f"queue-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name, durable=True)
    with _amqp(rabbitmq_server.url) as conn:
        producer = Producer(conn)
        for i in range(3):
            producer.publish(
                {"n": i},
                exchange=queue.exchange,
                routing_key=name,
                declare=[queue],
                delivery_mode="persistent",
            )
    assert _rabbit_count(rabbitmq_server, name) == 3

    port, url = rabbitmq_server.port, rabbitmq_server.url
    rabbitmq_server.stop()
    try:
        assert not rabbitmq_server.running
        with _amqp(url) as conn, pytest.raises((OperationalError, OSError)):
            conn.ensure_connection(max_retries=0)
    finally:
        rabbitmq_server.start()
    assert (rabbitmq_server.port, rabbitmq_server.url) == (port, url)
    # Same node, same data: the durable queue and its persistent messages are still there.
    assert _rabbit_count(rabbitmq_server, name) == 3
