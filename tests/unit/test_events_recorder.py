"""The Event recorder (k8s/events.py) with a fake clock and a sink that keeps what it is
given: aggregation into series, the per-object and global budgets, the bounded queue,
failures that never reach a reconcile, and notes that never carry a password."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from celery_operator.api.events import EVENTS, REPORTING_CONTROLLER
from celery_operator.k8s.client import ApiError
from celery_operator.k8s.events import (
    MAX_NOTE_BYTES,
    POSTS,
    Event,
    EventRecorder,
    ObjectRef,
    RecorderConfig,
    event,
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1_764_000_000.0 + self.t


class Sink:
    """Keeps the writes; `fail` makes the next ones raise."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.patches: list[tuple[str, str, dict[str, Any]]] = []
        self.fail: ApiError | None = None
        self.fail_patch: ApiError | None = None

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.fail is not None:
            raise self.fail
        self.created.append(body)
        return body

    def patch(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        if self.fail_patch is not None:
            error, self.fail_patch = self.fail_patch, None
            raise error
        self.patches.append((namespace, name, patch))
        return patch

    def count_of(self, name: str) -> int:
        """The series count the API holds for an Event (1 when never patched)."""
        body = next(b for b in self.created if b["metadata"]["name"] == name)
        count = (body.get("series") or {}).get("count", 1)
        for _, n, p in self.patches:
            if n == name:
                count = p["series"]["count"]
        return int(count)


def pool(name: str = "emails", uid: str = "uid-1", ns: str = "team-a") -> dict[str, Any]:
    return {
        "apiVersion": "celeryproject.org/v1alpha1",
        "kind": "CeleryWorkerPool",
        "metadata": {"name": name, "namespace": ns, "uid": uid},
    }


def recorder(**config: Any) -> tuple[EventRecorder, Clock, Sink]:
    clock, sink = Clock(), Sink()
    rec = EventRecorder(
        instance="celery-operator-7d9f_abc123",
        config=RecorderConfig(**config),
        sink=sink,
        clock=clock,
        wall=clock.wall,
    )
    return rec, clock, sink


def drain(rec: EventRecorder, clock: Clock, seconds: float = 0.0, tick: float = 0.5) -> None:
    """Runs the poster as its thread would, for `seconds` of fake time."""
    end = clock.t + seconds
    while True:
        while rec.step() == 0:
            pass
        if clock.t >= end:
            return
        clock.t = min(end, clock.t + tick)


def posts(result: str) -> float:
    return float(POSTS.labels(result)._value.get())


def test_an_event_is_posted_as_events_k8s_io_v1_with_its_reference() -> None:
    rec, clock, sink = recorder()
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "shop-emails", "namespace": "team-a", "uid": "d-1"},
    }
    rec.record(event(pool(), "Created", "Created Deployment shop-emails", deployment))
    assert sink.created == [], "record only queues: the poster thread writes"
    drain(rec, clock)
    [body] = sink.created
    assert body["apiVersion"] == "events.k8s.io/v1"
    assert body["kind"] == "Event"
    assert body["metadata"]["namespace"] == "team-a"
    assert body["metadata"]["name"].startswith("emails.")
    assert (
        body["reportingController"] == REPORTING_CONTROLLER == "celeryproject.org/celery-operator"
    )
    assert body["reportingInstance"] == "celery-operator-7d9f_abc123"
    assert (body["type"], body["reason"], body["action"]) == ("Normal", "Created", "Create")
    assert body["note"] == "Created Deployment shop-emails"
    assert body["regarding"] == {
        "apiVersion": "celeryproject.org/v1alpha1",
        "kind": "CeleryWorkerPool",
        "name": "emails",
        "namespace": "team-a",
        "uid": "uid-1",
    }
    assert body["related"]["kind"] == "Deployment"
    assert "series" not in body, "a singleton Event has no series"
    # The API's strict validation of events.k8s.io/v1: a MicroTime, no deprecated fields.
    assert body["eventTime"].endswith("Z")
    assert len(body["eventTime"].split(".")[1]) == 7
    for deprecated in ("source", "count", "firstTimestamp", "lastTimestamp"):
        assert deprecated not in body


def test_twenty_identical_repeats_are_one_event_with_a_count() -> None:
    rec, clock, sink = recorder()
    ev = event(pool(), "DriftRepaired", "Recreated PodDisruptionBudget shop-emails")
    for _ in range(20):
        rec.record(ev)
        drain(rec, clock, seconds=1.0)
    drain(rec, clock, seconds=15.0)
    [body] = sink.created
    assert sink.count_of(body["metadata"]["name"]) == 20
    # Repeats are folded: at most one PATCH per series every patch_interval (10 s).
    assert 1 <= len(sink.patches) <= 3, sink.patches
    _, _, patch = sink.patches[-1]
    assert set(patch) == {"series"}
    assert set(patch["series"]) == {"count", "lastObservedTime"}


def test_a_child_recreated_again_and_again_is_one_series() -> None:
    """The related child of each repeat is a new object (a new uid): still one Event."""
    rec, clock, sink = recorder()
    for i in range(5):
        pdb = {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "shop-emails", "namespace": "team-a", "uid": f"pdb-{i}"},
        }
        rec.record(event(pool(), "DriftRepaired", "Recreated PodDisruptionBudget x", pdb))
        drain(rec, clock, seconds=1.0)
    drain(rec, clock, seconds=11)
    [body] = sink.created
    assert sink.count_of(body["metadata"]["name"]) == 5
    assert "uid" not in body["related"]


def test_repeats_while_the_create_waits_are_in_it() -> None:
    rec, clock, sink = recorder()
    ev = event(pool(), "Scaled", "Scaled up Deployment shop-emails from 1 to 2 replicas")
    for _ in range(3):
        rec.record(ev)
    drain(rec, clock)
    [body] = sink.created
    assert body["series"]["count"] == 3
    assert not sink.patches


def test_another_message_another_object_or_a_late_repeat_is_a_new_event() -> None:
    rec, clock, sink = recorder()
    rec.record(event(pool(), "Scaled", "Scaled up from 1 to 2"))
    rec.record(event(pool(), "Scaled", "Scaled up from 2 to 3"))
    rec.record(event(pool("reports", "uid-2"), "Scaled", "Scaled up from 1 to 2"))
    drain(rec, clock)
    assert len(sink.created) == 3
    clock.t += 601  # past the 10 minute window: the series is over
    rec.record(event(pool(), "Scaled", "Scaled up from 1 to 2"))
    drain(rec, clock)
    assert len(sink.created) == 4
    assert not sink.patches


def test_each_object_has_a_budget_of_25_then_one_every_5_minutes() -> None:
    rec, clock, sink = recorder()
    before = posts("rate_limited")
    for i in range(30):
        rec.record(event(pool(), "Updated", f"Updated Service shop-flower ({i})"))
    drain(rec, clock, seconds=10)
    assert len(sink.created) == 25
    assert posts("rate_limited") - before == 5
    # Another object has its own budget.
    rec.record(event(pool("reports", "uid-2"), "Updated", "Updated Service x"))
    drain(rec, clock)
    assert len(sink.created) == 26
    # One token back after 5 minutes, not more.
    clock.t += 300
    for i in range(3):
        rec.record(event(pool(), "Updated", f"later ({i})"))
    drain(rec, clock)
    assert len(sink.created) == 27
    # Repeats of a posted Event still count: they cost no new Event.
    rec.record(event(pool(), "Updated", "Updated Service shop-flower (0)"))
    drain(rec, clock, seconds=11)
    assert sink.count_of(sink.created[0]["metadata"]["name"]) == 2


def test_a_thousand_apps_converging_make_no_event_storm() -> None:
    """1000 objects x 10 distinct Events at once: every write is paced by the global budget
    (bursts of 50, then 10 a second), at most 1000 wait, the rest are dropped and counted,
    and `record` never waits for any of it."""
    rec, clock, sink = recorder()
    dropped = posts("queue_full")
    started = time.perf_counter()
    for app in range(1000):
        for n in range(10):
            rec.record(event(pool(f"app-{app}", f"uid-{app}"), "Created", f"Created child {n}"))
    assert time.perf_counter() - started < 5, "recording is cheap"
    assert rec.pending == 1000
    assert posts("queue_full") - dropped == 9000
    drain(rec, clock, seconds=10.0, tick=0.1)
    assert 100 <= len(sink.created) <= 50 + 10 * 10 + 1, len(sink.created)
    drain(rec, clock, seconds=200.0, tick=1.0)
    assert len(sink.created) == 1000
    assert rec.pending == 0


def test_a_failed_post_is_counted_and_never_raised() -> None:
    rec, clock, sink = recorder()
    failed = posts("failed")
    sink.fail = ApiError(403, "Forbidden", 'events.events.k8s.io is forbidden: User "x"')
    ev = event(pool(), "InvalidSpec", "spec.queues: at least one queue")
    rec.record(ev)
    drain(rec, clock)
    assert posts("failed") - failed == 1
    assert not sink.created
    # Not created: a later occurrence tries a new Event.
    sink.fail = None
    rec.record(ev)
    drain(rec, clock)
    assert len(sink.created) == 1


def test_a_name_taken_in_the_same_nanosecond_is_tried_again() -> None:
    rec, clock, sink = recorder()
    sink.fail = ApiError(409, "AlreadyExists", "exists")
    rec.record(event(pool(), "Created", "Created Deployment x"))
    rec.step()
    sink.fail = None
    drain(rec, clock)
    assert len(sink.created) == 1


def test_an_expired_event_goes_on_in_a_new_one() -> None:
    """The apiserver deletes Events after --event-ttl (1 h): a repeat then creates one."""
    rec, clock, sink = recorder()
    ev = event(pool(), "DriftRepaired", "Restored Service x")
    rec.record(ev)
    drain(rec, clock)
    sink.fail_patch = ApiError(404, "NotFound", 'events.events.k8s.io "emails.1" not found')
    rec.record(ev)
    drain(rec, clock, seconds=11)
    assert len(sink.created) == 2
    assert sink.created[1]["series"]["count"] == 2


def test_a_password_in_a_message_never_reaches_an_event() -> None:
    rec, clock, sink = recorder()
    error = (
        "cannot read queue lengths (Error 111 connecting to "
        "redis://default:hunter2@redis.shop:6379/0. Connection refused.); replicas stay"
    )
    rec.record(event(pool(), "BrokerUnreachable", error))
    rec.record(event(pool(), "InvalidSpec", "amqp://guest:p@ss/w0rd@rabbit:5672// is wrong"))
    drain(rec, clock)
    text = repr(sink.created)
    assert "hunter2" not in text
    assert "p@ss" not in text
    assert "w0rd" not in text
    assert "redis://default:***@redis.shop:6379/0" in sink.created[0]["note"]


def test_a_long_note_is_cut_to_the_apis_limit() -> None:
    rec, clock, sink = recorder()
    rec.record(event(pool(), "CrashLoopBackOff", "é" * 2000))
    drain(rec, clock)
    note = sink.created[0]["note"]
    assert len(note.encode()) <= MAX_NOTE_BYTES
    assert note.endswith("...")


def test_every_reason_is_in_the_table_and_nothing_else_is_posted() -> None:
    with pytest.raises(ValueError, match="undocumented"):
        event(pool(), "SomethingNew", "x")
    for row in EVENTS:
        assert row.type in ("Normal", "Warning")
        assert row.reason[0].isupper()
        assert " " not in row.reason
        assert 0 < len(row.action) <= 128
    ref = ObjectRef("v1", "Pod", "p", "ns")
    assert Event(ref, "InvalidSpec", "x").type == "Warning"


def test_the_thread_posts_in_the_background_and_stops() -> None:
    sink = Sink()
    rec = EventRecorder(instance="me", sink=sink).start()
    try:
        rec.record(event(pool(), "Created", "Created Deployment x"))
        deadline = time.monotonic() + 5
        while not sink.created and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(sink.created) == 1
    finally:
        rec.stop()
    assert rec._thread is not None
    assert not rec._thread.is_alive()
    rec.record(event(pool(), "Created", "Created Deployment y"))
    time.sleep(0.2)
    assert len(sink.created) == 1, "nothing is posted after stop"


def test_record_is_safe_from_many_threads() -> None:
    rec, clock, sink = recorder()
    ev = event(pool(), "Scaled", "Scaled up from 1 to 2")

    def burst() -> None:
        for _ in range(100):
            rec.record(ev)

    threads = [threading.Thread(target=burst) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    drain(rec, clock, seconds=11)
    [body] = sink.created
    assert sink.count_of(body["metadata"]["name"]) == 800
