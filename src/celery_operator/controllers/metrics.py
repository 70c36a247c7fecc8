"""Celery's figures on the operator's /metrics, with no exporter beside it.

Computed at each scrape from what the operator already holds (`CeleryCollector`): the
objects and their statuses (its informers' cache), the workers' heartbeats (its broker
monitors) and the queue lengths (its scaler, which measures every pool's queues when
`--celery-metrics-interval` is on). Nothing is kept for the metrics alone, so a deleted
pool's series go with it, and a standby replica (empty cache) exports none of them.

Labels are stable: `namespace` (of the object), `app_namespace` and `app` (its CeleryApp),
`pool`, `queue`. Worker and task figures come from Celery's worker heartbeats; task
outcomes are Flower's (its /metrics, scraped by the chart's PodMonitor): counting every
task's events here would route each task's events through the operator.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from celery_operator.api.kinds import APP, FLOWER, POOL, Key, flower_app_key, pool_app_key
from celery_operator.plans.workers import workers_status

if TYPE_CHECKING:
    from celery_operator.controllers.context import Context

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

POOL_LABELS = ["namespace", "app_namespace", "app", "pool"]
WORKER_STATES = ("online", "busy", "unknown", "draining")


def _ready(body: Mapping[str, Any]) -> tuple[int, str]:
    for c in (body.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return int(c.get("status") == "True"), str(c.get("reason") or "")
    return 0, "Pending"  # not reconciled yet


class CeleryCollector(Collector):
    """The Celery metrics of every object the operator holds, computed at scrape time."""

    def __init__(self, ctx: Context, clock: Any = time.time) -> None:
        self.ctx = ctx
        self.clock = clock

    def describe(self) -> Iterable[Metric]:
        return []  # collected only when scraped

    def collect(self) -> Iterator[Metric]:
        ctx = self.ctx
        pools = ctx.cache.items(POOL.name)
        labels: dict[Key, list[str]] = {}
        for key, body in pools:
            app_ns, app = pool_app_key(body)
            labels[key] = [key[0], app_ns, app, key[1]]

        ready = GaugeMetricFamily(
            "celery_operator_ready",
            "1 when the object's Ready condition is True, else 0 (reason: the condition's)",
            labels=["kind", "namespace", "name", "app_namespace", "app", "reason"],
        )
        for key, body in ctx.cache.items(APP.name):
            ok, reason = _ready(body)
            ready.add_metric([APP.name, key[0], key[1], key[0], key[1], reason], ok)
        for key, body in pools:
            ok, reason = _ready(body)
            ready.add_metric([POOL.name, key[0], key[1], *labels[key][1:3], reason], ok)
        for key, body in ctx.cache.items(FLOWER.name):
            ok, reason = _ready(body)
            ready.add_metric([FLOWER.name, key[0], key[1], *flower_app_key(body), reason], ok)
        yield ready

        replicas = GaugeMetricFamily(
            "celery_operator_pool_replicas",
            "A pool's worker replicas: desired (the Deployment's, whoever decided them), "
            "ready, and the autoscaling bounds min and max",
            labels=[*POOL_LABELS, "which"],
        )
        for key, body in pools:
            st = body.get("status") or {}
            replicas.add_metric([*labels[key], "desired"], int(st.get("replicas") or 0))
            replicas.add_metric([*labels[key], "ready"], int(st.get("readyReplicas") or 0))
            auto = (body.get("spec") or {}).get("autoscaling")
            if auto:
                for which, field in (("min", "minReplicas"), ("max", "maxReplicas")):
                    if auto.get(field) is not None:
                        replicas.add_metric([*labels[key], which], int(auto[field]))
        yield replicas

        yield from self._workers(labels)
        yield from self._queues(labels)

    def _workers(self, labels: Mapping[Key, list[str]]) -> Iterator[Metric]:
        workers = GaugeMetricFamily(
            "celery_operator_pool_workers",
            "Worker pods of a pool by what their heartbeats say: online (heartbeats "
            "arrive), busy (running tasks), unknown (no recent heartbeat: never treated as "
            "idle), draining (told to stop consuming before a scale-down)",
            labels=[*POOL_LABELS, "state"],
        )
        active = GaugeMetricFamily(
            "celery_operator_pool_active_tasks",
            "Tasks a pool's workers run, as their last heartbeats say",
            labels=POOL_LABELS,
        )
        heard = {} if self.ctx.monitors is None else self.ctx.monitors.all_heartbeats()
        now = self.clock()
        for key, hb in heard.items():
            if key not in labels or not hb.known:
                continue  # unknown: no figure rather than a zero that looks like idle
            pods = self.ctx.cache.worker_pods_of(key)
            draining = sum(1 for p in pods if p.draining_since and not p.deleting)
            ws = workers_status(pods, hb, now, draining)
            for state in WORKER_STATES:
                workers.add_metric([*labels[key], state], int(ws[state]))
            active.add_metric(labels[key], int(ws["activeTasks"]))
        yield workers
        yield active

    def _queues(self, labels: Mapping[Key, list[str]]) -> Iterator[Metric]:
        waiting = GaugeMetricFamily(
            "celery_operator_pool_waiting_tasks",
            "Tasks waiting in a queue of a pool, at the last poll of its broker",
            labels=[*POOL_LABELS, "queue"],
        )
        up = GaugeMetricFamily(
            "celery_operator_pool_broker_up",
            "1 when the last poll of the pool's broker succeeded, 0 when it failed",
            labels=POOL_LABELS,
        )
        scaled = CounterMetricFamily(
            "celery_operator_scaler_scale_events",
            "Replica changes the built-in scaler decided, by direction",
            labels=[*POOL_LABELS, "direction"],
        )
        for m in [] if self.ctx.scaler is None else self.ctx.scaler.measured():
            if m.key not in labels:
                continue
            if m.lengths is not None:
                for queue, n in zip(m.queues, m.lengths, strict=False):
                    waiting.add_metric([*labels[m.key], queue], max(0, n))
            if m.broker_up is not None:
                up.add_metric(labels[m.key], int(m.broker_up))
            if m.scaling:
                for direction, n in m.scaled:
                    scaled.add_metric([*labels[m.key], direction], n)
        yield waiting
        yield up
        yield scaled


def thread_group(name: str) -> str:
    """A thread's name without the number a pool gives it ("reconcile_3" -> "reconcile");
    unnamed threads ("Thread-4 (serve_forever)") are "other"."""
    if name.startswith("Thread-"):
        return "other"
    head, _, tail = name.rpartition("_")
    return head if head and tail.isdigit() else name


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) of this process's live threads, by `thread_group`: where
    the operator's CPU goes (reconciles, informers, the broker monitor, the Lease...)."""
    import os
    import threading
    from pathlib import Path

    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for t in threading.enumerate():
        try:
            raw = Path(f"/proc/self/task/{t.native_id}/stat").read_bytes()
            fields = raw.rsplit(b")", 1)[1].split()
        except (OSError, TypeError):  # ended, or not started
            continue
        group = thread_group(t.name)
        out[group] = out.get(group, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


class ThreadCpuCollector(Collector):
    """`celery_operator_thread_cpu_seconds_total{thread}`, read from /proc at each scrape."""

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "celery_operator_thread_cpu_seconds",
            "CPU seconds of the operator's live threads, by group (MainThread is the event loop)",
            labels=["thread"],
        )
        for group, seconds in sorted(thread_cpu_seconds().items()):
            family.add_metric([group], seconds)
        yield family
