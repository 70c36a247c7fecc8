"""The rendered worker consumes exactly its pool's queues, with the rendered connections."""

from __future__ import annotations

import pytest
import redis
from celery import Celery

from celery_operator.api.celeryapp import CeleryApp
from celery_operator.render.celeryworkerpool import build_worker_deployment
from tests.fidelity.support import (
    BACKEND_SECRET,
    BROKER_SECRET,
    RunContainer,
    container_of,
    local_node,
    make_pool,
    records,
    secret_key_ref,
    wait_for,
)
from tests.support import objects as o
from tests.support.brokers import RedisServer

pytestmark = pytest.mark.fidelity

QUEUES = ["fidelity", "fidelity.second"]


def test_worker_consumes_its_queues_and_ignores_others(
    celery_app: CeleryApp,
    run_container: RunContainer,
    producer: Celery,
    redis_client: redis.Redis,
) -> None:
    pool = make_pool(queues=QUEUES)
    container = container_of(build_worker_deployment(celery_app, pool, None, replicas=1))
    assert f"--queues={','.join(QUEUES)}" in container["args"]
    broker_ref = {"secretKeyRef": secret_key_ref(BROKER_SECRET)}
    assert {"name": "CELERY_BROKER_URL", "valueFrom": broker_ref} in container["env"]

    # Sent before the worker starts: the one for another queue waits in its list, so
    # once the later ones have run, "not consumed" is a fact rather than a guess.
    producer.send_task("sample.record", args=["other", "ran"], queue="not-ours")
    producer.send_task("sample.record", args=["first", "ran"], queue=QUEUES[0])
    producer.send_task("sample.record", args=["second", "ran"], queue=QUEUES[1])
    worker = run_container(container)

    wait_for(lambda: records(redis_client, "first"), 30, "the task on queue 1", alive=(worker,))
    wait_for(lambda: records(redis_client, "second"), 30, "the task on queue 2", alive=(worker,))
    assert records(redis_client, "first") == ["ran"]
    assert records(redis_client, "second") == ["ran"]
    assert records(redis_client, "other") == []
    assert redis_client.llen("not-ours") == 1, "the other queue's message was taken"
    assert f"{local_node(pool)} ready." in worker.log()


def test_worker_stores_results_in_the_rendered_backend(
    celery_app: CeleryApp,
    run_container: RunContainer,
    redis_server: RedisServer,
    redis_client: redis.Redis,
) -> None:
    """CELERY_RESULT_BACKEND (from its Secret) is where the worker writes results."""
    container = container_of(
        build_worker_deployment(celery_app, make_pool(queues=QUEUES), None, replicas=1)
    )
    ref = {"secretKeyRef": secret_key_ref(BACKEND_SECRET)}
    assert {"name": "CELERY_RESULT_BACKEND", "valueFrom": ref} in container["env"]
    client = Celery(
        "fidelity-results", broker=redis_server.url, backend=redis_server.url, set_as_current=False
    )
    try:
        worker = run_container(container)
        result = client.send_task("sample.record", args=["result", "42"], queue=QUEUES[0])
        wait_for(result.ready, 30, "the task's result in the backend", alive=(worker,))
        assert result.get(timeout=5) == "42"
    finally:
        client.close()


def test_worker_with_a_literal_broker_url(
    redis_server: RedisServer,
    run_container: RunContainer,
    producer: Celery,
    redis_client: redis.Redis,
) -> None:
    """broker.url.value renders as a plain env value, which works the same."""
    obj = o.example("celeryapp/examples/shop.yaml")
    obj["metadata"]["uid"] = "00000000-0000-0000-0000-000000000001"
    obj["spec"].update(
        app="tests.fidelity.sampleapp:app",
        broker={"url": {"value": redis_server.url}},
        env=[{"name": "SAMPLE_RECORD_URL", "value": redis_server.url}],
    )
    del obj["spec"]["resultBackend"]
    app = CeleryApp.model_validate(obj)
    container = container_of(build_worker_deployment(app, make_pool(), None, replicas=1))
    assert {"name": "CELERY_BROKER_URL", "value": redis_server.url} in container["env"]
    assert all(e["name"] != "CELERY_RESULT_BACKEND" for e in container["env"])
    worker = run_container(container)
    producer.send_task("sample.record", args=["literal", "ran"], queue="celery")
    wait_for(lambda: records(redis_client, "literal"), 30, "the task", alive=(worker,))
