"""The Celery metrics of /metrics, computed at scrape time from what the operator holds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from celery_operator.api.kinds import APP, FLOWER, POOL
from celery_operator.brokerurl import parse_broker_url
from celery_operator.controllers.cache import Cache
from celery_operator.controllers.context import Context
from celery_operator.controllers.metrics import CeleryCollector
from celery_operator.controllers.runtime import WorkQueue
from celery_operator.plans.workers import PodView
from celery_operator.scaling.decision import Policy
from celery_operator.scaling.scaler import BuiltinScaler, Target
from celery_operator.scaling.workers import Heartbeat, PoolHeartbeats

NOW = 10_000.0


def obj(kind: str, ns: str, name: str, ready: str | None, reason: str = "", **spec: Any) -> Any:
    body: dict[str, Any] = {
        "apiVersion": "celeryproject.org/v1alpha1",
        "kind": kind,
        "metadata": {"namespace": ns, "name": name, "uid": f"uid-{name}"},
        "spec": spec,
    }
    if ready is not None:
        body["status"] = {"conditions": [{"type": "Ready", "status": ready, "reason": reason}]}
    return body


class Lengths:
    def __init__(self, lengths: Sequence[int]) -> None:
        self.lengths = list(lengths)

    def queue_lengths(self, queues: Sequence[str]) -> list[int]:
        return self.lengths[: len(queues)]

    def close(self) -> None:
        pass


class Heard:
    def __init__(self, heard: dict[tuple[str, str], PoolHeartbeats]) -> None:
        self.heard = heard

    def all_heartbeats(self) -> dict[tuple[str, str], PoolHeartbeats]:
        return self.heard


def scrape(ctx: Context) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(CeleryCollector(ctx, clock=lambda: NOW))
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def labels(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


def context() -> Context:
    ctx = Context(cache=Cache(), queue=WorkQueue({}), keda=lambda: False)  # type: ignore[arg-type]
    ctx.cache.put(APP.name, ("shop", "shop"), obj("CeleryApp", "shop", "shop", "True", "Ready"))
    team = obj(
        "CeleryWorkerPool",
        "team-a",
        "emails",
        "False",
        "Progressing",
        appRef={"name": "shop", "namespace": "shop"},
        queues=["emails", "emails.priority"],
        autoscaling={"minReplicas": 1, "maxReplicas": 10},
    )
    team["status"].update(replicas=3, readyReplicas=2)
    ctx.cache.put(POOL.name, ("team-a", "emails"), team)
    ctx.cache.put(
        FLOWER.name,
        ("shop", "flower"),
        obj("Flower", "shop", "flower", None, appRef={"name": "shop"}),
    )
    return ctx


def test_pool_series_carry_the_app_and_the_pool() -> None:
    ctx = context()
    pool = labels(namespace="team-a", app_namespace="shop", app="shop", pool="emails")
    got = scrape(ctx)
    assert got[("celery_operator_pool_replicas", labels(**dict(pool), which="desired"))] == 3
    assert got[("celery_operator_pool_replicas", labels(**dict(pool), which="ready"))] == 2
    assert got[("celery_operator_pool_replicas", labels(**dict(pool), which="max"))] == 10
    assert got[("celery_operator_pool_replicas", labels(**dict(pool), which="min"))] == 1
    ready = {k[1]: v for k, v in got.items() if k[0] == "celery_operator_ready"}
    assert ready == {
        labels(kind="CeleryApp", namespace="shop", name="shop", app_namespace="shop", app="shop", reason="Ready"): 1,
        labels(kind="CeleryWorkerPool", namespace="team-a", name="emails", app_namespace="shop", app="shop", reason="Progressing"): 0,
        labels(kind="Flower", namespace="shop", name="flower", app_namespace="shop", app="shop", reason="Pending"): 0,
    }  # fmt: skip
    # Nothing measured or heard yet: no queue, worker or broker figure (not a zero).
    names = {k[0] for k in got}
    assert not names & {
        "celery_operator_pool_waiting_tasks",
        "celery_operator_pool_broker_up",
        "celery_operator_pool_workers",
    }


def test_queues_workers_and_decisions_follow_what_the_operator_measured() -> None:
    ctx = context()
    probe = Lengths([7, 2])
    ctx.scaler = BuiltinScaler(on_change=lambda k: None, probe_for=lambda t: probe)
    key = ("team-a", "emails")
    broker = parse_broker_url("redis://redis.shop:6379/0")
    t = Target(key, broker, "id", ("emails", "emails.priority"), Policy(1, 10, 1), 5.0)
    ctx.scaler.track(t, current=3)
    ctx.scaler.poll(key)
    ctx.cache.set_worker_pod(key, "w1", PodView("w1", created=NOW - 600))
    ctx.cache.set_worker_pod(key, "w2", PodView("w2", created=NOW - 600))
    ctx.cache.set_worker_pod(key, "w3", PodView("w3", created=NOW - 600, draining_since="x"))
    beats = {"w1": Heartbeat(active=4, freq=2, age=1), "w2": Heartbeat(0, 2, 1, idle_for=60)}
    ctx.monitors = Heard({key: PoolHeartbeats(known=True, beats=beats)})  # type: ignore[assignment]
    pool = {"namespace": "team-a", "app_namespace": "shop", "app": "shop", "pool": "emails"}
    got = scrape(ctx)
    wait = "celery_operator_pool_waiting_tasks"
    assert got[(wait, labels(**pool, queue="emails"))] == 7
    assert got[(wait, labels(**pool, queue="emails.priority"))] == 2
    assert got[("celery_operator_pool_broker_up", labels(**pool))] == 1
    workers = {k[1]: v for k, v in got.items() if k[0] == "celery_operator_pool_workers"}
    assert {dict(k)["state"]: v for k, v in workers.items()} == {
        "online": 2,
        "busy": 1,
        "unknown": 1,  # w3: no heartbeat for 10 minutes
        "draining": 1,
    }
    assert got[("celery_operator_pool_active_tasks", labels(**pool))] == 4
    scaled = "celery_operator_scaler_scale_events_total"
    assert got[(scaled, labels(**pool, direction="up"))] == 1, "3 -> 9 replicas"
    # A broker that cannot be read: broker_up 0, and no stale queue figure.
    ctx.scaler._probes.clear()
    ctx.scaler.probe_for = lambda t: (_ for _ in ()).throw(RuntimeError("down"))
    ctx.scaler.poll(key)
    got = scrape(ctx)
    assert got[("celery_operator_pool_broker_up", labels(**pool))] == 0
    assert not [k for k in got if k[0] == wait]
    # Not heard (the broker monitor is not connected): no worker figures at all.
    ctx.monitors = Heard({key: PoolHeartbeats(known=False, error="down")})  # type: ignore[assignment]
    assert not [k for k in scrape(ctx) if k[0] == "celery_operator_pool_workers"]


def test_a_deleted_pool_takes_its_series_with_it() -> None:
    ctx = context()
    ctx.scaler = BuiltinScaler(on_change=lambda k: None, probe_for=lambda t: Lengths([1, 1]))
    key = ("team-a", "emails")
    broker = parse_broker_url("redis://redis.shop:6379/0")
    t = Target(key, broker, "id", ("emails", "emails.priority"), None, 30.0)
    ctx.scaler.track(t, current=3)
    ctx.scaler.poll(key)
    assert any(k[0] == "celery_operator_pool_waiting_tasks" for k in scrape(ctx))
    assert not any(k[0] == "celery_operator_scaler_scale_events_total" for k in scrape(ctx))
    ctx.cache.put(POOL.name, key, None)
    got = scrape(ctx)
    assert not [
        k for k in got if dict(k[1]).get("pool") == "emails" or dict(k[1]).get("name") == "emails"
    ]


def test_thread_groups_drop_the_pool_numbers() -> None:
    from celery_operator.controllers.metrics import thread_group

    assert thread_group("reconcile_12") == "reconcile"
    assert thread_group("scaler_0") == "scaler"
    assert thread_group("watch-deployments") == "watch-deployments"
    assert thread_group("MainThread") == "MainThread"
    assert thread_group("Thread-3 (serve_forever)") == "other"
    assert thread_group("broker_monitor") == "broker_monitor"


def test_thread_cpu_is_read_for_the_live_threads() -> None:
    import threading

    from celery_operator.controllers.metrics import ThreadCpuCollector

    stop = threading.Event()
    worker = threading.Thread(target=lambda: (sum(range(3_000_000)), stop.wait()), name="busy_0")
    worker.start()
    try:
        for _ in range(200):  # the sum takes a few tens of milliseconds of CPU
            family = next(iter(ThreadCpuCollector().collect()))
            groups = {s.labels["thread"]: s.value for s in family.samples}
            if groups.get("busy", 0) > 0:
                break
            stop.wait(0.05)
        assert "MainThread" in groups
        assert groups["busy"] > 0
    finally:
        stop.set()
        worker.join()
