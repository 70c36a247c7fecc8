"""Fewer status writes with nothing lost: which changes may wait (`minor_change`), the
status this process wrote standing in for a cache that lags (`Context.fresh`), when a
pass waits for the child it wrote (`moved`), and the hand copy a create must not adopt
(`_predates`)."""

from __future__ import annotations

from typing import Any

from celery_operator.controllers.cache import Cache
from celery_operator.controllers.context import Context, moved
from celery_operator.controllers.runtime import WorkQueue
from celery_operator.k8s.children import _predates
from celery_operator.status import minor_change


def cond(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


PROGRESSING = {
    "observedGeneration": 1,
    "readyReplicas": 0,
    "conditions": [
        cond("Accepted", "True", "Bound"),
        cond("Ready", "False", "Progressing", "0/2 worker replicas ready"),
    ],
}


def test_counts_and_messages_may_wait() -> None:
    new = {
        "observedGeneration": 1,
        "readyReplicas": 1,
        "conditions": [
            cond("Accepted", "True", "Bound"),
            cond("Ready", "False", "Progressing", "1/2 worker replicas ready"),
        ],
    }
    assert minor_change(PROGRESSING, new)


def test_a_condition_that_moves_or_a_new_generation_does_not_wait() -> None:
    ready = {**PROGRESSING, "conditions": [cond("Ready", "True", "Available")]}
    assert not minor_change(PROGRESSING, ready)
    other_reason = {**PROGRESSING, "conditions": [cond("Ready", "False", "BrokerUnreachable")]}
    assert not minor_change(PROGRESSING, other_reason)
    new_condition = {**PROGRESSING, "conditions": [cond("Degraded", "False", "AsExpected")]}
    assert not minor_change(PROGRESSING, new_condition)
    assert not minor_change(PROGRESSING, {**PROGRESSING, "observedGeneration": 2})
    assert not minor_change(None, PROGRESSING)  # the first status is never held back


def test_an_app_whose_pools_come_does_not_wait() -> None:
    """An app Ready with no pool (none accepted yet) is rewritten at once when its pools
    come: `kubectl get capp` must not show 0/0 pools once they are Ready."""
    ready = [cond("Ready", "True", "AllComponentsReady")]
    empty = {"conditions": ready, "pools": {"total": 0, "ready": 0}, "workerPools": []}
    three = {
        "conditions": ready,
        "pools": {"total": 3, "ready": 3},
        "workerPools": [{"namespace": "a", "name": n} for n in ("x", "y", "z")],
    }
    assert not minor_change(empty, three)
    more_ready = {**three, "pools": {"total": 3, "ready": 2}}
    assert minor_change(more_ready, three)  # the same pools, counted anew: may wait
    assert not minor_change({**three, "flower": None}, {**three, "flower": {"name": "f"}})


def body(rv: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "celeryproject.org/v1alpha1",
        "kind": "CeleryWorkerPool",
        "metadata": {"uid": "u1", "name": "p", "namespace": "a", "resourceVersion": rv},
        "status": status or {},
    }


def test_the_status_written_stands_in_until_the_watch_brings_it_back() -> None:
    ctx = Context(cache=Cache(), queue=WorkQueue({}), keda=lambda: False)  # type: ignore[arg-type]
    assert ctx.fresh(None) is None
    stale = body("10", {"readyReplicas": 0})
    assert ctx.fresh(stale) is stale  # nothing written by this process
    ctx.memory.statuses.set("u1", ("12", {"readyReplicas": 1}))
    assert ctx.fresh(stale)["status"] == {"readyReplicas": 1}  # type: ignore[index]
    assert ctx.fresh(stale)["metadata"] == stale["metadata"]  # type: ignore[index]
    echoed = body("12", {"readyReplicas": 1})
    assert ctx.fresh(echoed) is echoed
    assert ctx.memory.statuses.get("u1") is None  # back from the watch: no longer held
    assert ctx.fresh(stale) is stale
    ctx.memory.statuses.set("u1", ("12", {"readyReplicas": 1}))
    newer = body("15", {"readyReplicas": 2})  # someone else wrote since: the cache wins
    assert ctx.fresh(newer) is newer
    assert ctx.fresh(body("not-a-number")) is not None  # no order: the cache as it is


def child(rv: str) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": rv}}


def test_a_child_moved_when_it_is_new_or_of_another_version() -> None:
    assert moved(None, child("1"))
    assert moved(child("1"), child("2"))
    assert not moved(child("2"), child("2"))
    assert not moved(child("2"), None)
    assert not moved(None, None)


def managed(*entries: tuple[str, str | None]) -> list[dict[str, Any]]:
    out = []
    for manager, sub in entries:
        e: dict[str, Any] = {"manager": manager, "operation": "Update"}
        if sub:
            e["subresource"] = sub
        out.append(e)
    return out


def live(created: str, *entries: tuple[str, str | None]) -> dict[str, Any]:
    return {"metadata": {"creationTimestamp": created, "managedFields": managed(*entries)}}


def test_an_object_made_before_its_owner_by_someone_else_predates_it() -> None:
    owner = "2026-11-30T10:00:05Z"
    hand = live("2026-11-30T10:00:01Z", ("celery-operator", None), ("kubectl-create", None))
    assert _predates(hand, owner)
    # Created by the apply itself: only our entry.
    assert not _predates(live("2026-11-30T10:00:06Z", ("celery-operator", None)), owner)
    # Ours from before, updated since by controllers: made after its owner.
    ours = live(
        "2026-11-30T10:00:05Z", ("celery-operator", None), ("kube-controller-manager", None)
    )
    assert not _predates(ours, owner)
    # Only status writers besides us: ours, whatever the time.
    status_only = live(
        "2026-11-30T10:00:01Z", ("celery-operator", None), ("kube-controller-manager", "status")
    )
    assert not _predates(status_only, owner)
    assert not _predates(hand, None)  # an owner with no creationTimestamp: nothing to say
