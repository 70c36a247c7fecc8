"""Which decisions post which Events (controllers/events.py), with no cluster: a child
applied (created, updated, restored, rolled out, left alone), a status whose conditions
changed (only a change of reason is news), a scale and a drain; and the plans' real
statuses for a pool with a bad spec and a broker that cannot be reached, through the
recorder, with no password in any note."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from celery_operator.api.conditions import POD_PROBLEM_REASONS, Blocker
from celery_operator.api.events import EVENTS
from celery_operator.api.labels import HASH_ANNOTATION, MIRROR_OF_ANNOTATION
from celery_operator.controllers.events import (
    Lru,
    child_event,
    classify_apply,
    conditions_of,
    drain_event,
    problem_event,
    rollout_done,
    rollout_finished_event,
    scale_event,
    status_events,
)
from celery_operator.k8s.events import EventRecorder, RecorderConfig
from celery_operator.plans.celeryworkerpool import BROKER, Connection, ScalerView, plan_pool
from celery_operator.plans.workers import WorkerPlan
from celery_operator.scaling.workers import PoolHeartbeats
from tests.unit.test_events_recorder import Clock, Sink, drain
from tests.unit.test_plans import TEAM, deployment, pool_inputs

ROOT = Path(__file__).resolve().parents[2]

POOL = {
    "apiVersion": "celeryproject.org/v1alpha1",
    "kind": "CeleryWorkerPool",
    "metadata": {"name": "emails", "namespace": "team-a", "uid": "p-1"},
    "spec": {"appRef": {"name": "shop", "namespace": "shop"}},
}


def child(
    kind: str = "Deployment",
    name: str = "shop-emails",
    gen: int | None = 1,
    rv: str = "10",
    digest: str = "h1",
    uid: str = "c-1",
    replicas: int | None = 2,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "team-a",
        "uid": uid,
        "resourceVersion": rv,
        "annotations": {HASH_ANNOTATION: digest},
    }
    if gen is not None:
        meta["generation"] = gen
    body: dict[str, Any] = {"apiVersion": "apps/v1", "kind": kind, "metadata": meta}
    if replicas is not None:
        body["spec"] = {"replicas": replicas}
    return body


# ---- a child applied ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("before", "after", "digest", "applied_before", "template", "expected"),
    [
        (None, child(), "h1", False, False, "created"),
        # absent, though this process applied it: someone deleted it
        (None, child(), "h1", True, False, "recreated"),
        # an unwatched Secret deleted since it was cached: a new uid
        (
            child("Secret", "m", None, "5"),
            child("Secret", "m", None, "9", uid="c-2"),
            "h1",
            False,
            False,
            "recreated",
        ),
        # applied again, the server kept it as it was (a resync, a restart): nothing
        (child(), child(rv="11"), "h1", False, False, None),
        (
            child("Service", "s", None, "7"),
            child("Service", "s", None, "7"),
            "h1",
            False,
            False,
            None,
        ),
        # what the operator applies is unchanged, yet the object changed: someone else did it
        (child(), child(gen=2), "h1", True, False, "repaired"),
        (
            child("Service", "s", None, "7"),
            child("Service", "s", None, "8"),
            "h1",
            True,
            False,
            "repaired",
        ),
        # the spec changed
        (
            child("Service", "s", None, "7"),
            child("Service", "s", None, "8"),
            "h2",
            True,
            False,
            "updated",
        ),
        (child(), child(gen=2), "h2", True, True, "rollout"),
        # only the replicas: the pool says Scaled
        (child(), child(gen=2, replicas=3), "h2", True, False, None),
        (child(), child(gen=2), "h2", True, False, "updated"),
    ],
)
def test_what_applying_a_child_did(
    before: dict[str, Any] | None,
    after: dict[str, Any],
    digest: str,
    applied_before: bool,
    template: bool,
    expected: str | None,
) -> None:
    got = classify_apply(
        before, after, digest, applied_before=applied_before, template_changed=template
    )
    assert got == expected


def test_child_events_say_what_and_which() -> None:
    dep = child()
    cases = {
        "created": ("Created", "Normal", "Created Deployment shop-emails"),
        "recreated": (
            "DriftRepaired",
            "Normal",
            "Recreated Deployment shop-emails: it was deleted by someone else",
        ),
        "repaired": (
            "DriftRepaired",
            "Normal",
            "Restored Deployment shop-emails: it was changed by someone else",
        ),
        "updated": ("Updated", "Normal", "Updated Deployment shop-emails"),
        "rollout": (
            "RolloutStarted",
            "Normal",
            "Rolling out a new pod template of Deployment shop-emails (generation 1)",
        ),
    }
    for change, (reason, type_, note) in cases.items():
        ev = child_event(POOL, change, dep)  # type: ignore[arg-type]
        assert (ev.reason, ev.type, ev.note) == (reason, type_, note)
        assert ev.regarding.kind == "CeleryWorkerPool"
        assert ev.regarding.uid == "p-1"
        assert ev.related is not None
        assert ev.related.name == "shop-emails"


def test_a_mirrored_connection_secret_says_so() -> None:
    secret = child("Secret", "shop-emails-connection", None, "3")
    ev = child_event(POOL, "created", secret)
    assert ev.reason == "SecretMirrored"
    assert ev.note == (
        "Mirrored the connection Secret of CeleryApp shop/shop into namespace team-a as "
        "Secret shop-emails-connection"
    )
    ev = child_event(POOL, "updated", secret)
    assert (ev.reason, ev.note) == (
        "SecretMirrored",
        "Updated the mirrored Secret shop-emails-connection: the connection of CeleryApp "
        "shop/shop changed",
    )
    # KEDA's credentials Secret is an ordinary child.
    assert (
        child_event(POOL, "created", child("Secret", "shop-emails-keda", None)).reason == "Created"
    )


def test_a_mirrored_image_pull_secret_says_so() -> None:
    secret = child("Secret", "shop-emails-pull-regcred", None, "3")
    secret["metadata"]["annotations"][MIRROR_OF_ANNOTATION] = "shop/regcred"
    ev = child_event(POOL, "created", secret)
    assert (ev.reason, ev.note) == (
        "SecretMirrored",
        "Mirrored the image pull Secret shop/regcred of CeleryApp shop/shop into namespace "
        "team-a as Secret shop-emails-pull-regcred",
    )
    ev = child_event(POOL, "updated", secret)
    assert (ev.reason, ev.note) == (
        "SecretMirrored",
        "Updated the mirrored Secret shop-emails-pull-regcred: the image pull Secret "
        "shop/regcred of CeleryApp shop/shop changed",
    )
    # On anything but a pool, the annotation means nothing.
    app = {**POOL, "kind": "CeleryApp"}
    assert child_event(app, "created", secret).reason == "Created"


def test_a_pull_secret_that_cannot_be_mirrored_is_a_warning_once() -> None:
    ready = ("True", "Available", "2/2 worker replicas ready")
    why = ("False", "PullSecretUnreadable", "spec.imagePullSecrets of CeleryApp shop/shop: ...")
    (ev,) = status_events(POOL, {"Ready": ready}, {"Ready": why})
    assert (ev.reason, ev.type) == ("PullSecretUnreadable", "Warning")
    assert status_events(POOL, {"Ready": why}, {"Ready": why}) == []


def test_a_rollout_finishes_once_its_generation_is_complete() -> None:
    d = deployment(replicas=3, ready=1, updated=1)
    d["metadata"]["generation"] = 2
    d["status"]["observedGeneration"] = 2
    assert rollout_done(d, 2) is None
    d = deployment(replicas=3)
    d["metadata"]["generation"] = 2
    d["status"]["observedGeneration"] = 1
    assert rollout_done(d, 2) is None, "the controller has not seen it yet"
    d["status"]["observedGeneration"] = 2
    assert rollout_done(d, 2) is True
    assert rollout_done(deployment(failed=True), 1) is False
    ev = rollout_finished_event(
        POOL, {"kind": "Deployment", **d, "metadata": {**d["metadata"], "name": "shop-emails"}}
    )
    assert (ev.reason, ev.note) == (
        "RolloutFinished",
        "Rolled out Deployment shop-emails: 3/3 replicas on the new pod template, 3 ready",
    )


# ---- a status written ---------------------------------------------------------------------
def conds(*items: tuple[str, str, str, str]) -> dict[str, tuple[str, str, str]]:
    return {t: (s, r, m) for t, s, r, m in items}


READY_CREATING = ("Ready", "False", "Creating", "the worker Deployment does not exist yet")
ACCEPTED = ("Accepted", "True", "Bound", "bound to CeleryApp shop/shop")
INVALID = ("Ready", "False", "InvalidSpec", "spec.queues: at least one queue")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # a new pool, bound: Bound; Creating is not news
        (
            {},
            conds(ACCEPTED, READY_CREATING),
            [("Bound", "Normal", "Bound to CeleryApp shop/shop")],
        ),
        # blocked: a Warning of its reason
        (
            conds(ACCEPTED, READY_CREATING),
            conds(ACCEPTED, INVALID),
            [("InvalidSpec", "Warning", "spec.queues: at least one queue")],
        ),
        # the same again (a status-only pass, a resync): nothing
        (conds(ACCEPTED, INVALID), conds(ACCEPTED, INVALID), []),
        # another error in a new spec is news
        (
            conds(INVALID),
            conds(("Ready", "False", "InvalidSpec", "spec.concurrency: must be positive")),
            [("InvalidSpec", "Warning", "spec.concurrency: must be positive")],
        ),
        (
            {},
            conds(
                ("Accepted", "False", "NamespaceNotAllowed", "CeleryApp shop/shop does not admit"),
                ("Ready", "False", "NamespaceNotAllowed", "no workers run (not accepted)"),
            ),
            # Accepted says why, Ready only that nothing runs
            [("NamespaceNotAllowed", "Warning", "CeleryApp shop/shop does not admit")],
        ),
        # a pod that cannot run: once per reason, not per back-off
        (
            conds(("Ready", "False", "Progressing", "0/1 worker replicas ready")),
            conds(("Ready", "False", "ImagePullBackOff", "pod p: back-off 10s")),
            [("ImagePullBackOff", "Warning", "Pod p: back-off 10s")],
        ),
        (
            conds(("Ready", "False", "ImagePullBackOff", "pod p: back-off 10s")),
            conds(("Ready", "False", "ImagePullBackOff", "pod p: back-off 20s")),
            [],
        ),
        # ordinary progress, and Ready again: nothing (Scaled and Rollout* tell it)
        (
            conds(("Ready", "True", "Available", "2/2")),
            conds(("Ready", "False", "Progressing", "2/3")),
            [],
        ),
        (
            conds(("Ready", "False", "Progressing", "2/3")),
            conds(("Ready", "True", "Available", "3/3")),
            [],
        ),
        (
            conds(("Ready", "False", "Progressing", "1/1")),
            conds(("Ready", "False", "RolloutFailed", "ReplicaSet x has timed out progressing.")),
            [("RolloutFailed", "Warning", "ReplicaSet x has timed out progressing.")],
        ),
        # the broker
        (
            conds(("ScalingActive", "True", "QueueLengthRead", "3 tasks waiting")),
            conds(("ScalingActive", "False", "BrokerUnreachable", "cannot read queue lengths (x)")),
            [("BrokerUnreachable", "Warning", "Cannot read queue lengths (x)")],
        ),
        (
            conds(("ScalingActive", "False", "BrokerUnreachable", "cannot read queue lengths (x)")),
            conds(("ScalingActive", "False", "BrokerUnreachable", "cannot read queue lengths (y)")),
            [],
        ),
        (
            conds(("LoadObserved", "False", "BrokerUnreachable", "cannot hear")),
            conds(("LoadObserved", "True", "HeartbeatsReceived", "the workers' heartbeats arrive")),
            [("BrokerReachable", "Normal", "The workers' heartbeats arrive")],
        ),
        # an HPA or KEDA that does not scale: once, when it starts failing
        (
            conds(("ScalingActive", "True", "AutoscalerActive", "ScaledObject x: ready")),
            conds(("ScalingActive", "False", "AutoscalerFailing", "ScaledObject x: TriggerError")),
            [("AutoscalerFailing", "Warning", "ScaledObject x: TriggerError")],
        ),
        (
            {},
            conds(("ScalingActive", "False", "AutoscalerFailing", "HorizontalPodAutoscaler x: y")),
            [("AutoscalerFailing", "Warning", "HorizontalPodAutoscaler x: y")],
        ),
        (
            conds(("ScalingActive", "False", "AutoscalerFailing", "ScaledObject x: a")),
            conds(("ScalingActive", "False", "AutoscalerFailing", "ScaledObject x: b")),
            [],
        ),
        # pause and resume
        (
            conds(("Reconciling", "False", "Complete", "up to date")),
            conds(
                (
                    "Reconciling",
                    "False",
                    "Paused",
                    "the app is paused: its children are not changed",
                )
            ),
            [("Paused", "Normal", "The app is paused: its children are not changed")],
        ),
        (
            conds(("Reconciling", "False", "Paused", "paused")),
            conds(("Reconciling", "True", "RollingOut", "1/2 replicas on the latest spec")),
            [("Resumed", "Normal", "The app is no longer paused: children follow the spec again")],
        ),
        # the app's roll-up
        (
            conds(("Degraded", "False", "AsExpected", "")),
            conds(("Degraded", "True", "ComponentsUnavailable", "not ready: pool team-a/emails")),
            [("ComponentsUnavailable", "Warning", "Not ready: pool team-a/emails")],
        ),
        (
            conds(("Ready", "False", "ComponentsNotReady", "not ready: beat")),
            conds(("Ready", "False", "ComponentsNotReady", "not ready: pool x")),
            [],
        ),
    ],
)
def test_what_a_status_change_tells(
    old: dict[str, tuple[str, str, str]],
    new: dict[str, tuple[str, str, str]],
    expected: list[tuple[str, str, str]],
) -> None:
    got = [(e.reason, e.type, e.note) for e in status_events(POOL, old, new)]
    assert got == expected


def test_every_warning_of_ready_is_a_documented_event() -> None:
    from celery_operator.api.events import BLOCKING_REASONS, BY_REASON
    from celery_operator.controllers.events import WARN_READY

    for reason in (*BLOCKING_REASONS, *POD_PROBLEM_REASONS, "RolloutFailed", *WARN_READY):
        assert BY_REASON[reason].type == "Warning"


# ---- a scale and a drain ----------------------------------------------------------------------
def test_scaled_says_from_to_and_why() -> None:
    dep = child()
    ev = scale_event(
        POOL,
        dep,
        2,
        5,
        autoscaler={"engine": "builtin", "queueLength": 120, "activeTasks": 3},
        target_per_replica=25,
        workers=None,
    )
    assert (ev.reason, ev.type, ev.note) == (
        "Scaled",
        "Normal",
        "Scaled up Deployment shop-emails from 2 to 5 replicas (the built-in scaler: 120 tasks "
        "waiting, 3 running, 25 per replica)",
    )
    drained = WorkerPlan(1, draining=("w-1", "w-2"), outcome="completed")
    ev = scale_event(POOL, dep, 3, 1, autoscaler=None, target_per_replica=None, workers=drained)
    assert ev.note == (
        "Scaled down Deployment shop-emails from 3 to 1 replicas (spec.replicas is 1; busy "
        "workers drained first (w-1, w-2))"
    )


def test_drains_tell_their_start_and_end() -> None:
    started = WorkerPlan(
        3, draining=("w-1",), outcome="started", message="draining 1 busy worker(s)"
    )
    assert (drain_event(POOL, started).reason, drain_event(POOL, started).note) == (  # type: ignore[union-attr]
        "DrainStarted",
        "Draining 1 busy worker(s)",
    )
    timed_out = WorkerPlan(1, draining=("w-1",), outcome="timed_out")
    ev = drain_event(POOL, timed_out)
    assert ev is not None
    assert (ev.reason, ev.type) == ("DrainTimedOut", "Warning")
    abandoned = WorkerPlan(3, resume=("w-1",), outcome="abandoned")
    ev = drain_event(POOL, abandoned)
    assert ev is not None
    assert ev.reason == "DrainAbandoned"
    assert "w-1" in ev.note
    assert drain_event(POOL, WorkerPlan(3, outcome="completed")) is None  # Scaled says it
    assert drain_event(POOL, WorkerPlan(3)) is None


# ---- from the real plans, through the recorder ----------------------------------------------
def test_a_bad_spec_and_an_unreachable_broker_through_the_recorder_carry_no_password() -> None:
    """The pool's plan with an invalid spec, then a fixed one whose built-in scaler cannot
    reach the broker (its error quotes the URL, password and all): the statuses' changes
    become a Warning InvalidSpec, Bound, and a Warning BrokerUnreachable whose note has the
    password redacted."""
    clock, sink = Clock(), Sink()
    rec = EventRecorder("me", RecorderConfig(), sink, clock, clock.wall)
    written: dict[str, Any] = {}  # what Context.fresh gives: the last status written
    url = "redis://default:hunter2@redis.shop:6379/0"

    def write(plan_status: dict[str, Any], body: dict[str, Any]) -> None:
        uid = body["metadata"]["uid"]
        old = conditions_of(written.get(uid, body.get("status")))
        new = conditions_of(plan_status)
        for ev in status_events(body, old, new):
            rec.record(ev)
        written[uid] = plan_status

    bad = pool_inputs(TEAM, spec={"queues": []})
    plan = plan_pool(bad)
    write(plan.status(None), dict(bad.body))
    fixed = pool_inputs(
        TEAM,
        connections={BROKER: Connection(url=url), "resultBackend": Connection(url=url)},
        scaler=ScalerView(replicas=1, error=f"Error 111 connecting to {url}. Connection refused."),
        deployment=deployment(replicas=1),
    )
    plan = plan_pool(fixed)
    assert plan.children, "a fixed spec renders children"
    write(plan.status(deployment(replicas=1)), dict(fixed.body))
    write(plan.status(deployment(replicas=1)), dict(fixed.body))  # a status pass: nothing new
    drain(rec, clock)
    got = [(b["type"], b["reason"]) for b in sink.created]
    assert got == [
        ("Warning", "InvalidSpec"),
        ("Normal", "Bound"),
        ("Warning", "BrokerUnreachable"),
    ], got
    assert "hunter2" not in repr(sink.created)
    assert "redis://default:***@redis.shop:6379/0" in sink.created[-1]["note"]


def test_a_beat_pod_that_cannot_run_is_told_once_per_reason() -> None:
    pull = Blocker("ImagePullBackOff", "pod shop-beat-x: container beat: ImagePullBackOff")
    ev = problem_event(POOL, "beat", "", pull)
    assert ev is not None
    assert (ev.reason, ev.type, ev.note) == (
        "ImagePullBackOff",
        "Warning",
        "Beat: pod shop-beat-x: container beat: ImagePullBackOff",
    )
    assert problem_event(POOL, "beat", "ImagePullBackOff", pull) is None
    assert problem_event(POOL, "beat", "ImagePullBackOff", None) is None


def test_a_broker_being_connected_to_is_not_unreachable() -> None:
    """Before its first attempt, a broker monitor says "connecting": LoadObserved is
    Connecting, not BrokerUnreachable, so a new pool posts no false Warning."""
    url = "redis://:pw@redis.shop:6379/0"
    conns = {BROKER: Connection(url=url), "resultBackend": Connection(url=url)}
    for error, reason in (
        ("connecting", "Connecting"),
        ("waiting", "Connecting"),
        ("ConnectionError", "BrokerUnreachable"),
    ):
        plan = plan_pool(
            pool_inputs(TEAM, connections=conns, heartbeats=PoolHeartbeats(False, error))
        )
        assert plan.load is not None
        assert plan.load.reason == reason, error


def test_the_memory_is_bounded() -> None:
    lru: Lru[int, int] = Lru(3)
    for i in range(5):
        lru.set(i, i)
    assert len(lru) == 3
    assert lru.get(0) is None
    assert lru.get(4) == 4
    assert lru.pop(4) == 4
    assert lru.pop(4) is None


def test_docs_list_every_event_reason_with_its_type() -> None:
    """docs/events.md has one row per reason of api/events.py, with its type and action."""
    text = (ROOT / "docs" / "events.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].startswith("`"):
            for reason in cells[0].replace("`", "").split(","):
                rows[reason.strip()] = (cells[1], cells[2].strip("`"))
    table = {e.reason: (e.type, e.action) for e in EVENTS}
    assert rows == table
