"""The built-in scaler's bookkeeping (no broker needed for these)."""

from __future__ import annotations

from celery_operator.brokerurl import parse_broker_url
from celery_operator.scaling.decision import Policy
from celery_operator.scaling.scaler import BuiltinScaler, Target


def target(url: str = "redis://127.0.0.1:1/0") -> Target:
    return Target(
        key=("ns", "pool"),
        broker=parse_broker_url(url),
        url_id=url,
        queues=("q",),
        policy=Policy(1, 5, 10),
        interval=1.0,
    )


def test_a_surprise_error_is_reported_and_polling_goes_on() -> None:
    """A URL that parses but cannot make a client (redis db 'abc') must not wedge the pool."""
    changes: list[tuple[str, str]] = []
    s = BuiltinScaler(on_change=changes.append)
    t = target("redis://:topsecret@127.0.0.1:1/abc")
    s.track(t, current=2)
    s.poll(t.key)
    st = s.status(t.key)
    assert st is not None
    assert st["error"] == "redis://:***@127.0.0.1:1/abc: BrokerURLError"
    assert "topsecret" not in str(st)
    assert s.replicas(t.key) == 2, "replicas stay as they are"
    assert changes == [t.key]
    assert not s._states[t.key].polling, "the next poll may run"


def test_untrack_then_track_keeps_one_schedule_entry() -> None:
    s = BuiltinScaler(on_change=lambda key: None)
    t = target()
    s.track(t, current=1)
    s.untrack(t.key)
    s.track(t, current=1)
    live = [e for e in s._heap if e[2] == t.key and e[1] == s._states[t.key].generation]
    assert len(live) == 1


def test_unreachable_broker_is_reported_without_credentials() -> None:
    s = BuiltinScaler(on_change=lambda key: None)
    t = target("redis://:topsecret@127.0.0.1:1/0")  # nothing listens on port 1
    s.track(t, current=3)
    s.poll(t.key)
    st = s.status(t.key)
    assert st is not None
    assert st["error"] is not None
    assert st["error"].startswith("redis://:***@127.0.0.1:1/0")
    assert "topsecret" not in st["error"]
    assert s.replicas(t.key) == 3
