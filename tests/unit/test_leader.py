"""Leader election's decisions (pure): who may write the Lease, and what they write."""

from __future__ import annotations

from typing import Any

import pytest

from celery_operator.controllers.leader import ElectionConfig, Observed, may_take, record_of, taken


def lease(
    holder: str, renew: str = "2026-11-29T10:00:00.000000Z", transitions: int = 0
) -> dict[str, Any]:
    return {
        "metadata": {"name": "l", "namespace": "ns", "resourceVersion": "7"},
        "spec": {
            "holderIdentity": holder,
            "renewTime": renew,
            "acquireTime": "2026-11-29T09:00:00.000000Z",
            "leaseDurationSeconds": 15,
            "leaseTransitions": transitions,
        },
    }


def test_a_held_lease_is_taken_only_after_it_stood_still_for_the_duration_as_observed() -> None:
    held = lease("a")
    ok, seen = may_take(held, "b", None, now=100.0, duration=15)
    assert not ok
    assert seen == Observed(record_of(held), 100.0)
    assert not may_take(held, "b", seen, now=114.9, duration=15)[0]
    assert may_take(held, "b", seen, now=115.0, duration=15)[0]
    # A renewal (a new renewTime) starts the wait again, whatever the clocks say.
    renewed = lease("a", renew="2020-01-01T00:00:00.000000Z")
    ok, seen2 = may_take(renewed, "b", seen, now=116.0, duration=15)
    assert not ok
    assert seen2.at == 116.0


def test_its_own_or_a_released_lease_may_be_written_at_once() -> None:
    assert may_take(lease("b"), "b", None, now=0.0, duration=15)[0]
    assert may_take(lease(""), "b", None, now=0.0, duration=15)[0]


def test_taking_over_counts_a_transition_and_renewing_does_not() -> None:
    took = taken(lease("a", transitions=3), "b", wall=0.0, duration=15)["spec"]
    assert (took["holderIdentity"], took["leaseTransitions"]) == ("b", 4)
    assert took["acquireTime"] == took["renewTime"] == "1970-01-01T00:00:00.000000Z"
    renewed = taken(lease("b", transitions=4), "b", wall=60.5, duration=15)["spec"]
    assert renewed["leaseTransitions"] == 4
    assert renewed["acquireTime"] == "2026-11-29T09:00:00.000000Z"
    assert renewed["renewTime"] == "1970-01-01T00:01:00.500000Z"
    # The compare-and-swap: the resourceVersion read is the one written back.
    assert taken(lease("a"), "b", 0.0, 15)["metadata"]["resourceVersion"] == "7"
    first = taken(lease(""), "b", 0.0, 15)["spec"]
    assert first["leaseTransitions"] == 0  # a released lease: no one is displaced


@pytest.mark.parametrize(
    ("duration", "deadline", "retry"), [(15, 15, 2), (15, 10, 10), (10, 15, 2), (15, 10, 0)]
)
def test_timings_must_nest(duration: float, deadline: float, retry: float) -> None:
    with pytest.raises(ValueError, match="retry period < renew deadline < lease duration"):
        ElectionConfig("ns", lease_duration=duration, renew_deadline=deadline, retry_period=retry)
