"""The CeleryApp controller: runs beat and rolls its pools, Flower and beat up into its status."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from celery_operator.api.celeryapp import MAX_POOLS_IN_STATUS, CeleryApp
from celery_operator.controllers.celeryworkerpool import ROLLUP_DELAY
from celery_operator.controllers.context import Context, kept_block, patch_status_if_changed
from celery_operator.controllers.runtime import Key
from celery_operator.k8s.children import ChildConflictError
from celery_operator.render import celeryapp as render
from celery_operator.render import common
from celery_operator.render.common import owner_reference
from celery_operator.status import app_status, flower_view, pool_view
from celery_operator.validation import errors, format_problems, model_problems
from celery_operator.validation.celeryapp import validate_app

log = logging.getLogger("celery_operator")
KIND = "CeleryApp"


def reconcile_app(ctx: Context, key: Key, *, apply: bool = True) -> None:
    body = ctx.cache.get("apps", key)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    meta = body["metadata"]
    uid = meta["uid"]
    invalid: str | None = None
    blocked: tuple[str, str] | None = None
    paused = False
    beat_enabled = False
    try:
        app = CeleryApp.model_validate(body)
        spec_errors = errors(validate_app(app))
        if spec_errors:
            invalid = format_problems(spec_errors)
        paused = app.spec.paused
        beat_enabled = app.spec.beat.enabled
    except ValidationError as e:
        invalid = format_problems(model_problems(e))

    beat_ident = ("apps/v1/Deployment", key[0], common.beat_deployment_name(key[1]))
    beat = ctx.cache.child(uid, *beat_ident)
    if apply and invalid is None and not paused:
        desired = (
            [render.build_beat_deployment(app, owner_reference(body, KIND))] if beat_enabled else []
        )
        try:
            live = ctx.sync_children(uid, desired)
            beat = live.get(beat_ident)
        except ChildConflictError as e:
            blocked = ("ChildConflict", str(e))
        if blocked is None:
            # The roll-up waits like every other (ROLLUP_DELAY): the pools and Flower
            # applied with the app (one kubectl apply, one GitOps sync) are in its first
            # status, instead of a first write that says it has none.
            ctx.queue.add_soon("app-status", key, ROLLUP_DELAY)
            return
    elif not apply and invalid is None:
        blocked = kept_block(body.get("status"), meta.get("generation"))

    pools = [v for p in ctx.cache.pools_of_app(key) if (v := pool_view(p)) is not None]
    flowers = ctx.cache.flowers_of_app(key)
    flower = (
        flower_view(sorted(flowers, key=lambda f: f["metadata"]["creationTimestamp"])[0])
        if flowers
        else None
    )
    status = app_status(
        generation=meta.get("generation"),
        old=body.get("status"),
        pools=pools,
        flower=flower,
        beat_enabled=beat_enabled,
        beat_deployment=beat,
        beat_problem=ctx.cache.pod_problem((key[0], "beat", key[1])),
        invalid=invalid,
        blocked=blocked,
        paused=paused,
        max_pools=MAX_POOLS_IN_STATUS,
    )
    patch_status_if_changed(body, KIND, status)


def on_app_event(ctx: Context, event_type: str, body: dict[str, Any]) -> None:
    """Watch event of an app: cache it; a spec change re-renders its pools and Flower."""
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    deleted = event_type == "DELETED"
    old = ctx.cache.put("apps", key, None if deleted else body)
    moved = (
        deleted
        or old is None
        or old["metadata"].get("generation") != body["metadata"].get("generation")
    )
    if not moved:
        return
    if not deleted:
        ctx.queue.add("app", key)
    # Pools and Flower render from the app's spec (and stop when it goes).
    ctx.queue.add_many("pool", ctx.cache.keys_of_app("pools", key))
    ctx.queue.add_many("flower", ctx.cache.keys_of_app("flowers", key))
