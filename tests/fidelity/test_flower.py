"""The rendered Flower serves its probe path and enforces basic auth on its API."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from celery import Celery

from celery_operator.api.celeryapp import CeleryApp
from celery_operator.render.celeryworkerpool import build_worker_deployment
from celery_operator.render.flower import build_flower_deployment
from tests.fidelity.support import (
    FLOWER_AUTH_SECRET,
    FLOWER_CREDENTIALS,
    LocalProcess,
    RunContainer,
    container_of,
    local_node,
    make_flower,
    make_pool,
    secret_key_ref,
    wait_for,
    wait_worker_ready,
)
from tests.support import metrics_contract as contract
from tests.support.brokers import HOST, free_port
from tests.support.metrics import samples

pytestmark = pytest.mark.fidelity

AUTH_REF = {"secretRef": secret_key_ref(FLOWER_AUTH_SECRET)}


def start_flower(
    app: CeleryApp, run_container: RunContainer, **spec: Any
) -> tuple[dict[str, Any], LocalProcess, str]:
    """Flower rendered with `spec`, started; its container, process and base URL."""
    flower = make_flower(free_port(), **spec)
    container = container_of(build_flower_deployment(app, flower, None))
    port = container["ports"][0]["containerPort"]
    assert f"--port={port}" in container["args"]
    # Rendered without --address, so Flower listens on every interface of the pod (IPv4
    # and IPv6); here it listens on loopback only.
    assert not any(a.startswith("--address") for a in container["args"]), container["args"]
    proc = run_container({**container, "args": [*container["args"], f"--address={HOST}"]})
    return container, proc, f"http://{HOST}:{port}"


def wait_serving(proc: LocalProcess, url: str) -> httpx.Response:
    def get() -> httpx.Response | None:
        try:
            return httpx.get(url, timeout=2)
        except httpx.TransportError:
            return None

    response = wait_for(get, 30, f"Flower to answer {url}", alive=(proc,))
    assert response is not None
    return response


def test_flower_basic_auth(celery_app: CeleryApp, run_container: RunContainer) -> None:
    container, flower, base = start_flower(celery_app, run_container, basicAuth=AUTH_REF)
    health_path = container["readinessProbe"]["httpGet"]["path"]
    assert health_path == container["livenessProbe"]["httpGet"]["path"] == "/healthcheck"

    # The kubelet's probes carry no credentials: the health path must not need them.
    health = wait_serving(flower, base + health_path)
    assert health.status_code == 200, health.text
    assert health.text == "OK"

    api = base + "/api/workers"
    assert httpx.get(api, timeout=10).status_code == 401
    assert httpx.get(api, auth=("admin", "wrong"), timeout=10).status_code == 401
    ok = httpx.get(api, auth=FLOWER_CREDENTIALS, timeout=10)
    assert ok.status_code == 200, ok.text
    assert isinstance(ok.json(), dict)
    # The UI itself is protected too.
    assert httpx.get(base + "/", timeout=10).status_code == 401

    # Flower watches the rendered broker: it sees a rendered worker of the app.
    pool = make_pool()
    worker = run_container(
        container_of(build_worker_deployment(celery_app, pool, None, replicas=1))
    )
    wait_worker_ready(worker, local_node(pool))

    def flower_sees_worker() -> bool:
        r = httpx.get(api, params={"refresh": "1"}, auth=FLOWER_CREDENTIALS, timeout=10)
        return r.status_code == 200 and local_node(pool) in r.json()

    wait_for(flower_sees_worker, 30, "Flower to list the worker", alive=(flower, worker))


def test_flower_metrics_are_the_ones_the_dashboard_queries(
    celery_app: CeleryApp, run_container: RunContainer, producer: Celery
) -> None:
    """Flower's /metrics (scraped by the chart's PodMonitor, without credentials even when
    basic auth is on) carries the task outcomes the dashboard shows, under the names and
    labels of tests/support/metrics_contract.py. Flower turns the workers' task events on
    itself (its enable_events), so the workers need no setting for it."""
    container, flower, base = start_flower(celery_app, run_container, basicAuth=AUTH_REF)
    wait_serving(flower, base + container["livenessProbe"]["httpGet"]["path"])
    pool = make_pool(queues=["metrics"])
    worker = run_container(
        container_of(build_worker_deployment(celery_app, pool, None, replicas=1))
    )
    wait_worker_ready(worker, local_node(pool))

    def scraped() -> str | None:
        producer.send_task("sample.record", args=["metrics", "ran"], queue="metrics")
        r = httpx.get(base + "/metrics", timeout=10)
        assert r.status_code == 200, r.status_code  # no credentials needed
        return r.text if 'type="task-succeeded"' in r.text else None

    text = wait_for(
        scraped, 60, "a task-succeeded event in Flower's metrics", alive=(flower, worker)
    )
    assert text is not None
    exported: dict[str, set[str]] = {}
    for name, labels, _ in samples(text):
        exported.setdefault(name, set()).update(k for k, _ in labels)
    for name, m in contract.CONTRACT.items():
        if m.source != "flower":
            continue
        assert name in exported, f"{name}: queried by the dashboard, not exported by Flower"
        assert exported[name] == set(m.labels), f"{name}: {exported[name]} != {set(m.labels)}"


def test_flower_url_prefix(celery_app: CeleryApp, run_container: RunContainer) -> None:
    container, flower, base = start_flower(
        celery_app, run_container, urlPrefix="/ops/flower/", basicAuth=AUTH_REF
    )
    health_path = container["readinessProbe"]["httpGet"]["path"]
    assert health_path == "/ops/flower/healthcheck"

    health = wait_serving(flower, base + health_path)
    assert health.status_code == 200, health.text
    assert health.text == "OK"
    assert httpx.get(base + "/healthcheck", timeout=10).status_code == 404

    api = base + "/ops/flower/api/workers"
    assert httpx.get(api, timeout=10).status_code == 401
    assert httpx.get(api, auth=FLOWER_CREDENTIALS, timeout=10).status_code == 200


def test_flower_without_auth(celery_app: CeleryApp, run_container: RunContainer) -> None:
    container, flower, base = start_flower(celery_app, run_container, basicAuth=None)
    assert all(e["name"] != "FLOWER_BASIC_AUTH" for e in container["env"])
    health = wait_serving(flower, base + container["livenessProbe"]["httpGet"]["path"])
    assert health.status_code == 200, health.text
    # Without auth, Flower's own default keeps the API closed (FLOWER_UNAUTHENTICATED_API).
    assert httpx.get(base + "/api/workers", timeout=10).status_code == 401
    assert httpx.get(base + "/", timeout=10).status_code == 200
