"""A tiny Celery app whose workers test_broker_monitor.py runs as real processes.

The broker comes from CELERY_BROKER_URL (Celery reads it itself) and the kombu transport
options from MONITORAPP_TRANSPORT_OPTIONS (JSON), as an app's `broker_transport_options`:
the monitor is given the same options, as the operator gives it `spec.broker`'s.
"""

from __future__ import annotations

import json
import os
import time

from celery import Celery

TRANSPORT_OPTIONS_ENV = "MONITORAPP_TRANSPORT_OPTIONS"
SLEEP = "monitorapp.sleep"

app = Celery("monitorapp")
app.conf.update(
    broker_transport_options=json.loads(os.environ.get(TRANSPORT_OPTIONS_ENV) or "{}"),
    broker_connection_retry_on_startup=True,
    # Worker events (heartbeats, online, offline) only: no task events.
    worker_send_task_events=False,
    # One task at a time, none reserved ahead: a waiting task stays in its queue.
    worker_prefetch_multiplier=1,
)


@app.task(name=SLEEP)
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
