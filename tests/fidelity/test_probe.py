"""The rendered liveness and readiness probes, run in the worker's env against the running
worker.

This module takes its Redis down, so it has a Redis of its own (the fixture is per module).
"""

from __future__ import annotations

import signal
import subprocess

import pytest
import redis
from celery import Celery

from celery_operator.api.celeryapp import CeleryApp
from celery_operator.render.celeryworkerpool import build_worker_deployment
from tests.fidelity.support import (
    LocalProcess,
    RunContainer,
    container_of,
    local_node,
    make_pool,
    wait_worker_ready,
)
from tests.support.brokers import RedisServer

pytestmark = pytest.mark.fidelity

PROBE_TIMEOUT = 2  # probes.liveness.timeoutSeconds: how long a ping may take


def start_worker(app: CeleryApp, run_container: RunContainer) -> tuple[LocalProcess, str]:
    pool = make_pool(probes={"liveness": {"timeoutSeconds": PROBE_TIMEOUT}})
    container = container_of(build_worker_deployment(app, pool, None, replicas=1))
    assert container["livenessProbe"]["exec"]["command"][:2] == ["python", "-c"]
    worker = run_container(container)
    node = local_node(pool)
    wait_worker_ready(worker, node)
    return worker, node


def probe(worker: LocalProcess) -> subprocess.CompletedProcess[str]:
    """Runs the rendered probe command with the rendered kubelet timeout. Over that
    timeout the kubelet counts a failure; here subprocess.TimeoutExpired fails the test."""
    timeout = worker.local.container["livenessProbe"]["timeoutSeconds"]
    return worker.exec(worker.local.probe_command(), timeout=timeout)


def test_probe_passes_for_a_live_worker_and_fails_for_a_dead_one(
    celery_app: CeleryApp, run_container: RunContainer, redis_client: redis.Redis
) -> None:
    worker, node = start_worker(celery_app, run_container)

    ok = probe(worker)
    assert ok.returncode == 0, ok.stdout + ok.stderr

    # A hung worker (stopped, so it cannot answer) fails, while the broker is up.
    worker.signal(signal.SIGSTOP)
    try:
        hung = probe(worker)
    finally:
        worker.signal(signal.SIGCONT)
    assert hung.returncode == 1, hung.stdout + hung.stderr
    assert f"{node} did not answer a ping within {PROBE_TIMEOUT}.0s" in hung.stdout

    # Running again: passes again.
    again = probe(worker)
    assert again.returncode == 0, again.stdout + again.stderr

    # A worker that is gone fails too.
    worker.kill()
    gone = probe(worker)
    assert gone.returncode == 1, gone.stdout + gone.stderr
    assert redis_client.ping()  # the broker was up all along


def test_probe_passes_while_the_broker_is_down(
    celery_app: CeleryApp,
    run_container: RunContainer,
    redis_server: RedisServer,
    redis_client: redis.Redis,
) -> None:
    worker, _ = start_worker(celery_app, run_container)
    assert probe(worker).returncode == 0

    redis_server.stop()
    down = probe(worker)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "broker unreachable, not restarting" in down.stdout
    assert worker.running()  # nothing else about the worker changed


def test_readiness_probe_needs_an_answering_worker_and_its_broker(
    celery_app: CeleryApp,
    run_container: RunContainer,
    redis_server: RedisServer,
    redis_client: redis.Redis,
    producer: Celery,
) -> None:
    """The opt-in readiness probe: passes for a worker that answers, also while it is
    drained (told to stop consuming); fails for a hung worker and while the broker is down
    (unlike liveness)."""
    pool = make_pool(probes={"readiness": {"enabled": True, "timeoutSeconds": PROBE_TIMEOUT}})
    container = container_of(build_worker_deployment(celery_app, pool, None, replicas=1))
    worker = run_container(container)
    node = local_node(pool)

    def ready() -> subprocess.CompletedProcess[str]:
        command = worker.local.probe_command("readinessProbe")
        return worker.exec(command, timeout=container["readinessProbe"]["timeoutSeconds"])

    wait_worker_ready(worker, node)
    ok = ready()
    assert ok.returncode == 0, ok.stdout + ok.stderr

    producer.control.cancel_consumer("celery", destination=[node], reply=True, timeout=5)
    drained = ready()
    assert drained.returncode == 0, drained.stdout + drained.stderr

    worker.signal(signal.SIGSTOP)
    try:
        hung = ready()
    finally:
        worker.signal(signal.SIGCONT)
    assert hung.returncode == 1, hung.stdout + hung.stderr
    assert f"{node} did not answer a ping within {PROBE_TIMEOUT}.0s" in hung.stdout

    redis_server.stop()
    down = ready()
    assert down.returncode == 1, down.stdout + down.stderr
    assert "broker unreachable, not ready" in down.stdout
