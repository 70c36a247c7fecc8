"""Reading queue lengths from the broker: one cheap request per pool per poll.

Redis: one pipelined round trip of LLEN over every list of every queue (kombu keeps
priorities 3/6/9 in their own lists). RabbitMQ: a passive queue.declare per queue on a
kept-open connection, whose message_count is the messages ready (not yet delivered).
Connections are cached per broker and rebuilt after a failure. Nothing here logs a URL
with its password: errors carry `BrokerURL.redacted()` only.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from celery_operator.brokerurl import BrokerURL, redis_queue_keys


class BrokerUnreachableError(Exception):
    """The broker could not be asked; the message carries no credentials."""


class Probe(Protocol):
    def queue_lengths(self, queues: Sequence[str]) -> list[int]: ...
    def close(self) -> None: ...


class RedisProbe:
    def __init__(self, url: BrokerURL, timeout: float = 5.0) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url = url
        self._client = redis.Redis(
            host=url.host or "localhost",
            port=url.port or 6379,
            db=url.redis_db,
            username=url.username or None,
            password=url.password or None,
            ssl=url.tls,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # One immediate retry (a pooled connection the server closed); no backoff, so
            # an unreachable broker is reported within one timeout, not after seconds.
            retry=Retry(NoBackoff(), 1),
            # No PING before a pipeline after idling: one round trip per poll.
            health_check_interval=0,
        )

    def queue_lengths(self, queues: Sequence[str]) -> list[int]:
        import redis

        try:
            pipe = self._client.pipeline(transaction=False)
            for q in queues:
                for key in redis_queue_keys(q):
                    pipe.llen(key)
            counts: list[Any] = pipe.execute()
        except (redis.RedisError, OSError) as e:
            raise BrokerUnreachableError(f"{self.url.redacted()}: {type(e).__name__}") from None
        per_queue = len(counts) // max(len(queues), 1)
        return [int(sum(counts[i * per_queue : (i + 1) * per_queue])) for i in range(len(queues))]

    def close(self) -> None:
        self._client.close()


class RabbitMQProbe:
    def __init__(self, url: BrokerURL, timeout: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout
        self._conn: Any = None
        self._channel: Any = None
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        import amqp

        conn = amqp.Connection(
            host=self.url.address() if self.url.port else f"{self.url.address()}:5672",
            userid=self.url.username or "guest",
            password=self.url.password or "guest",
            virtual_host=self.url.amqp_vhost,
            ssl=self.url.tls,
            connect_timeout=self.timeout,
            read_timeout=self.timeout,
            write_timeout=self.timeout,
            heartbeat=0,
        )
        conn.connect()
        return conn

    def queue_lengths(self, queues: Sequence[str]) -> list[int]:
        import amqp

        with self._lock:
            out: list[int] = []
            try:
                if self._conn is None or not self._conn.connected:
                    self._conn = self._connect()
                    self._channel = None
                for q in queues:
                    if self._channel is None or not self._channel.is_open:
                        self._channel = self._conn.channel()
                    try:
                        _, count, _ = self._channel.queue_declare(queue=q, passive=True)
                    except amqp.exceptions.NotFound:
                        count = 0  # not declared yet: no task has been sent to it
                        self._channel = None  # the broker closed the channel
                    out.append(int(count))
            except (amqp.exceptions.AMQPError, OSError) as e:
                self.close()
                raise BrokerUnreachableError(f"{self.url.redacted()}: {type(e).__name__}") from None
            return out

    def close(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection may fail too
                conn.close()


def probe_for(url: BrokerURL) -> Probe:
    if url.family == "redis":
        return RedisProbe(url)
    if url.family == "amqp":
        return RabbitMQProbe(url)
    raise BrokerUnreachableError(f"the built-in scaler cannot read a {url.scheme}:// broker")
