"""Fixtures of the fidelity tests: a Redis per module, the CRs, and rendered processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from celery_operator.api.celeryapp import CeleryApp
from tests.fidelity import sampleapp
from tests.fidelity.support import (
    BACKEND_SECRET,
    BROKER_SECRET,
    FLOWER_AUTH_SECRET,
    FLOWER_CREDENTIALS,
    LocalContainer,
    LocalProcess,
    RunContainer,
    secret_key_ref,
)
from tests.support import objects as o
from tests.support.brokers import RedisServer


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the module's Redis, emptied for this test."""
    redis_server.start()  # a test may have left it stopped
    with redis_server.client(decode_responses=True) as client:
        client.flushall()
        yield client


@pytest.fixture
def secrets(redis_server: RedisServer) -> dict[tuple[str, str], str]:
    """The Secrets the rendered env refers to, as the test cluster would hold them."""
    return {
        BROKER_SECRET: redis_server.url,
        BACKEND_SECRET: redis_server.url,
        FLOWER_AUTH_SECRET: ":".join(FLOWER_CREDENTIALS),
    }


@pytest.fixture
def celery_app(redis_server: RedisServer) -> CeleryApp:
    """The example CeleryApp, running the sample app, with its connections in Secrets."""
    return o.app(
        spec={
            "app": "tests.fidelity.sampleapp:app",
            "broker": {"url": {"secretKeyRef": secret_key_ref(BROKER_SECRET)}},
            "resultBackend": {"url": {"secretKeyRef": secret_key_ref(BACKEND_SECRET)}},
            "env": [{"name": sampleapp.RECORD_URL_ENV, "value": redis_server.url}],
        }
    )


@pytest.fixture
def run_container(tmp_path: Path, secrets: dict[tuple[str, str], str]) -> Iterator[RunContainer]:
    """Starts rendered containers as local processes; all are killed after the test."""
    started: list[LocalProcess] = []

    def run(container: dict[str, Any], **kwargs: Any) -> LocalProcess:
        n = len(started)
        local = LocalContainer(container, secrets, tmp_path / f"{container['name']}-{n}", **kwargs)
        proc = LocalProcess(local, tmp_path / f"{container['name']}-{n}.log")
        started.append(proc)
        return proc

    yield run
    for proc in started:
        proc.kill()


@pytest.fixture
def producer(redis_server: RedisServer) -> Iterator[Celery]:
    """A Celery client of the module's broker, for sending tasks by name."""
    client = Celery("fidelity-producer", broker=redis_server.url, set_as_current=False)
    client.conf.broker_connection_retry_on_startup = False
    yield client
    client.close()
