"""Why a pod cannot run, as the status tells it (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from celery_operator.api.conditions import Blocker, Outcome
from celery_operator.status import (
    AppRef,
    app_status,
    pod_problem,
    pool_status,
    pool_view,
)


def pod(state: dict[str, Any], last: dict[str, Any] | None = None, **status: Any) -> dict[str, Any]:
    cs: dict[str, Any] = {"name": "worker", "state": state}
    if last:
        cs["lastState"] = {"terminated": last}
    return {"metadata": {"name": "shop-default-1"}, "status": {"containerStatuses": [cs], **status}}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (pod({"running": {}}), None),
        (pod({"waiting": {"reason": "ContainerCreating"}}), None),
        (
            pod(
                {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "x"'}}
            ),
            (
                "ImagePullBackOff",
                'pod shop-default-1: container worker: ImagePullBackOff: Back-off pulling image "x"',
            ),
        ),
        (
            pod({"waiting": {"reason": "ErrImageNeverPull", "message": "image not present"}}),
            (
                "ErrImageNeverPull",
                "pod shop-default-1: container worker: ErrImageNeverPull: image not present",
            ),
        ),
        (
            pod(
                {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
                {
                    "exitCode": 1,
                    "reason": "Error",
                    "message": "Traceback ...\nModuleNotFoundError: No module named 'shop.nope'\n",
                },
            ),
            (
                "CrashLoopBackOff",
                "pod shop-default-1: container worker: CrashLoopBackOff: back-off 10s; last exit code 1 "
                "(Error): Traceback ... ModuleNotFoundError: No module named 'shop.nope'",
            ),
        ),
        (
            {
                "metadata": {"name": "p"},
                "status": {
                    "conditions": [
                        {
                            "type": "PodScheduled",
                            "status": "False",
                            "reason": "Unschedulable",
                            "message": "0/3 nodes are available: 3 Insufficient memory.",
                        }
                    ]
                },
            },
            ("Unschedulable", "pod p: 0/3 nodes are available: 3 Insufficient memory."),
        ),
    ],
)
def test_pod_problem(body: dict[str, Any], expected: tuple[str, str] | None) -> None:
    assert pod_problem(body) == expected


def test_a_long_log_tail_is_clipped_from_the_start() -> None:
    body = pod(
        {"waiting": {"reason": "CrashLoopBackOff"}}, {"exitCode": 1, "message": "x" * 5000 + " END"}
    )
    problem = pod_problem(body)
    assert problem is not None
    assert len(problem[1]) <= 600
    assert problem[1].startswith("pod shop-default-1: container worker: CrashLoopBackOff")
    assert problem[1].endswith("END")


def deployment(ready: int) -> dict[str, Any]:
    return {
        "metadata": {"generation": 1},
        "spec": {"replicas": 1},
        "status": {
            "observedGeneration": 1,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "updatedReplicas": 1,
        },
    }


def status_of_pool(ready: int, problem: Blocker) -> dict[str, Any]:
    return pool_status(
        generation=1,
        old=None,
        accepted=Outcome(True, "Bound", "bound"),
        app=AppRef("shop", "shop"),
        deployment_name="shop-default",
        deployment=deployment(ready),
        selector="x",
        problem=problem,
        now="t",
    )


def test_the_pool_and_its_app_say_why_workers_do_not_run() -> None:
    problem = Blocker(
        "CrashLoopBackOff", "pod p: container worker: CrashLoopBackOff; last exit code 2"
    )
    st = status_of_pool(0, problem)
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "CrashLoopBackOff")
    assert ready["message"] == f"0/1 worker replicas ready; {problem[1]}"
    view = pool_view(
        {
            "metadata": {"name": "default", "namespace": "shop"},
            "spec": {"queues": ["celery"]},
            "status": st,
        }
    )
    assert view is not None
    app = app_status(
        generation=1,
        old=None,
        pools=[view],
        flower=None,
        beat_enabled=True,
        beat_deployment=deployment(0),
        beat_problem=Blocker("ImagePullBackOff", "pod b: container beat: ImagePullBackOff"),
        now="t",
    )
    msg = next(c for c in app["conditions"] if c["type"] == "Ready")["message"]
    assert "pool shop/default (CrashLoopBackOff: 0/1 worker replicas ready; pod p:" in msg
    assert "beat (ImagePullBackOff: pod b: container beat: ImagePullBackOff)" in msg


def test_a_ready_pool_reports_no_problem_even_if_a_pod_has_one() -> None:
    """A surplus pod that cannot run does not make a complete rollout unready."""
    st = status_of_pool(1, ("ImagePullBackOff", "pod q"))
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Available")


def test_pods_the_apiserver_refuses_show_in_the_pool_and_its_app() -> None:
    """A Deployment whose ReplicaSet cannot create pods (Pod Security, a quota): its
    ReplicaFailure message, in the pool's Ready and in the app's."""
    refused = 'pods "shop-default-1" is forbidden: violates PodSecurity "restricted:latest"'
    d = deployment(0)
    d["status"]["conditions"] = [
        {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": refused}
    ]
    st = pool_status(
        generation=1,
        old=None,
        accepted=Outcome(True, "Bound", "bound"),
        app=AppRef("shop", "shop"),
        deployment_name="shop-default",
        deployment=d,
        selector="x",
        now="t",
    )
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "FailedCreate")
    assert ready["message"] == f"0/1 worker replicas ready; {refused}"
    view = pool_view(
        {"metadata": {"name": "default", "namespace": "shop"}, "spec": {}, "status": st}
    )
    assert view is not None
    app = app_status(
        generation=1,
        old=None,
        pools=[view],
        flower=None,
        beat_enabled=False,
        beat_deployment=None,
        now="t",
    )
    msg = next(c for c in app["conditions"] if c["type"] == "Ready")["message"]
    assert f"pool shop/default (FailedCreate: 0/1 worker replicas ready; {refused})" in msg
