"""The CeleryWorkerPool controller: gather -> `plans.celeryworkerpool.plan_pool` -> apply."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from celery_operator.api.celeryapp import CeleryApp
from celery_operator.api.celeryworkerpool import CeleryWorkerPool
from celery_operator.api.kinds import APP, POOL, SECRET, Key, pool_app_key
from celery_operator.controllers import metrics
from celery_operator.controllers.context import ROLLUP_DELAY, Context, moved
from celery_operator.controllers.events import drain_event, scale_event
from celery_operator.controllers.runtime import Retry
from celery_operator.k8s import client
from celery_operator.k8s.children import hand_off_replicas
from celery_operator.plans.celeryworkerpool import (
    BROKER,
    Connection,
    PoolInputs,
    PoolPlan,
    ScalerView,
    autoscaler_ident,
    deployment_ident,
    plan_pool,
    secret_reads,
    wanted_reads,
)
from celery_operator.plans.common import parse, parse_app
from celery_operator.plans.secrets import ABSENT, SecretKey, SecretView
from celery_operator.plans.workers import WorkerPlan
from celery_operator.render.autoscaling import autoscaler_engine
from celery_operator.scaling.probes import BrokerUnreachableError

log = logging.getLogger("celery_operator")


def reconcile_pool(ctx: Context, key: Key, *, apply: bool = True) -> None:
    """Level-based: makes the pool's children what its spec and its app say."""
    inputs = gather_pool(ctx, key, apply)
    if inputs is None:  # deleted: ownerReferences garbage-collect the children
        if ctx.scaler is not None:
            ctx.scaler.untrack(key)
        if ctx.monitors is not None:
            ctx.monitors.unwatch(key)
        ctx.secrets.forget((POOL.task, key))
        return
    apply_pool(ctx, plan_pool(inputs))


def gather_pool(ctx: Context, key: Key, apply: bool) -> PoolInputs | None:
    """The pool, its app, its namespace's labels, its Deployment, the scaler's view, the
    clock; the Secrets the plan reads (through the Secret poller, which reconciles the
    pool when one of them changes), the app's connection URLs and KEDA's presence only
    when the plan needs them."""
    body = ctx.fresh(ctx.cache.get(POOL.name, key))
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    inputs = PoolInputs(
        key=key,
        body=body,
        pool=(pool := parse(CeleryWorkerPool, body)),
        app=parse_app(ctx.cache.get(APP.name, pool_app_key(body))),
        namespace_labels=ctx.cache.namespace_labels(key[0]),
        deployment=ctx.cache.child(body["metadata"]["uid"], *deployment_ident(key, body)),
        now=ctx.now(),
        apply=apply,
        scaler=_scaler_view(ctx, key),
        problem=ctx.cache.pod_problem((key[0], POOL.pod_component, key[1])),
        pods=ctx.cache.worker_pods_of(key),
        heartbeats=None if ctx.monitors is None else ctx.monitors.heartbeats(key),
        epoch=ctx.epoch(),
        observe=ctx.observe_seconds,
    )
    if isinstance(pool, CeleryWorkerPool):
        ident = autoscaler_ident(key, body, autoscaler_engine(pool))
        if ident is not None:
            cached = ctx.cache.child(body["metadata"]["uid"], *ident)
            inputs = dataclasses.replace(inputs, autoscaler_object=cached)
    if not apply:  # a status-only pass reads no Secret (and leaves the references)
        return inputs
    secrets = ctx.secrets.read((POOL.task, key), secret_reads(inputs))
    inputs = dataclasses.replace(inputs, secrets=secrets)
    reads = wanted_reads(inputs)
    if not reads:
        return inputs
    assert inputs.app is not None
    assert isinstance(pool, CeleryWorkerPool)
    return dataclasses.replace(
        inputs,
        connections={which: read_connection(inputs.app, which, secrets) for which in reads},
        keda_installed=autoscaler_engine(pool) != "keda" or ctx.keda_installed(),
    )


def _scaler_view(ctx: Context, key: Key) -> ScalerView | None:
    if ctx.scaler is None:
        return None
    st: dict[str, Any] = ctx.scaler.status(key) or {}
    return ScalerView(
        st.get("desiredReplicas"),
        st.get("queueLength"),
        st.get("lastScaleTime"),
        st.get("error"),
        st.get("activeTasks"),
    )


def read_connection(
    app: CeleryApp, which: str, secrets: Mapping[SecretKey, SecretView]
) -> Connection:
    """A connection URL of the app ("broker" or "resultBackend"), from its Secret as read."""
    conn = app.spec.broker if which == BROKER else app.spec.result_backend
    if conn is None:
        return Connection()
    if conn.url.value is not None:
        return Connection(url=conn.url.value)
    ref = conn.url.secret_key_ref or {}
    ns, name, key = app.metadata["namespace"], ref.get("name", ""), ref.get("key", "")
    view = secrets.get((ns, name), ABSENT)
    if view.error:
        return Connection(problem=f"Secret {ns}/{name}: {view.error}")
    raw = view.data.get(key) if view.exists else None
    if raw is None:
        return Connection(
            problem=f"spec.{which}.url.secretKeyRef: Secret {ns}/{name} or its key {key!r} "
            "does not exist"
        )
    try:
        return Connection(url=base64.b64decode(raw).decode())
    except (binascii.Error, UnicodeDecodeError):
        return Connection(
            problem=f"spec.{which}.url.secretKeyRef: Secret {ns}/{name} key "
            f"{key!r} is not UTF-8 text"
        )


def apply_pool(ctx: Context, plan: PoolPlan) -> None:
    """Stops, tracks, listens, hands off and applies as planned, then writes the status."""
    body = plan.body
    uid = body["metadata"]["uid"]
    if plan.delete_children:
        why = f"the pool is not accepted ({plan.accepted.reason})"
        n = ctx.delete_children(body, why) + ctx.delete_secrets(body, plan.known_secrets, why)
        if n:
            log.info(
                "pool %s/%s not accepted (%s): stopped its workers", *plan.key, plan.accepted.reason
            )
    _follow(ctx, plan)
    if plan.worker_plan is not None:
        apply_workers(ctx, plan.key, body, plan.worker_plan)
        ctx.record(drain_event(body, plan.worker_plan))
    ident = plan.deployment_ident
    cached = ctx.cache.child(uid, *ident)
    if plan.hand_off_replicas and cached is not None:
        hand_off_replicas({"apiVersion": "apps/v1", "kind": "Deployment", **cached})
    keep = [(SECRET.resource.key, plan.key[0], name) for name in plan.keep_secrets]
    deployment, conflict = ctx.apply_children(body, plan.children, ident, keep)
    if plan.children is not None and conflict is None:
        _tell_scaled(ctx, plan, cached, deployment)
        ctx.delete_secrets(body, plan.stale_secrets, "the app no longer names its source")
    ctx.follow_rollout(body, deployment)
    status = plan.status(deployment, conflict)
    settle = (
        plan.children is not None
        and conflict is None
        and plan.status_can_wait
        and moved(cached, deployment)
    )
    ctx.write_status(body, POOL, status, settle=settle)
    if plan.retry_after is not None and conflict is None:
        raise Retry(plan.retry_after, "a drain is in progress")


def _tell_scaled(
    ctx: Context, plan: PoolPlan, before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> None:
    """Scaled, when this apply changed the worker Deployment's replicas."""
    if before is None or after is None or plan.replicas is None:
        return
    old, new = (before.get("spec") or {}).get("replicas"), (after.get("spec") or {}).get("replicas")
    if old is None or new != plan.replicas or old == new:
        return
    ctx.record(
        scale_event(
            plan.body,
            {"apiVersion": "apps/v1", "kind": "Deployment", **after},
            int(old),
            int(new),
            autoscaler=plan.autoscaler,
            target_per_replica=(
                None
                if plan.track is None or plan.track.policy is None
                else plan.track.policy.target_per_replica
            ),
            workers=plan.worker_plan,
        )
    )


def _follow(ctx: Context, plan: PoolPlan) -> None:
    """The built-in scaler polls, and a broker monitor listens, as the plan says."""
    if ctx.scaler is not None and plan.track is not None:
        ctx.scaler.track(plan.track, plan.replicas or 0)
    elif ctx.scaler is not None and plan.untrack:
        ctx.scaler.untrack(plan.key)
    if ctx.monitors is not None and plan.monitor is not None:
        ctx.monitors.watch(plan.key, plan.monitor, quiet=plan.quiet)
    elif ctx.monitors is not None and plan.unmonitor:
        ctx.monitors.unwatch(plan.key)


def apply_workers(ctx: Context, key: Key, body: Mapping[str, Any], wp: WorkerPlan) -> None:
    """Deletion costs and drain marks on the pods; stop or resume consuming."""
    for pod, marks in wp.patches:
        try:
            client.patch_object(
                "v1", "Pod", pod, key[0], {"metadata": {"annotations": dict(marks)}}
            )
            metrics.POD_WRITES.inc()
        except client.ApiError as e:
            if not e.not_found:
                raise
    queues = list((body.get("spec") or {}).get("queues") or [])
    monitor = None if ctx.monitors is None else ctx.monitors.monitor(key)
    for command, pods in (("cancel_consumer", wp.cancel), ("add_consumer", wp.resume)):
        if not pods or monitor is None:
            continue
        nodes = [f"{key[1]}.{key[0]}@{pod}" for pod in pods]
        try:
            getattr(monitor, command)(queues, nodes)
        except BrokerUnreachableError as e:
            log.warning("pool %s/%s: %s %s: %s", *key, command, ", ".join(pods), e)
    if wp.outcome is not None:
        metrics.DRAINS.labels(wp.outcome).inc()
        log.info("pool %s/%s: drain %s (%s)", *key, wp.outcome, ", ".join(wp.draining) or "-")


def on_pool_event(ctx: Context, event_type: str, body: dict[str, Any]) -> None:
    """Watch event of a pool: cache it, reconcile it when its spec moved, refresh its app."""
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    deleted = event_type == "DELETED"
    old = ctx.cache.put(POOL.name, key, None if deleted else body)
    if not deleted and (old is None or _spec_moved(old, body)):
        ctx.queue.add(POOL.task, key)
    # The app aggregates its pools: any change of a pool may change the app's status.
    ctx.queue.add_soon(f"{APP.task}-status", pool_app_key(body), ROLLUP_DELAY)
    if old is not None and pool_app_key(old) != pool_app_key(body):
        ctx.queue.add_soon(f"{APP.task}-status", pool_app_key(old), ROLLUP_DELAY)


def _spec_moved(old: dict[str, Any], new: dict[str, Any]) -> bool:
    om, nm = old["metadata"], new["metadata"]
    return bool(
        om.get("generation") != nm.get("generation") or om.get("labels") != nm.get("labels")
    )
