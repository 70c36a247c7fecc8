"""Celery's figures on the operator's /metrics, against a real Redis and real Celery workers.

The operator (the session's, run with `--celery-metrics-interval=2`) measures every
pool's queues and listens to every pool's workers, scaled or not. Its pods are kwok's, so
the worker is a real `celery worker` process on this machine that names itself after one
of the pool's pods, as the operator renders `--hostname=<pool>.<namespace>@<pod>`. The
series are read from a scrape of /metrics, parsed by prometheus_client's own parser.
"""

from __future__ import annotations

import json
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.e2e.test_controllers import app, pool, secret
from tests.fidelity.support import LocalContainer, LocalProcess
from tests.integration import monitorapp
from tests.support import metrics_contract as contract
from tests.support.brokers import RedisServer
from tests.support.cluster import Cluster, wait_for
from tests.support.metrics import Labels, samples
from tests.support.operator import OperatorProcess, WebhookProcess
from tests.support.webhook import serving_webhook

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.broker]

RUN_QUEUE = "emails-run"  # what the real worker consumes (the tasks in "emails" stay)


@pytest.fixture(scope="module")
def redis_broker() -> Iterator[RedisServer]:
    with RedisServer(password="m3trics-pw") as r:
        yield r


def series(op: OperatorProcess, metric: str, **match: str) -> dict[Labels, float]:
    """The samples of `metric` whose labels include `match`."""
    return {
        labels: value
        for n, labels, value in samples(op.metrics())
        if n == metric and match.items() <= dict(labels).items()
    }


def one(op: OperatorProcess, metric: str, **match: str) -> float | None:
    found = series(op, metric, **match)
    assert len(found) <= 1, f"{metric}{match}: several series {found}"
    return next(iter(found.values()), None)


def start_worker(url: str, node: str, workdir: Path) -> LocalProcess:
    container: dict[str, Any] = {
        "name": "worker",
        "command": ["celery"],
        "args": [
            "-A",
            "tests.integration.monitorapp",
            "worker",
            f"--hostname={node}",
            f"--queues={RUN_QUEUE}",
            "--concurrency=1",
            "--without-mingle",
            "--without-gossip",
            "--loglevel=INFO",
        ],
        "env": [
            {"name": "CELERY_BROKER_URL", "value": url},
            {"name": monitorapp.TRANSPORT_OPTIONS_ENV, "value": json.dumps({})},
        ],
    }
    return LocalProcess(LocalContainer(container, {}, workdir), workdir / "worker.log")


@pytest.fixture(scope="module")
def webhook(cluster: Cluster, crds: list[str]) -> Iterator[WebhookProcess]:
    yield from serving_webhook(cluster)


def scrape_webhook(wh: WebhookProcess) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # its certificate names the admission Service
    with urllib.request.urlopen(f"https://127.0.0.1:{wh.port}/metrics", context=ctx) as r:
        return str(r.read().decode())


def test_the_dashboard_and_alerts_query_what_is_really_exported(
    cluster: Cluster,
    operator: OperatorProcess,
    webhook: WebhookProcess,
    namespace: str,
    redis_broker: RedisServer,
) -> None:
    """The other side of tests/support/metrics_contract.py (the names and labels the
    chart's dashboard and PrometheusRule query): a real scrape of the operator, after a
    built-in scale-up, and of the webhook, after a denial, shows each of them with exactly
    those labels."""
    cluster.apply(
        [
            secret(namespace, url=redis_broker.url),
            app(namespace, beat={"enabled": False}),
            pool(
                namespace,
                "bursty",
                queues=["bursty"],
                autoscaling={
                    "minReplicas": 1,
                    "maxReplicas": 3,
                    "queueLength": {"engine": "builtin", "pollingIntervalSeconds": 1},
                },
            ),
        ]
    )
    redis_broker.client().lpush("bursty", *["t"] * 50)
    wait_for(
        "a built-in scale-up",
        lambda: one(
            operator,
            "celery_operator_scaler_scale_events_total",
            pool="bursty",
            namespace=namespace,
            direction="up",
        ),
    )
    wait_for(  # the broker monitor heard the pool (no workers: zeros, not "unknown")
        "the workers' figures",
        lambda: one(operator, "celery_operator_pool_active_tasks", pool="bursty") is not None,
    )
    bad = app(namespace, "leaky", beat={"enabled": False})
    bad["spec"]["broker"]["url"] = {"value": "redis://:hunter2@redis:6379/0"}
    denied = cluster.run("apply", "-f", "-", input=json.dumps(bad))
    assert "denied the request" in denied.stderr, denied.stderr
    exported: dict[str, set[frozenset[str]]] = {}
    for text in (operator.metrics(), scrape_webhook(webhook)):
        for name, labels, _ in samples(text):
            exported.setdefault(name, set()).add(frozenset(k for k, _ in labels))
    for name in sorted(contract.CONTRACT):
        m = contract.CONTRACT[name]
        if m.source == "flower":
            continue  # Flower's own names: tests/fidelity/test_flower.py
        assert name in exported, f"{name}: queried by the dashboard or alerts, not exported"
        assert exported[name] == {m.labels}, f"{name}: labels {exported[name]} != {m.labels}"


def test_queue_and_worker_series_follow_the_broker_and_the_workers(
    cluster: Cluster,
    operator: OperatorProcess,
    namespace: str,
    redis_broker: RedisServer,
    tmp_path: Path,
) -> None:
    """A pool no autoscaler scales and whose busy workers are not protected: nothing but
    the metrics needs its broker, and still its backlog, its workers and their tasks show."""
    r = redis_broker.client()
    unprotected = {"protectBusyWorkers": False}
    cluster.apply(
        [
            secret(namespace, url=redis_broker.url),
            app(namespace, beat={"enabled": False}),
            pool(namespace, "emails", queues=["emails"], replicas=1, scaleDown=unprotected),
        ]
    )
    cluster.wait("--for=condition=Ready", "cwp/emails", "-n", namespace, timeout=60)
    of = {"namespace": namespace, "app_namespace": namespace, "app": "shop", "pool": "emails"}
    waiting = "celery_operator_pool_waiting_tasks"

    wait_for("the empty queue measured", lambda: one(operator, waiting, queue="emails", **of) == 0)
    assert one(operator, "celery_operator_pool_broker_up", **of) == 1
    assert one(operator, "celery_operator_pool_replicas", which="desired", **of) == 1
    ready = one(operator, "celery_operator_ready", kind="CeleryWorkerPool", namespace=namespace)
    assert ready == 1
    assert not series(operator, "celery_operator_pool_replicas", which="max", **of), "not scaled"

    r.lpush("emails", *["t"] * 17)
    wait_for("17 waiting", lambda: one(operator, waiting, queue="emails", **of) == 17)
    r.rpop("emails", 5)
    wait_for("12 waiting", lambda: one(operator, waiting, queue="emails", **of) == 12)

    # A real worker, named after the pool's one (kwok) pod: online, then busy with a task.
    pods = cluster.kubectl(
        "get", "pods", "-n", namespace, "-l", "celeryproject.org/pool=emails", "-o", "name"
    ).split()
    assert len(pods) == 1, pods
    pod = pods[0].removeprefix("pod/")
    worker = start_worker(redis_broker.url, f"emails.{namespace}@{pod}", tmp_path / "w")
    workers = "celery_operator_pool_workers"
    try:
        wait_for(
            "the worker online and idle",
            lambda: (
                (
                    one(operator, workers, state="online", **of),
                    one(operator, workers, state="busy", **of),
                )
                == (1, 0)
            ),
            timeout=90,
        )
        client = Celery("metrics-client", broker=redis_broker.url)
        sent = client.send_task(monitorapp.SLEEP, args=(8,), queue=RUN_QUEUE)
        wait_for(
            "the worker busy with one task",
            lambda: (
                (
                    one(operator, workers, state="busy", **of),
                    one(operator, "celery_operator_pool_active_tasks", **of),
                )
                == (1, 1)
            ),
            timeout=30,
        )
        wait_for(
            "the task done",
            lambda: one(operator, "celery_operator_pool_active_tasks", **of) == 0,
            timeout=30,
        )
        # 1 sent, 1 received, 1 completed; none duplicated or killed.
        assert worker.log().count(f"Task {monitorapp.SLEEP}[{sent.id}] received") == 1
        assert worker.log().count(f"Task {monitorapp.SLEEP}[{sent.id}] succeeded") == 1
        # Its heartbeats stop: unknown (never counted as idle), then it is gone.
        worker.proc.kill()
        worker.proc.wait(timeout=10)
        wait_for(
            "the killed worker unknown",
            lambda: one(operator, workers, state="unknown", **of) == 1,
            timeout=30,
        )
        assert one(operator, workers, state="online", **of) == 0
    finally:
        if worker.running():
            worker.proc.kill()

    # The broker goes away: broker_up 0, and no stale backlog figure.
    redis_broker.stop()
    wait_for("the broker down", lambda: one(operator, "celery_operator_pool_broker_up", **of) == 0)
    assert one(operator, waiting, queue="emails", **of) is None

    # A deleted pool takes its series with it.
    cluster.kubectl("delete", "cwp", "emails", "-n", namespace, "--wait=true")
    wait_for(
        "no series of the deleted pool",
        lambda: (
            not [
                s
                for s in samples(operator.metrics())
                if dict(s[1]).get("pool") == "emails" and dict(s[1]).get("namespace") == namespace
            ]
        ),
    )
