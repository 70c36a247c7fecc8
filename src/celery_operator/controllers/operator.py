"""`celery-operator run`: informers watch, our queue reconciles.

kopf runs the process: the login, startup and cleanup, signals, the liveness endpoint.
The watches are ours (`k8s.informer`, one thread per resource and namespace): kopf's
relist after a 410 Gone without delivering what was deleted meanwhile, so a child deleted
while the watch was cut stayed in the cache, "present", until a restart. Each event is
handed to the event loop, where a handler updates the cache and enqueues keys; kopf has
no resource handlers, so it keeps no state on our objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import signal
import socket
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import version
from typing import Any, cast

import kopf
from prometheus_client import REGISTRY, start_http_server

from celery_operator.api.base import GROUP
from celery_operator.api.kinds import (
    APP,
    BY_NAME,
    BY_POD_COMPONENT,
    FLOWER,
    KINDS,
    NAMESPACE,
    POD,
    POOL,
    Kind,
    Resource,
    watched_children,
)
from celery_operator.api.labels import LABEL_COMPONENT, OWNED_LABELS, selector
from celery_operator.controllers import celeryapp, celeryworkerpool, flower
from celery_operator.controllers.cache import Cache
from celery_operator.controllers.context import CHILD_STATUS_DELAY, WORKERS_DELAY, Context
from celery_operator.controllers.health import Health
from celery_operator.controllers.leader import IS_LEADER, ElectionConfig, LeaderElector
from celery_operator.controllers.metrics import CeleryCollector, ThreadCpuCollector
from celery_operator.controllers.runtime import WorkQueue
from celery_operator.controllers.secretwatch import SecretWatch
from celery_operator.k8s.events import EventRecorder
from celery_operator.k8s.informer import Informer, wait_synced
from celery_operator.k8s.objects import controller_ref
from celery_operator.plans.celeryworkerpool import autoscaler_scaling
from celery_operator.plans.workers import PodView, epoch_of
from celery_operator.scaling.monitor import Monitors
from celery_operator.scaling.scaler import BuiltinScaler
from celery_operator.scaling.workers import DELETION_COST, DRAINING_SINCE
from celery_operator.status import pod_problem

log = logging.getLogger("celery_operator")

# Each kind's controller: its reconcile (a full and a status-only pass share it) and the
# handler of its watch events. Keyed by the table's kinds: a kind without one fails here.
CONTROLLERS: dict[str, tuple[Any, Any]] = {
    APP.name: (celeryapp.reconcile_app, celeryapp.on_app_event),
    POOL.name: (celeryworkerpool.reconcile_pool, celeryworkerpool.on_pool_event),
    FLOWER.name: (flower.reconcile_flower, flower.on_flower_event),
}
assert set(CONTROLLERS) == {k.name for k in KINDS}, "every kind of api.kinds has a controller"


@dataclass
class OperatorConfig:
    namespaces: list[str] = field(default_factory=list)  # empty: all namespaces
    workers: int = 8
    resync_seconds: float = 300.0
    liveness_port: int = 8080
    metrics_port: int = 9090
    bind_address: str = "0.0.0.0"
    sync_timeout: float = 120.0  # the first LIST of every watched resource
    election: ElectionConfig | None = None  # None: no leader election (one replica)
    # Every pool's queues are measured for the metrics this often (0: only the pools the
    # built-in scaler scales), and every pool's workers listened to.
    celery_metrics_interval: float = 30.0
    # How often each Secret the objects name is read again (a change rolls their pods).
    secret_poll_seconds: float = 30.0


def build_context(
    workers: int,
    identity: str = "",
    secret_poll_seconds: float = 30.0,
    observe: float | None = None,
) -> Context:
    ctx = Context(cache=Cache(), queue=WorkQueue({}, workers=workers), observe_seconds=observe)
    # A Secret some object names changed: its owners reconcile (new mirrors, checksums).
    ctx.secrets = SecretWatch(secret_poll_seconds, on_change=ctx.queue.add)
    # Our Events (kopf's posting is off): `identity` names this replica in them.
    ctx.events = EventRecorder(instance=identity or f"{socket.gethostname()}/{os.getpid()}")
    # A pool's workers changed load: a status pass writes the deletion costs (batched).
    ctx.monitors = Monitors(
        on_change=lambda key: ctx.queue.add_soon(_status_task(POOL), key, WORKERS_DELAY)
    )
    monitors = ctx.monitors
    ctx.scaler = BuiltinScaler(
        on_change=lambda key: ctx.queue.add(POOL.task, key),
        probe_for=lambda target: monitors.probe(target.url_id),
        active_of=monitors.active_tasks,
    )
    for kind in KINDS:
        reconcile = CONTROLLERS[kind.name][0]
        ctx.queue.reconcilers[kind.task] = partial(reconcile, ctx)
        ctx.queue.reconcilers[f"{kind.task}-status"] = partial(reconcile, ctx, apply=False)
    return ctx


def _status_task(kind: Kind) -> str:
    return f"{kind.task}-status"


def on_child_event(ctx: Context, event_type: str, body: dict[str, Any]) -> None:
    """A child changed: repair it when deleted or edited by someone else; else follow its status."""
    deleted = event_type == "DELETED"
    autoscaler = body.get("kind") in ("HorizontalPodAutoscaler", "ScaledObject")
    before = autoscaler_scaling(ctx.cache.cached(body)) if autoscaler else None
    _, drifted = ctx.cache.put_child(body, deleted)
    ref = controller_ref(body)
    if ref is None or not str(ref.get("apiVersion", "")).startswith(f"{GROUP}/"):
        return
    owner = BY_NAME.get(str(ref.get("kind")))
    if owner is None:
        return
    key = (body["metadata"].get("namespace", ""), str(ref["name"]))
    if deleted or drifted:
        ctx.queue.add(owner.task, key)
    elif body.get("kind") == "Deployment":
        # Rollouts send a burst of status events: one status write for the burst.
        ctx.queue.add_soon(_status_task(owner), key, CHILD_STATUS_DELAY)
    elif autoscaler and owner is POOL and autoscaler_scaling(body) != before:
        # The HPA or KEDA started or stopped failing: the pool's ScalingActive says so.
        ctx.queue.add_soon(_status_task(owner), key, CHILD_STATUS_DELAY)


def on_pod_event(ctx: Context, event_type: str, body: dict[str, Any]) -> None:
    """A pod of ours changed: if whether (or why) it cannot run changed, its owner's status
    says so (ImagePullBackOff, CrashLoopBackOff with the last exit, Unschedulable ...)."""
    meta = body["metadata"]
    labels = meta.get("labels") or {}
    component = str(labels.get(LABEL_COMPONENT, ""))
    owner = BY_POD_COMPONENT.get(component)
    if owner is None:
        return
    owner_name = str(labels.get(owner.pod_owner_label, ""))
    if not owner_name:
        return
    ns = str(meta.get("namespace", ""))
    gone = event_type == "DELETED" or bool(meta.get("deletionTimestamp"))
    problem = None if gone else pod_problem(body)
    if ctx.cache.set_pod_problem((ns, component, owner_name), str(meta["name"]), problem):
        ctx.queue.add_soon(_status_task(owner), (ns, owner_name), CHILD_STATUS_DELAY)
    if owner is POOL:
        view = None if event_type == "DELETED" else worker_pod_view(body)
        if ctx.cache.set_worker_pod((ns, owner_name), str(meta["name"]), view):
            ctx.queue.add_soon(_status_task(POOL), (ns, owner_name), WORKERS_DELAY)


def worker_pod_view(pod: dict[str, Any]) -> PodView:
    meta = pod["metadata"]
    annotations = meta.get("annotations") or {}
    conditions = (pod.get("status") or {}).get("conditions") or []
    return PodView(
        name=str(meta["name"]),
        created=epoch_of(str(meta.get("creationTimestamp", ""))) or 0.0,
        ready=any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions),
        deleting=bool(meta.get("deletionTimestamp")),
        cost=annotations.get(DELETION_COST),
        draining_since=annotations.get(DRAINING_SINCE),
    )


def on_namespace_event(ctx: Context, event_type: str, body: dict[str, Any]) -> None:
    name = body["metadata"]["name"]
    labels = dict(body["metadata"].get("labels") or {})
    old = ctx.cache.put(NAMESPACE.kind, ("", name), None if event_type == "DELETED" else body)
    old_labels = None if old is None else dict(old["metadata"].get("labels") or {})
    if old_labels != labels:
        # workerPoolPolicy selects namespaces by label: pools here may bind or unbind.
        ctx.queue.add_many(POOL.task, [k for k in ctx.cache.keys(POOL.name) if k[0] == name])


def informers(ctx: Context, namespaces: list[str], dispatch: Any) -> list[Informer]:
    """One informer per watched resource (and namespace, when the operator watches only
    some): the three kinds, Namespaces, our children and our pods, as the table declares.
    `dispatch(handler, type, body)` hands each event to the event loop."""
    scopes: list[str | None] = list(namespaces) or [None]

    def informer(
        resource: Resource, handler: Any, labels: str = "", optional: bool = False
    ) -> list[Informer]:
        return [
            Informer(
                resource.api_version,
                resource.kind,
                partial(dispatch, handler),
                namespace=scope,
                label_selector=labels,
                optional=optional,
            )
            for scope in (scopes if resource.namespaced else [None])
        ]

    out = informer(NAMESPACE, on_namespace_event)
    for kind in KINDS:
        out += informer(kind.resource, CONTROLLERS[kind.name][1])
    for child in watched_children():
        out += informer(child.resource, on_child_event, selector(OWNED_LABELS), child.optional)
    # Pods too: a drain in progress is written on the worker pods, and the first reconcile
    # of a pool must see it (and why pods cannot run).
    out += informer(POD, on_pod_event, selector(OWNED_LABELS))
    return out


def enqueue_all(ctx: Context) -> None:
    for kind in KINDS:
        ctx.queue.add_many(kind.task, ctx.cache.keys(kind.name))


def register(
    registry: kopf.OperatorRegistry, ctx: Context, config: OperatorConfig, health: Health
) -> None:
    """The login, and startup and cleanup: informers (not kopf's watches, which relist
    without telling what was deleted meanwhile), the queue, the scaler."""
    kopf.on.login(registry=registry)(_login)
    background: list[asyncio.Task[None]] = []
    watching: list[Informer] = []

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        _configure(settings)
        await ctx.queue.start_loop()
        loop = asyncio.get_running_loop()

        def dispatch(handler: Any, event_type: str, body: dict[str, Any]) -> None:
            if loop.is_closed():
                return  # stopping: an informer thread delivered after the loop ended
            with contextlib.suppress(RuntimeError):  # closed between the check and the call
                loop.call_soon_threadsafe(handler, ctx, event_type, body)

        watching.extend(informers(ctx, config.namespaces, dispatch))
        for i in watching:
            i.start()
        # Everything is listed (and handled: the events were queued on this loop before
        # this wait's answer) before any reconcile runs, as controller-runtime waits for
        # its caches: a pool reconciled before its app or namespace arrived would look
        # unbound, and the operator would stop its workers after every restart.
        late = await asyncio.to_thread(wait_synced, watching, config.sync_timeout)
        if late:
            raise kopf.PermanentError(f"the first LIST did not complete: {late}")
        enqueue_all(ctx)
        if isinstance(ctx.events, EventRecorder):
            ctx.events.start()
        await ctx.queue.start()
        if ctx.scaler is not None:
            ctx.scaler.start()
        ctx.secrets.start()
        background.append(asyncio.create_task(resync(ctx, config.resync_seconds)))
        background.append(asyncio.create_task(heartbeat(health)))
        log.info(
            "celery-operator started: %d workers, resync every %.0fs, Secrets polled every %.0fs",
            config.workers,
            config.resync_seconds,
            config.secret_poll_seconds,
        )

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        # No Event is posted once the Lease may be given up (after kopf returns).
        ctx.events.stop()
        for i in watching:
            i.stop()
        for task in background:
            task.cancel()
        if ctx.scaler is not None:
            ctx.scaler.stop()
        ctx.secrets.stop()
        if ctx.monitors is not None:
            ctx.monitors.stop()
        await ctx.queue.stop()


def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # In a pod: the ServiceAccount token; elsewhere: $KUBECONFIG or ~/.kube/config.
    info = kopf.login_with_service_account(**kwargs)
    if info is not None:
        # kopf names the apiserver kubernetes.default.svc, which needs cluster DNS;
        # in-cluster clients (client-go, the kubernetes package) use the Service's
        # address from the environment: the same server as our own client's.
        from celery_operator.k8s import client

        return dataclasses.replace(info, server=client.server_url())
    return kopf.login_with_kubeconfig(**kwargs)


def _configure(settings: kopf.OperatorSettings) -> None:
    # kopf would post its own Events (handler failures, in core/v1): ours replace them
    # (`k8s.events`: events.k8s.io/v1, aggregated and rate-limited), and the RBAC grants
    # only those.
    settings.posting.enabled = False
    settings.networking.request_timeout = 60


async def heartbeat(health: Health) -> None:
    """The event loop runs: /healthz says so."""
    while True:
        health.beat()
        await asyncio.sleep(5)


async def resync(ctx: Context, interval: float) -> None:
    """Reconciles everything periodically: a safety net under the watches."""
    while True:
        await asyncio.sleep(interval * (0.9 + random.random() / 5))
        enqueue_all(ctx)


def run(config: OperatorConfig) -> None:
    from celery_operator.k8s import client

    kopf.configure(verbose=False)
    # kopf reports every event handler at INFO; ours run for every watch event.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    client.configure()
    me = config.election.identity if config.election else f"{socket.gethostname()}/{os.getpid()}"
    client.set_user_agent(f"celery-operator/{version('celery-operator')} ({me})")
    REGISTRY.register(ThreadCpuCollector())
    start_http_server(config.metrics_port, addr=config.bind_address)
    elector = None if config.election is None else LeaderElector(config.election)
    health = Health(describe=lambda: _who_leads(elector))
    health.serve(config.bind_address, config.liveness_port)
    # Until kopf installs its own handlers: SIGTERM ends a standby's wait, or a new
    # leader's startup, through the `finally` below (which gives the Lease up).
    signal.signal(signal.SIGTERM, _terminate)
    try:
        if elector is not None:
            elector.acquire()  # a standby waits here, serving health and metrics
            elector.start_renewing()
            client.write_guard = elector.guard
        if elector is None:  # one replica, no Lease: it leads (the no-leader alert reads it)
            IS_LEADER.labels(me).set(1)
        observe = config.celery_metrics_interval
        ctx = build_context(
            config.workers, me, config.secret_poll_seconds, observe if observe > 0 else None
        )
        # The leader's Celery figures (a standby has none: it holds no objects).
        REGISTRY.register(CeleryCollector(ctx))
        registry = kopf.OperatorRegistry()
        register(registry, ctx, config, health)
        kopf.run(
            registry=registry,
            standalone=True,
            # kopf would name itself after getpass.getuser(), which raises for a UID with
            # no passwd entry: the image's 65532, and any runAsUser a cluster picks.
            identity=cast(Any, f"{socket.gethostname()}/{os.getpid()}"),  # kopf's NewType
            clusterwide=not config.namespaces,
            namespaces=config.namespaces,
        )
    finally:
        if elector is not None:
            client.write_guard = None
            elector.release()


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def _who_leads(elector: LeaderElector | None) -> str:
    if elector is None:
        return "(no leader election)"
    role = "leader" if elector.leading else "standby"
    return f"{role} {elector.me}; leader: {elector.holder or 'none'}"
