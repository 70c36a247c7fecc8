"""The Flower controller: one Flower Deployment, its Service and optional Ingress."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from celery_operator.api.flower import Flower
from celery_operator.controllers.celeryworkerpool import (
    ROLLUP_DELAY,
    app_problems,
    parse_app,
)
from celery_operator.controllers.context import Context, kept_block, patch_status_if_changed
from celery_operator.controllers.runtime import Key, app_key_of
from celery_operator.k8s.children import ChildConflictError
from celery_operator.render import common
from celery_operator.render import flower as render
from celery_operator.render.common import owner_reference
from celery_operator.status import flower_status
from celery_operator.validation import errors, format_problems, model_problems
from celery_operator.validation.flower import validate_flower, validate_flower_binding

KIND = "Flower"


def reconcile_flower(ctx: Context, key: Key, *, apply: bool = True) -> None:
    body = ctx.cache.get("flowers", key)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    meta = body["metadata"]
    uid = meta["uid"]
    deploy_ident = ("apps/v1/Deployment", key[0], common.flower_name(key[1]))
    cached = ctx.cache.child(uid, *deploy_ident)

    def done(
        accepted: tuple[bool, str, str],
        deployment: dict[str, Any] | None = None,
        url: str | None = None,
        blocked: tuple[str, str] | None = None,
        paused: bool = False,
    ) -> None:
        st = flower_status(
            generation=meta.get("generation"),
            old=body.get("status"),
            accepted=accepted,
            deployment=deployment,
            url=url,
            blocked=blocked,
            paused=paused,
            problem=ctx.cache.pod_problem((key[0], "flower", key[1])),
        )
        patch_status_if_changed(body, KIND, st)

    try:
        flower = Flower.model_validate(body)
    except ValidationError as e:
        msg = format_problems(model_problems(e))
        done((False, "InvalidSpec", msg), blocked=("InvalidSpec", msg))
        return
    problems = errors(validate_flower(flower))
    # One Flower per app: the oldest one wins, later ones wait.
    mine = (meta["creationTimestamp"], key[1])
    app_key = (key[0], flower.spec.app_ref.name)
    older = [
        f["metadata"]["name"]
        for f in ctx.cache.flowers_of_app(app_key)
        if (f["metadata"]["creationTimestamp"], f["metadata"]["name"]) < mine
    ]
    problems += validate_flower_binding(flower, older)
    if problems:
        msg = format_problems(problems)
        done((False, "InvalidSpec", msg), blocked=("InvalidSpec", msg))
        return
    app = parse_app(ctx.cache.get("apps", app_key))
    if app is None:
        if apply:
            ctx.delete_children(uid)
        msg = f"spec.appRef: CeleryApp {key[0]}/{app_key[1]} does not exist (yet)"
        done((False, "AppNotFound", msg))
        return
    accepted = (True, "Bound", f"monitoring CeleryApp {key[0]}/{app_key[1]}")
    url = render.flower_url(flower)
    if invalid := app_problems(app):
        done(accepted, cached, url, blocked=("AppInvalid", invalid))
        return
    if not apply or app.spec.paused:
        block = None if apply else kept_block(body.get("status"), meta.get("generation"))
        done(accepted, cached, url, paused=app.spec.paused, blocked=block)
        return
    owner = owner_reference(body, KIND)
    desired = [
        render.build_flower_deployment(app, flower, owner),
        render.build_flower_service(app, flower, owner),
    ]
    if (ingress := render.build_flower_ingress(app, flower, owner)) is not None:
        desired.append(ingress)
    try:
        live = ctx.sync_children(uid, desired)
    except ChildConflictError as e:
        done(accepted, cached, url, blocked=("ChildConflict", str(e)))
        return
    done(accepted, live.get(deploy_ident) or cached, url)


def on_flower_event(ctx: Context, event_type: str, body: dict[str, Any]) -> None:
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    deleted = event_type == "DELETED"
    old = ctx.cache.put("flowers", key, None if deleted else body)
    app_key = app_key_of("flowers", body)
    if not deleted and (
        old is None or old["metadata"].get("generation") != body["metadata"].get("generation")
    ):
        ctx.queue.add("flower", key)
    if deleted:
        # A Flower waiting behind this one may now run.
        ctx.queue.add_many("flower", ctx.cache.keys_of_app("flowers", app_key))
    ctx.queue.add_soon("app-status", app_key, ROLLUP_DELAY)
