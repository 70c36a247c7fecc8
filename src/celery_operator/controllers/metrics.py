"""The pools' Prometheus metrics: workers online, busy and unknown, the tasks they run,
desired and current replicas, drains, and the operator's writes to worker pods."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge

from celery_operator.api.kinds import Key
from celery_operator.plans.workers import WorkerPlan

WORKERS = Gauge(
    "celery_operator_pool_workers",
    "Worker pods of a pool by their load (online = heartbeats arrive; busy = running tasks; "
    "unknown = no recent heartbeat, never treated as idle; draining = told to stop consuming)",
    ["namespace", "pool", "state"],
)
ACTIVE = Gauge(
    "celery_operator_pool_active_tasks", "Tasks a pool's workers run", ["namespace", "pool"]
)
REPLICAS = Gauge(
    "celery_operator_pool_replicas",
    "A pool's replicas: desired (what the operator applies or an autoscaler wants) and ready",
    ["namespace", "pool", "which"],
)
DRAINS = Counter(
    "celery_operator_drains_total",
    "Drains of busy workers before a scale-down, by outcome "
    "(started, completed, timed_out, abandoned)",
    ["outcome"],
)
POD_WRITES = Counter(
    "celery_operator_worker_pod_writes_total",
    "Writes of deletion costs and drain marks to worker pods",
)
STATES = ("online", "busy", "unknown", "draining")


def record(key: Key, status: Mapping[str, Any], wp: WorkerPlan | None) -> None:
    workers = status.get("workers")
    if workers:
        for state in STATES:
            WORKERS.labels(*key, state).set(int(workers.get(state, 0)))
        ACTIVE.labels(*key).set(int(workers.get("activeTasks", 0)))
    REPLICAS.labels(*key, "desired").set(int(status.get("replicas") or 0))
    REPLICAS.labels(*key, "ready").set(int(status.get("readyReplicas") or 0))


def forget(key: Key) -> None:
    """A deleted pool's series go with it."""
    for gauge, extra in ((WORKERS, STATES), (REPLICAS, ("desired", "ready"))):
        for value in extra:
            with contextlib.suppress(KeyError):
                gauge.remove(*key, value)
    with contextlib.suppress(KeyError):
        ACTIVE.remove(*key)
