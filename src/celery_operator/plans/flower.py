"""The Flower's plan (pure): one Flower per app, then its Deployment, Service and Ingress.

The blocking chain, first match wins: InvalidSpec (the schema, the validators, an older
Flower of the same app), AppNotFound (not accepted: its children are deleted), AppInvalid,
a status-only pass or a paused app (nothing applied); ChildConflict after apply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery_operator.api.celeryapp import CeleryApp
from celery_operator.api.conditions import (
    APP_INVALID,
    APP_NOT_FOUND,
    BOUND,
    INVALID_SPEC,
    Blocker,
    Outcome,
)
from celery_operator.api.flower import Flower
from celery_operator.api.kinds import DEPLOYMENT, FLOWER, Key
from celery_operator.plans.common import Body, app_problems, kept_block
from celery_operator.plans.secrets import (
    SecretKey,
    SecretView,
    current_checksum,
    pod_checksum,
    pod_secret_uses,
    secret_rollout,
    secrets_of,
)
from celery_operator.render import common
from celery_operator.render import flower as render
from celery_operator.status import flower_status
from celery_operator.validation import errors, format_problems
from celery_operator.validation.flower import (
    validate_flower,
    validate_flower_app,
    validate_flower_binding,
)


@dataclass(frozen=True)
class FlowerInputs:
    key: Key
    body: Body
    flower: Flower | Blocker
    app: CeleryApp | None
    # The other Flowers of the same app: (creationTimestamp, name). The oldest one runs.
    siblings: Sequence[tuple[str, str]]
    deployment: Body | None
    now: str
    apply: bool = True
    problem: Blocker | None = None
    # The Secrets `secret_reads` names, as last read (one missing here: it does not exist).
    secrets: Mapping[SecretKey, SecretView] = field(default_factory=dict)


@dataclass(frozen=True)
class FlowerPlan:
    key: Key
    body: Body
    accepted: Outcome
    blocked: Blocker | None = None
    children: tuple[dict[str, Any], ...] | None = None
    delete_children: bool = False
    url: str | None = None
    paused: bool = False
    problem: Blocker | None = None
    now: str = ""

    def status(self, deployment: Body | None, conflict: Blocker | None = None) -> dict[str, Any]:
        return flower_status(
            generation=self.body["metadata"].get("generation"),
            old=self.body.get("status"),
            accepted=self.accepted,
            deployment=deployment if self.accepted.ok else None,
            url=self.url,
            blocked=conflict or self.blocked,
            paused=self.paused,
            problem=self.problem,
            now=self.now,
        )


def deployment_ident(key: Key) -> tuple[str, str, str]:
    return (DEPLOYMENT.resource.key, key[0], common.flower_name(key[1]))


def secret_reads(i: FlowerInputs) -> tuple[SecretKey, ...]:
    """The Secrets Flower's pod reads at start (its checksum: the app's connection
    Secrets, basic auth, env and envFrom), when this pass renders its Deployment: gather
    reads exactly these through the operator's Secret poller."""
    children = plan_flower(i).children or ()
    return secrets_of(u for c in children if c["kind"] == "Deployment" for u in pod_secret_uses(c))


def plan_flower(i: FlowerInputs) -> FlowerPlan:
    base = FlowerPlan(i.key, i.body, Outcome(False, INVALID_SPEC, ""), problem=i.problem, now=i.now)
    if isinstance(i.flower, Blocker):
        return dataclasses.replace(base, accepted=Outcome(False, *i.flower), blocked=i.flower)
    flower = i.flower
    mine = (i.body["metadata"]["creationTimestamp"], i.key[1])
    older = [name for created, name in sorted(i.siblings) if (created, name) < mine]
    problems = errors(validate_flower(flower)) + validate_flower_binding(flower, older)
    if problems:
        block = Blocker(INVALID_SPEC, format_problems(problems))
        return dataclasses.replace(base, accepted=Outcome(False, *block), blocked=block)
    app_name = flower.spec.app_ref.name
    if i.app is None:
        msg = f"spec.appRef: CeleryApp {i.key[0]}/{app_name} does not exist (yet)"
        return dataclasses.replace(
            base, accepted=Outcome(False, APP_NOT_FOUND, msg), delete_children=i.apply
        )
    base = dataclasses.replace(
        base,
        accepted=Outcome(True, BOUND, f"monitoring CeleryApp {i.key[0]}/{app_name}"),
        url=render.flower_url(flower),
    )
    if invalid := app_problems(i.app):
        return dataclasses.replace(base, blocked=Blocker(APP_INVALID, invalid))
    if with_app := errors(validate_flower_app(flower, i.app)):
        return dataclasses.replace(base, blocked=Blocker(INVALID_SPEC, format_problems(with_app)))
    if not i.apply or i.app.spec.paused:
        generation = i.body["metadata"].get("generation")
        kept = None if i.apply else kept_block(i.body.get("status"), generation)
        return dataclasses.replace(base, paused=i.app.spec.paused, blocked=kept)
    owner = common.owner_reference(i.body, FLOWER.name)
    d = render.build_flower_deployment(i.app, flower, owner)
    checksum = pod_checksum(pod_secret_uses(d), i.secrets, current_checksum(i.deployment))
    desired = [
        common.with_secret_checksum(d, *secret_rollout(checksum, i.deployment)),
        render.build_flower_service(i.app, flower, owner),
    ]
    if (ingress := render.build_flower_ingress(i.app, flower, owner)) is not None:
        desired.append(ingress)
    return dataclasses.replace(base, children=tuple(desired))
