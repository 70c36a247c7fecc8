"""The rendered beat sends the app's periodic tasks, which a rendered worker then runs."""

from __future__ import annotations

import pytest
import redis

from celery_operator.api.celeryapp import CeleryApp
from celery_operator.render.celeryapp import SCHEDULE_FILE, build_beat_deployment
from celery_operator.render.celeryworkerpool import build_worker_deployment
from tests.fidelity import sampleapp
from tests.fidelity.support import RunContainer, container_of, make_pool, records, wait_for

pytestmark = pytest.mark.fidelity


def test_beat_sends_the_schedule_and_a_worker_runs_it(
    celery_app: CeleryApp, run_container: RunContainer, redis_client: redis.Redis
) -> None:
    container = container_of(build_beat_deployment(celery_app, None))
    assert f"--schedule={SCHEDULE_FILE}" in container["args"]
    beat = run_container(container)

    # Beat alone: the task lands in the Redis list of its queue.
    wait_for(
        lambda: redis_client.llen(sampleapp.BEAT_QUEUE) > 0,
        30,
        f"a periodic task in queue {sampleapp.BEAT_QUEUE}",
        alive=(beat,),
    )
    # The schedule is kept where it was rendered to be (the container's /tmp volume),
    # not in the working directory, which is read-only in the pod.
    tmp = beat.local.mounts["/tmp"]
    assert list(tmp.glob("celerybeat-schedule*")), beat.describe()
    assert not list(beat.local.cwd.iterdir()), list(beat.local.cwd.iterdir())

    # A worker of the beat's queue runs the periodic task.
    pool = make_pool(queues=[sampleapp.BEAT_QUEUE])
    worker = run_container(
        container_of(build_worker_deployment(celery_app, pool, None, replicas=1))
    )
    wait_for(
        lambda: records(redis_client, sampleapp.BEAT_KEY),
        30,
        "the periodic task to run",
        alive=(beat, worker),
    )
    assert set(records(redis_client, sampleapp.BEAT_KEY)) == {"tick"}
    assert "Sending due task beat-marker (sample.record)" in beat.log()
