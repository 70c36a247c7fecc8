"""A tiny Celery app that the fidelity tests run with the rendered commands.

The broker comes from CELERY_BROKER_URL, which Celery reads itself (it wins over any app
configuration): the app configures no broker, so the rendered env is the only source.
Tasks record what they do in Redis (the URL in SAMPLE_RECORD_URL, which the tests put into
the CeleryApp's `env`, so it is rendered like any other user variable), where the test
process can observe it.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

RECORD_URL_ENV = "SAMPLE_RECORD_URL"
RECORD_PREFIX = "sample:record:"
BEAT_QUEUE = "sample-beat"
BEAT_KEY = "beat"

app = Celery("sample")
app.conf.update(
    # Acknowledge a message only once its task has finished: a task cut off by a (soft,
    # then cold) shutdown goes back to its queue, which the shutdown test checks.
    task_acks_late=True,
    broker_connection_retry_on_startup=True,
    # Keep the workers quiet and quick to start: no events, no gossip with other nodes.
    worker_send_task_events=False,
    beat_schedule={
        "beat-marker": {
            "task": "sample.record",
            "schedule": 1.0,
            "args": (BEAT_KEY, "tick"),
            "options": {"queue": BEAT_QUEUE},
        },
    },
)


def _recorder() -> redis.Redis:
    return redis.Redis.from_url(os.environ[RECORD_URL_ENV])


@app.task(name="sample.record")
def record(key: str, value: str) -> str:
    """Appends `value` to the Redis list sample:record:<key>; returns `value`."""
    with _recorder() as r:
        r.rpush(RECORD_PREFIX + key, value)
    return value


@app.task(name="sample.sleep")
def sleep(seconds: float, key: str) -> None:
    """Records "started" under `key`, sleeps, then records "finished"."""
    record(key, "started")
    time.sleep(seconds)
    record(key, "finished")
