"""`celery-operator run`: kopf watches, our queue reconciles.

kopf provides the watches (with relisting, backoff and per-object ordering), the liveness
endpoint and the login; each watch event goes to a spy handler that updates the cache and
enqueues keys. The handlers of the three kinds write nothing through kopf's state machine,
so kopf stores no progress annotations on our objects and keeps no diff base (NoDiffBase);
its progress and finalizer settings still name our own group, should a handler use them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import socket
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import kopf
from prometheus_client import start_http_server

from celery_operator.api.base import GROUP, VERSION
from celery_operator.controllers import celeryapp, celeryworkerpool, flower
from celery_operator.controllers.celeryworkerpool import CHILD_STATUS_DELAY
from celery_operator.controllers.context import Context
from celery_operator.controllers.runtime import Cache, WorkQueue, controller_ref
from celery_operator.render.common import (
    LABEL_APP,
    LABEL_COMPONENT,
    LABEL_FLOWER,
    LABEL_POOL,
    MANAGED_BY,
)
from celery_operator.scaling.scaler import BuiltinScaler
from celery_operator.status import pod_problem

log = logging.getLogger("celery_operator")

OWNED_LABELS = {"app.kubernetes.io/managed-by": MANAGED_BY}
# Children the operator watches, to repair them and to follow their status.
WATCHED_CHILDREN = (
    ("apps", "v1", "deployments"),
    ("", "v1", "services"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
    ("networking.k8s.io", "v1", "ingresses"),
    ("keda.sh", "v1alpha1", "scaledobjects"),
    ("keda.sh", "v1alpha1", "triggerauthentications"),
)
OWNER_TASK = {"CeleryWorkerPool": "pool", "CeleryApp": "app", "Flower": "flower"}


class NoDiffBase(kopf.DiffBaseStorage):
    """Our handlers only watch events (no on.create/update handlers need a diff), yet kopf
    builds a diff base for every event: a deep copy of the body, a third of kopf's CPU at
    scale. This one builds nothing and stores nothing."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return kopf.BodyEssence()

    def fetch(self, *, body: Any) -> Any:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


@dataclass
class OperatorConfig:
    namespaces: list[str] = field(default_factory=list)  # empty: all namespaces
    workers: int = 8
    resync_seconds: float = 300.0
    liveness_port: int = 8080
    metrics_port: int = 9090
    bind_address: str = "0.0.0.0"


def build_context(workers: int) -> Context:
    cache = Cache()
    ctx = Context(cache=cache, queue=WorkQueue({}, workers=workers))
    ctx.scaler = BuiltinScaler(on_change=lambda key: ctx.queue.add("pool", key))
    ctx.queue.reconcilers.update(
        {
            "app": partial(celeryapp.reconcile_app, ctx),
            "app-status": partial(celeryapp.reconcile_app, ctx, apply=False),
            "pool": partial(celeryworkerpool.reconcile_pool, ctx),
            "pool-status": partial(celeryworkerpool.reconcile_pool, ctx, apply=False),
            "flower": partial(flower.reconcile_flower, ctx),
            "flower-status": partial(flower.reconcile_flower, ctx, apply=False),
        }
    )
    return ctx


def on_child_event(ctx: Context, event_type: str, body: dict[str, Any]) -> None:
    """A child changed: repair it when deleted or edited by someone else; else follow its status."""
    deleted = event_type == "DELETED"
    _, drifted = ctx.cache.put_child(body, deleted)
    ref = controller_ref(body)
    if ref is None or not str(ref.get("apiVersion", "")).startswith(f"{GROUP}/"):
        return
    task = OWNER_TASK.get(str(ref.get("kind")))
    if task is None:
        return
    key = (body["metadata"].get("namespace", ""), str(ref["name"]))
    if deleted or drifted:
        ctx.queue.add(task, key)
    elif body.get("kind") == "Deployment":
        # Rollouts send a burst of status events: one status write for the burst.
        ctx.queue.add_soon(
            "app-status" if task == "app" else f"{task}-status", key, CHILD_STATUS_DELAY
        )


# A pod's component -> the status task of its owner, and the label naming the owner.
POD_OWNER = {
    "worker": ("pool-status", LABEL_POOL),
    "beat": ("app-status", LABEL_APP),
    "flower": ("flower-status", LABEL_FLOWER),
}


def on_pod_event(ctx: Context, event_type: str, body: dict[str, Any]) -> None:
    """A pod of ours changed: if whether (or why) it cannot run changed, its owner's status
    says so (ImagePullBackOff, CrashLoopBackOff with the last exit, Unschedulable ...)."""
    meta = body["metadata"]
    labels = meta.get("labels") or {}
    component = str(labels.get(LABEL_COMPONENT, ""))
    if component not in POD_OWNER:
        return
    task, label = POD_OWNER[component]
    owner_name = str(labels.get(label, ""))
    if not owner_name:
        return
    ns = str(meta.get("namespace", ""))
    gone = event_type == "DELETED" or bool(meta.get("deletionTimestamp"))
    problem = None if gone else pod_problem(body)
    if ctx.cache.set_pod_problem((ns, component, owner_name), str(meta["name"]), problem):
        ctx.queue.add_soon(task, (ns, owner_name), CHILD_STATUS_DELAY)


def on_namespace_event(ctx: Context, event_type: str, body: dict[str, Any]) -> None:
    name = body["metadata"]["name"]
    labels = dict(body["metadata"].get("labels") or {})
    with ctx.cache.lock:
        old = ctx.cache.namespaces.get(name)
        if event_type == "DELETED":
            ctx.cache.namespaces.pop(name, None)
        else:
            ctx.cache.namespaces[name] = labels
    if old != labels:
        # workerPoolPolicy selects namespaces by label: pools here may bind or unbind.
        ctx.queue.add_many("pool", [k for k in list(ctx.cache.pools) if k[0] == name])


PRIMARY_TABLES = {"CeleryApp": "apps", "CeleryWorkerPool": "pools", "Flower": "flowers"}
CHILD_KINDS = (
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("policy/v1", "PodDisruptionBudget"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("networking.k8s.io/v1", "Ingress"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
)


def prime_cache(ctx: Context, namespaces: list[str]) -> None:
    """Lists everything once before any reconcile runs (controller-runtime's cache sync).

    Without it, a pool reconciled before its app or namespace arrived through the watch
    would look unbound, and the operator would stop its workers after every restart.
    """
    from celery_operator.k8s import client

    scopes: list[str | None] = list(namespaces) or [None]
    for ns in client.list_objects("v1", "Namespace"):
        ctx.cache.namespaces[ns["metadata"]["name"]] = dict(ns["metadata"].get("labels") or {})
    for kind, table in PRIMARY_TABLES.items():
        for scope in scopes:
            for obj in client.list_objects(f"{GROUP}/{VERSION}", kind, scope):
                obj.setdefault("apiVersion", f"{GROUP}/{VERSION}")
                obj.setdefault("kind", kind)
                ctx.cache.put(table, (obj["metadata"]["namespace"], obj["metadata"]["name"]), obj)
    selector = ",".join(f"{k}={v}" for k, v in OWNED_LABELS.items())
    for api_version, kind in CHILD_KINDS:
        for scope in scopes:
            try:
                items = client.list_objects(api_version, kind, scope, selector)
            except client.ApiError as e:
                if e.not_found:  # e.g. KEDA not installed
                    continue
                raise
            for obj in items:
                obj.setdefault("apiVersion", api_version)
                obj.setdefault("kind", kind)
                ctx.cache.put_child(obj, deleted=False)
    for table, task in (("apps", "app"), ("pools", "pool"), ("flowers", "flower")):
        ctx.queue.add_many(task, list(getattr(ctx.cache, table)))


def register(registry: kopf.OperatorRegistry, ctx: Context, config: OperatorConfig) -> None:
    def spy(handler: Any) -> Any:
        # async: kopf runs a sync handler in a thread pool, a thread hop per watch event;
        # ours only update the cache and the queue, so they run on the event loop itself.
        async def wrapped(event: dict[str, Any], **_: Any) -> None:
            obj = event.get("object")
            if obj:
                handler(ctx, event.get("type") or "ADDED", obj)

        return wrapped

    for plural, handler in (
        ("celeryapps", celeryapp.on_app_event),
        ("celeryworkerpools", celeryworkerpool.on_pool_event),
        ("flowers", flower.on_flower_event),
    ):
        kopf.on.event(GROUP, VERSION, plural, registry=registry)(spy(handler))
    for group, version, plural in WATCHED_CHILDREN:
        kopf.on.event(group, version, plural, labels=OWNED_LABELS, registry=registry)(
            spy(on_child_event)
        )
    kopf.on.event("", "v1", "namespaces", registry=registry)(spy(on_namespace_event))
    kopf.on.event("", "v1", "pods", labels=OWNED_LABELS, registry=registry)(spy(on_pod_event))
    background: list[asyncio.Task[None]] = []

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # In a pod: the ServiceAccount token; elsewhere: $KUBECONFIG or ~/.kube/config.
        info = kopf.login_with_service_account(**kwargs)
        if info is not None:
            # kopf names the apiserver kubernetes.default.svc, which needs cluster DNS;
            # in-cluster clients (client-go, the kubernetes package) use the Service's
            # address from the environment: the same server as our own client's.
            from celery_operator.k8s import client

            return dataclasses.replace(info, server=client.server_url())
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = f"{GROUP}/finalizer"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = NoDiffBase()
        # Conditions carry what happens; the operator posts no Events (and has no RBAC for it).
        settings.posting.enabled = False
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.networking.request_timeout = 60
        await ctx.queue.start_loop()
        await asyncio.to_thread(prime_cache, ctx, config.namespaces)
        await ctx.queue.start()
        if ctx.scaler is not None:
            ctx.scaler.start()
        background.append(asyncio.create_task(resync(ctx, config.resync_seconds)))
        log.info(
            "celery-operator started: %d workers, resync every %.0fs",
            config.workers,
            config.resync_seconds,
        )

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        for task in background:
            task.cancel()
        if ctx.scaler is not None:
            ctx.scaler.stop()
        await ctx.queue.stop()


async def resync(ctx: Context, interval: float) -> None:
    """Reconciles everything periodically: a safety net under the watches."""
    while True:
        await asyncio.sleep(interval * (0.9 + random.random() / 5))
        for table, task in (("apps", "app"), ("pools", "pool"), ("flowers", "flower")):
            ctx.queue.add_many(task, list(getattr(ctx.cache, table)))


def run(config: OperatorConfig) -> None:
    from celery_operator.k8s import client

    client.configure()
    start_http_server(config.metrics_port, addr=config.bind_address)
    ctx = build_context(config.workers)
    registry = kopf.OperatorRegistry()
    register(registry, ctx, config)
    kopf.configure(verbose=False)
    # kopf reports every event handler at INFO; ours run for every watch event.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(
        registry=registry,
        standalone=True,
        # kopf would name itself after getpass.getuser(), which raises for a UID with no
        # passwd entry: the image's 65532, and any runAsUser a cluster picks.
        identity=cast(Any, f"{socket.gethostname()}/{os.getpid()}"),  # kopf's NewType Identity
        clusterwide=not config.namespaces,
        namespaces=config.namespaces,
        liveness_endpoint=f"http://{config.bind_address}:{config.liveness_port}/healthz",
    )
