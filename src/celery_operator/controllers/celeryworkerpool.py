"""The CeleryWorkerPool controller: binds a pool to its app and runs its workers."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from celery_operator.api.celeryapp import CeleryApp
from celery_operator.api.celeryworkerpool import CeleryWorkerPool
from celery_operator.brokerurl import BrokerURL, BrokerURLError, parse_broker_url
from celery_operator.controllers.context import Context, kept_block, patch_status_if_changed
from celery_operator.controllers.runtime import Key, pool_app_key
from celery_operator.k8s import client
from celery_operator.k8s.children import ChildConflictError, delete_owned, hand_off_replicas
from celery_operator.render import autoscaling as render_autoscaling
from celery_operator.render import celeryworkerpool as render
from celery_operator.render import common
from celery_operator.render.common import owner_reference
from celery_operator.scaling.decision import Policy
from celery_operator.scaling.scaler import Target
from celery_operator.status import pool_status
from celery_operator.validation import errors, format_problems, model_problems
from celery_operator.validation.celeryapp import validate_app
from celery_operator.validation.celeryworkerpool import (
    PoolContext,
    binding_reason,
    validate_pool,
    validate_pool_binding,
)

log = logging.getLogger("celery_operator")
KIND = "CeleryWorkerPool"
# Status roll-ups wait this long for more changes, so a burst makes one write.
ROLLUP_DELAY = 0.25
CHILD_STATUS_DELAY = 0.1


def parse_app(body: dict[str, Any] | None) -> CeleryApp | None:
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    try:
        return CeleryApp.model_validate(body)
    except ValidationError:
        return None


def app_problems(app: CeleryApp) -> str:
    """The app's spec errors as one message ('' when valid)."""
    errs = errors(validate_app(app))
    if not errs:
        return ""
    return f"CeleryApp {app.metadata['namespace']}/{app.metadata['name']} is invalid: {format_problems(errs)}"


def prune_known_secrets(ctx: Context, pool: CeleryWorkerPool, uid: str, keep: set[str]) -> int:
    """Deletes the pool's mirror and KEDA Secrets unless kept (only if the pool controls
    them). Secrets are not watched, so after a restart the cache does not know them."""
    app_name = pool.spec.app_ref.name
    names = {
        common.connection_secret_name(app_name, pool.metadata["name"]),
        render_autoscaling.keda_secret_name_of(app_name, pool.metadata["name"]),
    }
    n = sum(
        delete_owned("v1", "Secret", name, pool.metadata["namespace"], uid)
        for name in sorted(names - keep)
    )
    ctx.secrets_checked.add(uid)
    return n


def selector_string(pool: CeleryWorkerPool) -> str:
    return ",".join(f"{k}={v}" for k, v in render.selector_labels(pool).items())


class BrokerUnreadableError(Exception):
    """The broker URL's Secret (or key) cannot be read; the message says which."""


def read_connection(app: CeleryApp, which: str) -> str | None:
    """A connection URL of the app ("broker" or "resultBackend"), read from its Secret."""
    conn = app.spec.broker if which == "broker" else app.spec.result_backend
    if conn is None:
        return None
    if conn.url.value is not None:
        return conn.url.value
    ref = conn.url.secret_key_ref or {}
    ns = app.metadata["namespace"]
    try:
        value = client.get_secret_value(ns, ref.get("name", ""), ref.get("key", ""))
    except client.ApiError as e:
        raise BrokerUnreadableError(
            f"cannot read Secret {ns}/{ref.get('name')}: {e.reason}"
        ) from None
    if value is None:
        raise BrokerUnreadableError(
            f"spec.{which}.url.secretKeyRef: Secret {ns}/{ref.get('name')} or its key "
            f"{ref.get('key')!r} does not exist"
        )
    return value


def desired_replicas(
    ctx: Context, key: Key, pool: CeleryWorkerPool, engine: str | None, live: dict[str, Any] | None
) -> int | None:
    """Replicas to apply: the spec's when fixed, None (left to the HPA/KEDA) when they
    scale, and the built-in scaler's decision for engine builtin."""
    if engine is None:
        return pool.spec.replicas
    if engine != "builtin":
        return None
    decided = ctx.scaler.replicas(key) if ctx.scaler is not None else None
    if decided is not None:
        return decided
    a = pool.spec.autoscaling
    assert a is not None
    current = ((live or {}).get("spec") or {}).get("replicas")
    if current is None:
        return max(a.min_replicas, 1) if a.min_replicas > 0 else 0
    return min(max(int(current), a.min_replicas), a.max_replicas)


def reconcile_pool(ctx: Context, key: Key, *, apply: bool = True) -> None:
    """Level-based: makes the pool's children what its spec and its app say."""
    body = ctx.cache.get("pools", key)
    if body is None or body["metadata"].get("deletionTimestamp"):
        if ctx.scaler is not None:
            ctx.scaler.untrack(key)
        return  # deleted: ownerReferences garbage-collect the children
    meta = body["metadata"]
    uid, generation = meta["uid"], meta.get("generation")
    old = body.get("status")
    app_key = pool_app_key(body)

    tracked = False

    def done(**kw: Any) -> None:
        if not tracked and ctx.scaler is not None:
            ctx.scaler.untrack(key)
        problem = ctx.cache.pod_problem((key[0], "worker", key[1]))
        patch_status_if_changed(
            body, KIND, pool_status(generation=generation, old=old, problem=problem, **kw)
        )

    try:
        pool = CeleryWorkerPool.model_validate(body)
    except ValidationError as e:
        msg = format_problems(model_problems(e))
        done(
            accepted=(False, "InvalidSpec", msg),
            app=None,
            deployment_name=None,
            deployment=None,
            selector=None,
            blocked=("InvalidSpec", msg),
        )
        return

    app = parse_app(ctx.cache.get("apps", app_key))
    ns_labels = ctx.cache.namespaces.get(key[0], {})
    reason = binding_reason(pool, PoolContext(app=app, namespace_labels=ns_labels))
    spec_errors = errors(validate_pool(pool))
    deploy_name = common.worker_deployment_name(app_key[1], key[1])
    selector = selector_string(pool)
    app_ref = (app_key[1], app_key[0])

    def report(
        accepted: tuple[bool, str, str],
        *,
        deployment: dict[str, Any] | None = None,
        blocked: tuple[str, str] | None = None,
        **extra: Any,
    ) -> None:
        bound = accepted[0]
        done(
            accepted=accepted,
            app=app_ref,
            deployment_name=deploy_name if bound else None,
            deployment=deployment if bound else None,
            selector=selector,
            blocked=blocked,
            **extra,
        )

    if spec_errors:
        # Nothing is created from an invalid spec, and nothing that runs is torn down.
        msg = format_problems(spec_errors)
        report((False, "InvalidSpec", msg), blocked=("InvalidSpec", msg))
        return
    if reason is not None:
        if apply:
            n = ctx.delete_children(uid) + prune_known_secrets(ctx, pool, uid, keep=set())
            if n:
                log.info("pool %s/%s not accepted (%s): stopped its workers", *key, reason[0])
        report((False, reason[0], reason[1]))
        return
    assert app is not None
    accepted = (True, "Bound", f"bound to CeleryApp {app_key[0]}/{app_key[1]}")
    engine = render_autoscaling.autoscaler_engine(pool)
    deployment_ident = ("apps/v1/Deployment", key[0], deploy_name)
    cached_deploy = ctx.cache.child(uid, *deployment_ident)
    app_errors = app_problems(app)
    if app_errors:
        # The app's own status says why; nothing is rendered from an invalid app.
        report(accepted, deployment=cached_deploy, blocked=("AppInvalid", app_errors))
        return

    if not apply or app.spec.paused:
        tracked = engine == "builtin" and not app.spec.paused  # keep polling between reconciles
        report(
            accepted,
            deployment=cached_deploy,
            blocked=None if apply else kept_block(old, generation),
            autoscaler=_autoscaler_status(ctx, key, pool, engine),
            scaling=None if app.spec.paused else _scaling_condition(ctx, key, engine),
            paused=app.spec.paused,
        )
        return

    # Broker details are needed for a pool outside the app's namespace (its workers read
    # a mirror of the connection Secret) and for queue-length autoscaling.
    cross_ns = key[0] != app_key[0]
    needs_broker = cross_ns or (engine in ("builtin", "keda"))
    broker: BrokerURL | None = None
    broker_url = backend_url = None
    try:
        if needs_broker:
            broker_url = read_connection(app, "broker")
            backend_url = read_connection(app, "resultBackend") if cross_ns else None
            broker = parse_broker_url(broker_url) if broker_url else None
    except (BrokerUnreadableError, BrokerURLError) as e:
        report(accepted, deployment=cached_deploy, blocked=("BrokerUnreadable", str(e)))
        return

    binding_errors = errors(
        validate_pool_binding(
            pool,
            PoolContext(
                app=app,
                namespace_labels=ns_labels,
                broker=broker,
                keda_installed=engine != "keda" or ctx.keda_installed(),
            ),
        )
    )
    if binding_errors:
        msg = format_problems(binding_errors)
        report(accepted, deployment=cached_deploy, blocked=("InvalidSpec", msg))
        return

    if engine == "builtin" and broker is not None and ctx.scaler is not None:
        a = pool.spec.autoscaling
        assert a is not None
        assert a.queue_length is not None
        ql = a.queue_length
        current = int(((cached_deploy or {}).get("spec") or {}).get("replicas", a.min_replicas))
        ctx.scaler.track(
            Target(
                key=key,
                broker=broker,
                url_id=broker_url or "",
                queues=tuple(pool.spec.queues),
                policy=Policy(
                    a.min_replicas,
                    a.max_replicas,
                    ql.target_per_replica,
                    ql.activation,
                    ql.cooldown_seconds,
                ),
                interval=float(ql.polling_interval_seconds),
            ),
            current,
        )
        tracked = True
    owner = owner_reference(body, KIND)
    mirror = None
    desired: list[dict[str, Any]] = []
    if cross_ns and (
        app.spec.broker.url.secret_key_ref
        or (app.spec.result_backend and app.spec.result_backend.url.secret_key_ref)
    ):
        secret = render.build_connection_secret(app, pool, broker_url, backend_url, owner)
        mirror = secret["metadata"]["name"]
        desired.append(secret)
    replicas = desired_replicas(ctx, key, pool, engine, cached_deploy)
    if replicas is None and cached_deploy is not None:
        hand_off_replicas({"apiVersion": "apps/v1", "kind": "Deployment", **cached_deploy})
    desired.append(
        render.build_worker_deployment(
            app, pool, owner, replicas=replicas, connection_secret=mirror
        )
    )
    if (pdb := render.build_worker_pdb(app, pool, owner)) is not None:
        desired.append(pdb)
    if (hpa := render_autoscaling.build_hpa(app, pool, owner)) is not None:
        desired.append(hpa)
    if engine == "keda" and broker is not None:
        keda = render_autoscaling.build_keda_objects(app, pool, broker, owner)
        if keda is not None:
            desired.extend(
                x for x in (keda.secret, keda.trigger_authentication, keda.scaled_object) if x
            )
    try:
        live = ctx.sync_children(uid, desired)
    except ChildConflictError as e:
        report(accepted, deployment=cached_deploy, blocked=("ChildConflict", str(e)))
        return
    report(
        accepted,
        deployment=live.get(deployment_ident) or cached_deploy,
        autoscaler=_autoscaler_status(ctx, key, pool, engine),
        scaling=_scaling_condition(ctx, key, engine),
    )


def _autoscaler_status(
    ctx: Context, key: Key, pool: CeleryWorkerPool, engine: str | None
) -> dict[str, Any] | None:
    a = pool.spec.autoscaling
    if engine is None or a is None:
        return None
    out: dict[str, Any] = {
        "engine": engine,
        "summary": f"{engine} {a.min_replicas}-{a.max_replicas}",
    }
    st = ctx.scaler.status(key) if engine == "builtin" and ctx.scaler is not None else None
    for f in ("desiredReplicas", "queueLength", "lastScaleTime"):
        if st is not None and st.get(f) is not None:
            out[f] = st[f]
    return out


def _scaling_condition(ctx: Context, key: Key, engine: str | None) -> tuple[bool, str, str] | None:
    """ScalingActive (as an HPA says it): can the built-in scaler read the queues?"""
    if engine != "builtin" or ctx.scaler is None:
        return None
    st = ctx.scaler.status(key)
    if st is None or (st.get("queueLength") is None and st.get("error") is None):
        return (True, "Polling", "waiting for the first queue-length poll")
    if st.get("error"):
        return (
            False,
            "BrokerUnreachable",
            f"cannot read queue lengths ({st['error']}); replicas stay as they are",
        )
    return (True, "QueueLengthRead", f"{st['queueLength']} tasks waiting")


def on_pool_event(ctx: Context, event_type: str, body: dict[str, Any]) -> None:
    """Watch event of a pool: cache it, reconcile it when its spec moved, refresh its app."""
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    deleted = event_type == "DELETED"
    old = ctx.cache.put("pools", key, None if deleted else body)
    if not deleted and (old is None or _spec_moved(old, body)):
        ctx.queue.add("pool", key)
    # The app aggregates its pools: any change of a pool may change the app's status.
    ctx.queue.add_soon("app-status", pool_app_key(body), ROLLUP_DELAY)
    if old is not None and pool_app_key(old) != pool_app_key(body):
        ctx.queue.add_soon("app-status", pool_app_key(old), ROLLUP_DELAY)


def _spec_moved(old: dict[str, Any], new: dict[str, Any]) -> bool:
    om, nm = old["metadata"], new["metadata"]
    return bool(
        om.get("generation") != nm.get("generation") or om.get("labels") != nm.get("labels")
    )
