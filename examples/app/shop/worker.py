"""A tiny Celery app, as a team would ship one: the image of examples/app/Dockerfile.

Run by the operator as `celery --app=shop.worker:app worker|beat|flower`; the broker and
result backend come from CELERY_BROKER_URL and CELERY_RESULT_BACKEND, which the operator
sets from the CeleryApp's Secrets (Celery reads both variables itself).

Tasks:
- `shop.add(x, y)`: returns x + y.
- `shop.long(seconds, tag)`: records "started", sleeps, records "finished", returns tag.
- `shop.burn(seconds)`: keeps one CPU busy (for CPU autoscaling).
- `shop.tick()`: what beat sends every SHOP_BEAT_INTERVAL seconds (default 10).

Every task records its start and end in the result backend's Redis, as JSON lines in the
list `shop:events` ({"event", "task", "id", "tag", "host", "pid", "t"}), so a test or a
person can count what started, finished, or ran twice:

    redis-cli lrange shop:events 0 -1

The app acknowledges a task only once it has finished (`task_acks_late`) and prefetches
one task per process: a task a worker cannot finish goes back to its queue instead of
being lost. SHOP_BROKER_TRANSPORT_OPTIONS (JSON) sets its kombu broker transport options.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from celery import Celery, Task

EVENTS_KEY = "shop:events"

# A big application takes seconds to import (Django, models, ...): SHOP_IMPORT_DELAY makes
# this one as slow, for tests of what happens to a worker while it boots.
time.sleep(float(os.environ.get("SHOP_IMPORT_DELAY", "0")))

app = Celery("shop")
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    result_expires=3600,
    beat_schedule={
        "tick": {
            "task": "shop.tick",
            "schedule": float(os.environ.get("SHOP_BEAT_INTERVAL", "10")),
        },
    },
)
# Where the broker keeps messages (kombu transport options: a key prefix, priority steps):
# the CeleryApp's spec.broker.transportOptions says the same, for the operator.
if os.environ.get("SHOP_BROKER_TRANSPORT_OPTIONS"):
    app.conf.broker_transport_options = json.loads(os.environ["SHOP_BROKER_TRANSPORT_OPTIONS"])

_recorder: Any = None


def _record(event: str, task: Task, tag: str = "") -> None:
    """Appends one event to shop:events in the result backend's Redis (if it is Redis)."""
    global _recorder
    url = os.environ.get("SHOP_EVENTS_URL") or os.environ.get("CELERY_RESULT_BACKEND", "")
    if not url.startswith(("redis://", "rediss://")):
        return
    if _recorder is None:
        import redis

        _recorder = redis.Redis.from_url(url)
    line = {
        "event": event,
        "task": task.name,
        "id": task.request.id,
        "tag": tag,
        "host": task.request.hostname or socket.gethostname(),
        "pid": os.getpid(),
        "t": time.time(),
    }
    _recorder.rpush(EVENTS_KEY, json.dumps(line))


@app.task(name="shop.add", bind=True)
def add(self: Task, x: int, y: int) -> int:
    _record("finished", self)
    return x + y


@app.task(name="shop.long", bind=True)
def long(self: Task, seconds: float, tag: str = "") -> str:
    _record("started", self, tag)
    time.sleep(seconds)
    _record("finished", self, tag)
    return tag


@app.task(name="shop.burn", bind=True)
def burn(self: Task, seconds: float) -> int:
    _record("started", self)
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        n += 1
    _record("finished", self)
    return n


@app.task(name="shop.tick", bind=True)
def tick(self: Task) -> float:
    _record("finished", self, "beat")
    return time.time()
