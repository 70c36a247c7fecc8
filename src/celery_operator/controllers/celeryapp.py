"""The CeleryApp controller: gather -> `plans.celeryapp.plan_app` -> apply."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from celery_operator.api.celeryapp import CeleryApp
from celery_operator.api.kinds import APP, FLOWER, POOL, Key
from celery_operator.controllers.context import ROLLUP_CAP, ROLLUP_DELAY, Context
from celery_operator.plans.celeryapp import (
    AppInputs,
    AppPlan,
    beat_ident,
    plan_app,
    secret_reads,
)
from celery_operator.plans.common import parse


def reconcile_app(ctx: Context, key: Key, *, apply: bool = True) -> None:
    inputs = gather_app(ctx, key, apply)
    if inputs is None:
        ctx.secrets.forget((APP.task, key))
        return
    if not apply and components_pending(ctx, inputs):
        return  # their status writes bring the roll-up back (or the cap does)
    apply_app(ctx, plan_app(inputs))


def components_pending(ctx: Context, inputs: AppInputs) -> bool:
    """Whether the roll-up should wait: a pool or Flower of the app has not written the
    status of its current spec yet (it is being reconciled now: one kubectl apply of an
    app and its pools). Waits at most ROLLUP_CAP, then rolls up what there is."""
    uid = str(inputs.body["metadata"]["uid"])
    pending = any(
        (b.get("status") or {}).get("observedGeneration") != b["metadata"].get("generation")
        for b in (*inputs.pools, *inputs.flowers)
    )
    if not pending:
        ctx.memory.rollup_waits.pop(uid)
        return False
    now = time.monotonic()
    first = ctx.memory.rollup_waits.get(uid)
    if first is None:
        ctx.memory.rollup_waits.set(uid, now)
        # The cap, on a timer of its own: the components' writes still bring it sooner.
        ctx.queue.add(f"{APP.task}-status", inputs.key, ROLLUP_CAP)
        return True
    return now - first < ROLLUP_CAP


def gather_app(ctx: Context, key: Key, apply: bool) -> AppInputs | None:
    """The app, the pools and Flowers that name it, its beat Deployment, the clock, and
    the Secrets beat's pods read (through the Secret poller)."""
    body = ctx.fresh(ctx.cache.get(APP.name, key))
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    inputs = AppInputs(
        key=key,
        body=body,
        app=parse(CeleryApp, body),
        pools=[ctx.fresh(b) or b for b in ctx.cache.of_app(POOL.name, key)],
        flowers=[ctx.fresh(b) or b for b in ctx.cache.of_app(FLOWER.name, key)],
        beat=ctx.cache.child(body["metadata"]["uid"], *beat_ident(key)),
        now=ctx.now(),
        apply=apply,
        beat_problem=ctx.cache.pod_problem((key[0], APP.pod_component, key[1])),
    )
    if not apply:  # a status-only pass reads no Secret (and leaves the references)
        return inputs
    return dataclasses.replace(
        inputs, secrets=ctx.secrets.read((APP.task, key), secret_reads(inputs))
    )


def apply_app(ctx: Context, plan: AppPlan) -> None:
    ctx.tell_problem(plan.body, "beat", plan.beat_problem)
    beat, conflict = ctx.apply_children(plan.body, plan.children, beat_ident(plan.key))
    ctx.follow_rollout(plan.body, beat)
    if plan.rollup_later and conflict is None:
        # The roll-up waits like every other (ROLLUP_DELAY): the pools and Flower applied
        # with the app (one kubectl apply, one GitOps sync) are in its first status,
        # instead of a first write that says it has none.
        ctx.queue.add_soon(f"{APP.task}-status", plan.key, ROLLUP_DELAY)
        return
    ctx.write_status(plan.body, APP, plan.status(beat, conflict))


def on_app_event(ctx: Context, event_type: str, body: dict[str, Any]) -> None:
    """Watch event of an app: cache it; a spec change re-renders its pools and Flower."""
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    deleted = event_type == "DELETED"
    old = ctx.cache.put(APP.name, key, None if deleted else body)
    moved = (
        deleted
        or old is None
        or old["metadata"].get("generation") != body["metadata"].get("generation")
    )
    if not moved:
        return
    if not deleted:
        ctx.queue.add(APP.task, key)
    # Pools and Flower render from the app's spec (and stop when it goes).
    ctx.queue.add_many(POOL.task, ctx.cache.keys_of_app(POOL.name, key))
    ctx.queue.add_many(FLOWER.task, ctx.cache.keys_of_app(FLOWER.name, key))
