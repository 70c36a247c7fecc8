"""The built-in scaler's bookkeeping (no broker needed for these)."""

from __future__ import annotations

from collections.abc import Sequence

from celery_operator.brokerurl import parse_broker_url
from celery_operator.scaling.decision import Policy
from celery_operator.scaling.monitor import probe_for
from celery_operator.scaling.probes import BrokerUnreachableError, Probe
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


class Surprising:
    def queue_lengths(self, queues: Sequence[str]) -> list[int]:
        raise RuntimeError("redis://:topsecret@127.0.0.1:1/0 exploded")

    def close(self) -> None:
        pass


def surprising(t: Target) -> Probe:
    return Surprising()


def test_a_surprise_error_is_reported_and_polling_goes_on() -> None:
    """An error no probe should raise must not wedge the pool, nor leak what it says."""
    changes: list[tuple[str, str]] = []
    s = BuiltinScaler(on_change=changes.append, probe_for=surprising)
    t = target("redis://:topsecret@127.0.0.1:1/0")
    s.track(t, current=2)
    s.poll(t.key)
    st = s.status(t.key)
    assert st is not None
    assert st["error"] == "redis://:***@127.0.0.1:1/0: RuntimeError"
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
    url = "redis://:topsecret@127.0.0.1:1/0"  # nothing listens on port 1
    s = BuiltinScaler(on_change=lambda key: None, probe_for=lambda t: probe_for(url))
    t = target(url)
    s.track(t, current=3)
    s.poll(t.key)
    st = s.status(t.key)
    assert st is not None
    assert st["error"] is not None
    assert st["error"].startswith("redis://:***@127.0.0.1:1/0")
    assert "topsecret" not in st["error"]
    assert s.replicas(t.key) == 3


class Fixed:
    def __init__(self) -> None:
        self.lengths = [0]

    def queue_lengths(self, queues: Sequence[str]) -> list[int]:
        return list(self.lengths)

    def close(self) -> None:
        pass


def test_a_new_queue_length_is_reported_once_the_quiet_time_passed() -> None:
    """A change that comes within STATUS_EVERY of the last report is reported later, even
    when the polls in between see no further change."""
    from celery_operator.scaling.scaler import STATUS_EVERY

    now = [1000.0]
    probe = Fixed()
    changes: list[tuple[str, str]] = []
    s = BuiltinScaler(on_change=changes.append, probe_for=lambda t: probe, clock=lambda: now[0])
    t = target()
    s.track(t, current=1)
    s.poll(t.key)  # first poll: reported
    assert len(changes) == 1
    now[0] += 1
    probe.lengths = [3]  # below the target: no scaling, only a new figure
    s.poll(t.key)
    assert len(changes) == 1, "within the quiet time"
    now[0] += STATUS_EVERY
    s.poll(t.key)  # the same 3 as the last poll, but the pool never heard of it
    assert len(changes) == 2
    st = s.status(t.key)
    assert st is not None
    assert st["queueLength"] == 3


def test_a_measured_pool_is_read_but_never_scaled_nor_reported() -> None:
    """A Target without a policy (a pool measured for the metrics): its queue lengths and
    its broker's state are kept for /metrics; no decision, no status notification."""
    from dataclasses import replace

    probe = Fixed()
    probe.lengths = [500]
    changes: list[tuple[str, str]] = []
    s = BuiltinScaler(on_change=changes.append, probe_for=lambda t: probe)
    t = replace(target(), policy=None)
    s.track(t, current=2)
    (m,) = s.measured()
    assert (m.lengths, m.broker_up, m.scaling) == (None, None, False), "not polled yet"
    s.poll(t.key)
    (m,) = s.measured()
    assert (m.queues, m.lengths, m.broker_up) == (("q",), (500,), True)
    assert s.replicas(t.key) is None, "not the scaler's pool"
    assert s.status(t.key) is None
    assert changes == []
    s._probes.clear()
    s.probe_for = surprising
    s.poll(t.key)
    (m,) = s.measured()
    assert (m.lengths, m.broker_up) == (None, False), "no stale figure while unreachable"
    assert changes == []


def test_a_measured_pool_switched_to_builtin_starts_from_its_current_replicas() -> None:
    """Measured while another engine scaled it to 7, then builtin: the scaler starts from
    7 (what the Deployment runs), not from the replicas it saw when measuring began."""
    from dataclasses import replace

    probe = Fixed()
    probe.lengths = [0]
    s = BuiltinScaler(on_change=lambda key: None, probe_for=lambda t: probe)
    s.track(replace(target(), policy=None), current=2)
    s.poll(("ns", "pool"))
    s.track(replace(target(), policy=Policy(1, 10, 10, cooldown_seconds=300)), current=7)
    assert s.replicas(("ns", "pool")) == 7
    s.poll(("ns", "pool"))
    assert s.replicas(("ns", "pool")) == 7, "an empty queue waits for the cooldown"
    (m,) = s.measured()
    assert m.scaling
    assert dict(m.scaled) == {"up": 0, "down": 0}
    probe.lengths = [100]
    s.poll(("ns", "pool"))
    assert s.replicas(("ns", "pool")) == 10
    (m,) = s.measured()
    assert dict(m.scaled) == {"up": 1, "down": 0}


def test_a_broker_found_unreachable_is_not_tried_by_every_pool() -> None:
    """Many pools on one broker that is down: one connection attempt per hold, not one
    per pool and poll; every pool reports the error; the next attempt after the hold."""
    from dataclasses import replace

    from celery_operator.scaling.scaler import UNREACHABLE_HOLD

    now = [1000.0]
    attempts: list[str] = []

    def down(t: Target) -> Fixed:
        attempts.append(t.url_id)
        raise BrokerUnreachableError("redis://redis.invalid:6379/0: Name or service not known")

    s = BuiltinScaler(on_change=lambda key: None, probe_for=down, clock=lambda: now[0])
    pools = [replace(target(), key=("ns", f"p{i}"), policy=None) for i in range(50)]
    for t in pools:
        s.track(t, current=1)
    for t in pools:
        s.poll(t.key)
    assert len(attempts) == 1
    assert all(m.broker_up is False for m in s.measured())
    now[0] += UNREACHABLE_HOLD
    probe = Fixed()
    s.probe_for = lambda t: probe  # the broker is back
    for t in pools:
        s.poll(t.key)
    assert all(m.broker_up is True for m in s.measured())
