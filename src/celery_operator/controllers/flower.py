"""The Flower controller: gather -> `plans.flower.plan_flower` -> apply."""

from __future__ import annotations

import dataclasses
from typing import Any

from celery_operator.api.flower import Flower
from celery_operator.api.kinds import APP, FLOWER, Key, flower_app_key
from celery_operator.controllers.context import ROLLUP_DELAY, Context, moved
from celery_operator.plans.common import parse, parse_app
from celery_operator.plans.flower import (
    FlowerInputs,
    FlowerPlan,
    deployment_ident,
    plan_flower,
    secret_reads,
)


def reconcile_flower(ctx: Context, key: Key, *, apply: bool = True) -> None:
    inputs = gather_flower(ctx, key, apply)
    if inputs is None:
        ctx.secrets.forget((FLOWER.task, key))
        return
    apply_flower(ctx, plan_flower(inputs))


def gather_flower(ctx: Context, key: Key, apply: bool) -> FlowerInputs | None:
    """The Flower, its app, the other Flowers of that app, its Deployment, the clock, and
    the Secrets its pod reads (through the Secret poller)."""
    body = ctx.fresh(ctx.cache.get(FLOWER.name, key))
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    app_key = flower_app_key(body)
    inputs = FlowerInputs(
        key=key,
        body=body,
        flower=parse(Flower, body),
        app=parse_app(ctx.cache.get(APP.name, app_key)),
        siblings=[
            (f["metadata"]["creationTimestamp"], f["metadata"]["name"])
            for f in ctx.cache.of_app(FLOWER.name, app_key)
        ],
        deployment=ctx.cache.child(body["metadata"]["uid"], *deployment_ident(key)),
        now=ctx.now(),
        apply=apply,
        problem=ctx.cache.pod_problem((key[0], FLOWER.pod_component, key[1])),
    )
    if not apply:  # a status-only pass reads no Secret (and leaves the references)
        return inputs
    return dataclasses.replace(
        inputs, secrets=ctx.secrets.read((FLOWER.task, key), secret_reads(inputs))
    )


def apply_flower(ctx: Context, plan: FlowerPlan) -> None:
    body = plan.body
    if plan.delete_children:
        ctx.delete_children(body, f"the Flower is not accepted ({plan.accepted.reason})")
    ident = deployment_ident(plan.key)
    cached = ctx.cache.child(body["metadata"]["uid"], *ident)
    deployment, conflict = ctx.apply_children(body, plan.children, ident)
    ctx.follow_rollout(body, deployment)
    settle = plan.children is not None and conflict is None and moved(cached, deployment)
    ctx.write_status(body, FLOWER, plan.status(deployment, conflict), settle=settle)


def on_flower_event(ctx: Context, event_type: str, body: dict[str, Any]) -> None:
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    deleted = event_type == "DELETED"
    old = ctx.cache.put(FLOWER.name, key, None if deleted else body)
    app_key = flower_app_key(body)
    if not deleted and (
        old is None or old["metadata"].get("generation") != body["metadata"].get("generation")
    ):
        ctx.queue.add(FLOWER.task, key)
    if deleted:
        # A Flower waiting behind this one may now run.
        ctx.queue.add_many(FLOWER.task, ctx.cache.keys_of_app(FLOWER.name, app_key))
    ctx.queue.add_soon(f"{APP.task}-status", app_key, ROLLUP_DELAY)
