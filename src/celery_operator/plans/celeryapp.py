"""The CeleryApp's plan (pure): its beat Deployment, and the roll-up of its pools, Flower
and beat into its status.

An invalid spec renders nothing (InvalidSpec); a paused app or a status-only pass applies
nothing; a beat name taken by a foreign object is a ChildConflict after apply. A full
reconcile that applied cleanly writes no status itself: the roll-up follows shortly, so
that the pools and Flower applied with the app are in its first status.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery_operator.api.celeryapp import MAX_POOLS_IN_STATUS, CeleryApp
from celery_operator.api.conditions import Blocker
from celery_operator.api.kinds import APP, DEPLOYMENT, Key
from celery_operator.plans.common import Body, kept_block
from celery_operator.plans.secrets import (
    SecretKey,
    SecretView,
    current_checksum,
    pod_checksum,
    pod_secret_uses,
    secret_rollout,
    secrets_of,
)
from celery_operator.render import celeryapp as render
from celery_operator.render import common
from celery_operator.status import app_status, flower_view, pool_view
from celery_operator.validation import errors, format_problems
from celery_operator.validation.celeryapp import validate_app


@dataclass(frozen=True)
class AppInputs:
    key: Key
    body: Body
    app: CeleryApp | Blocker
    pools: Sequence[Body]  # the pools that name the app (accepted or not)
    flowers: Sequence[Body]  # the Flowers that name the app
    beat: Body | None  # the beat Deployment as cached
    now: str
    apply: bool = True
    beat_problem: Blocker | None = None
    # The Secrets `secret_reads` names, as last read (one missing here: it does not exist).
    secrets: Mapping[SecretKey, SecretView] = field(default_factory=dict)


@dataclass(frozen=True)
class AppPlan:
    key: Key
    body: Body
    pools: Sequence[Body]
    flowers: Sequence[Body]
    now: str
    invalid: str | None = None
    blocked: Blocker | None = None
    children: tuple[dict[str, Any], ...] | None = None
    # Applied cleanly: no status now, the roll-up (an "app-status" pass) follows.
    rollup_later: bool = False
    paused: bool = False
    beat_enabled: bool = False
    beat_problem: Blocker | None = None

    def status(self, beat: Body | None, conflict: Blocker | None = None) -> dict[str, Any]:
        flowers = sorted(self.flowers, key=lambda f: f["metadata"]["creationTimestamp"])
        return app_status(
            generation=self.body["metadata"].get("generation"),
            old=self.body.get("status"),
            pools=[v for p in self.pools if (v := pool_view(p)) is not None],
            flower=flower_view(flowers[0]) if flowers else None,
            beat_enabled=self.beat_enabled,
            beat_deployment=beat,
            beat_problem=self.beat_problem,
            invalid=self.invalid,
            blocked=conflict or self.blocked,
            paused=self.paused,
            max_pools=MAX_POOLS_IN_STATUS,
            now=self.now,
        )


def beat_ident(key: Key) -> tuple[str, str, str]:
    return (DEPLOYMENT.resource.key, key[0], common.beat_deployment_name(key[1]))


def secret_reads(i: AppInputs) -> tuple[SecretKey, ...]:
    """The Secrets beat's pods read at start (their checksum), when this pass renders its
    Deployment: gather reads exactly these through the operator's Secret poller."""
    return secrets_of(u for c in plan_app(i).children or () for u in pod_secret_uses(c))


def plan_app(i: AppInputs) -> AppPlan:
    base = AppPlan(i.key, i.body, i.pools, i.flowers, i.now, beat_problem=i.beat_problem)
    if isinstance(i.app, Blocker):
        return dataclasses.replace(base, invalid=i.app.message)
    app = i.app
    base = dataclasses.replace(base, paused=app.spec.paused, beat_enabled=app.spec.beat.enabled)
    if spec_errors := errors(validate_app(app)):
        return dataclasses.replace(base, invalid=format_problems(spec_errors))
    if not i.apply:
        generation = i.body["metadata"].get("generation")
        return dataclasses.replace(base, blocked=kept_block(i.body.get("status"), generation))
    if app.spec.paused:
        return base
    owner = common.owner_reference(i.body, APP.name)
    beat: tuple[dict[str, Any], ...] = ()
    if app.spec.beat.enabled:
        d = render.build_beat_deployment(app, owner)
        checksum = pod_checksum(pod_secret_uses(d), i.secrets, current_checksum(i.beat))
        beat = (common.with_secret_checksum(d, *secret_rollout(checksum, i.beat)),)
    return dataclasses.replace(base, children=beat, rollup_later=True)
