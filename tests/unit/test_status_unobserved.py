"""A Deployment whose latest generation its controller has not observed yet."""

from __future__ import annotations

from typing import Any

from celery_operator.status import _rollout_conditions, rollout_of


def deployment(generation: int, observed: int, replicas: int, ready: int) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": observed,
            "updatedReplicas": ready,
            "readyReplicas": ready,
            "availableReplicas": ready,
        },
    }


def ready(d: dict[str, Any]) -> tuple[str, str]:
    (c, _) = _rollout_conditions("worker", rollout_of(d))
    return c["status"], c["reason"]


def test_a_write_not_observed_yet_does_not_flip_ready() -> None:
    """Any write to a Deployment moves its generation (its own annotations too); until its
    controller observes it (milliseconds), its status is the last observed one: Ready does
    not flip to Progressing for that alone. Rollout Events still wait for `complete`."""
    assert ready(deployment(2, 1, 3, 3)) == ("True", "Available")
    assert not rollout_of(deployment(2, 1, 3, 3)).complete
    # Observed, with a new template rolling out: Progressing, as before.
    assert ready(deployment(2, 2, 3, 0)) == ("False", "Progressing")
    # Not observed, and not settled either (a scale-up written): Progressing.
    assert ready(deployment(2, 1, 5, 3)) == ("False", "Progressing")
