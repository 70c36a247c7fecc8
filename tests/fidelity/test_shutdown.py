"""SIGTERM, as the kubelet sends it to the worker's main process, with a task running.

With shutdown.softShutdownTimeout > 0 the worker's launcher (on Celery >= 5.5) sets
REMAP_SIGTERM=SIGQUIT and `-- worker.soft_shutdown_timeout=N`: SIGTERM starts a cold shutdown preceded by a soft
shutdown of N seconds, so the worker is gone after about N seconds rather than after the
task (or the kubelet's SIGKILL). With 0, SIGTERM is Celery's warm shutdown, which waits for
the running task without limit.
"""

from __future__ import annotations

import signal
import time

import pytest
import redis
from celery import Celery

from celery_operator.api.celeryapp import CeleryApp
from celery_operator.render.celeryworkerpool import build_worker_deployment
from tests.fidelity.support import (
    LocalProcess,
    RunContainer,
    container_of,
    make_pool,
    records,
    wait_for,
)

pytestmark = pytest.mark.fidelity

SOFT_TIMEOUT = 3
TASK_SECONDS = 60
# Celery's own shutdown after the soft timeout (closing the pool, restoring messages)
# takes 1-2 s; well under the task's 60 s.
EXIT_MARGIN = 5
QUEUE = "celery"


def start_with_running_task(
    app: CeleryApp,
    run_container: RunContainer,
    producer: Celery,
    client: redis.Redis,
    soft_timeout: int,
) -> tuple[dict[str, object], LocalProcess]:
    pool = make_pool(queues=[QUEUE], shutdown={"softShutdownTimeout": soft_timeout})
    container = container_of(build_worker_deployment(app, pool, None, replicas=1))
    worker = run_container(container)
    producer.send_task("sample.sleep", args=[TASK_SECONDS, "long"], queue=QUEUE)
    wait_for(lambda: records(client, "long"), 30, "the long task to start", alive=(worker,))
    return container, worker


def test_soft_shutdown_stops_the_worker_after_the_soft_timeout(
    celery_app: CeleryApp,
    run_container: RunContainer,
    producer: Celery,
    redis_client: redis.Redis,
) -> None:
    container, worker = start_with_running_task(
        celery_app, run_container, producer, redis_client, SOFT_TIMEOUT
    )
    assert {
        "name": "CELERY_OPERATOR_SOFT_SHUTDOWN_TIMEOUT",
        "value": str(SOFT_TIMEOUT),
    } in container["env"]
    assert redis_client.llen(QUEUE) == 0  # the worker holds the message

    sent = time.monotonic()
    worker.signal(signal.SIGTERM)
    code = worker.wait_exit(SOFT_TIMEOUT + EXIT_MARGIN)
    took = time.monotonic() - sent
    assert code is not None, f"still running {took:.1f}s after SIGTERM: {worker.describe()}"
    # The running task got its soft timeout before being cut off ...
    assert took >= SOFT_TIMEOUT, f"exited after {took:.1f}s: {worker.describe()}"
    assert f"Initiating Soft Shutdown, terminating in {SOFT_TIMEOUT:.1f} seconds" in worker.log()
    assert records(redis_client, "long") == ["started"]
    # ... and, acks_late, its message went back to the queue for another worker.
    assert redis_client.llen(QUEUE) == 1, worker.describe()


def test_without_soft_shutdown_sigterm_waits_for_the_task(
    celery_app: CeleryApp,
    run_container: RunContainer,
    producer: Celery,
    redis_client: redis.Redis,
) -> None:
    container, worker = start_with_running_task(
        celery_app, run_container, producer, redis_client, 0
    )
    assert "--" not in container["args"]
    assert all(e["name"] != "CELERY_OPERATOR_SOFT_SHUTDOWN_TIMEOUT" for e in container["env"])

    worker.signal(signal.SIGTERM)
    # The same deadline the soft shutdown met: a warm shutdown lets it pass.
    code = worker.wait_exit(SOFT_TIMEOUT + EXIT_MARGIN)
    assert code is None, f"exited with {code}: {worker.describe()}"
    log = worker.log()
    assert "Warm shutdown" in log
    assert "Soft Shutdown" not in log
    assert "Cold shutdown" not in log
