"""The CeleryWorkerPool's plan (pure): bind the pool to its app, then render its workers.

The blocking chain, first match wins: InvalidSpec (the schema, then the validators),
AppNotFound / NamespaceNotAllowed (not accepted: its children are deleted), AppInvalid,
a status-only pass or a paused app (nothing applied), BrokerUnreadable, InvalidSpec again
for what needs the broker or KEDA. After apply, a name taken by a foreign object turns
the status into ChildConflict (`PoolPlan.status`). An image pull Secret of the app that
cannot be mirrored blocks nothing: Ready says PullSecretUnreadable, its mirror is kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery_operator.api.celeryapp import CeleryApp
from celery_operator.api.celeryworkerpool import CeleryWorkerPool
from celery_operator.api.conditions import (
    APP_INVALID,
    AUTOSCALER_ACTIVE,
    AUTOSCALER_FAILING,
    BOUND,
    BROKER_UNREACHABLE,
    BROKER_UNREADABLE,
    CONNECTING,
    HEARTBEATS_RECEIVED,
    INVALID_SPEC,
    NOT_SUPPORTED,
    POLLING,
    PULL_SECRET_UNREADABLE,
    QUEUE_LENGTH_READ,
    READY,
    SCALING_ACTIVE,
    Blocker,
    Outcome,
)
from celery_operator.api.kinds import DEPLOYMENT, HPA, POOL, SCALED_OBJECT, Key, pool_app_key
from celery_operator.api.labels import PULL_SECRET_MIRRORS_ANNOTATION, selector
from celery_operator.brokerurl import BrokerURL, BrokerURLError, parse_broker_url
from celery_operator.plans.common import Body, app_problems, kept_block
from celery_operator.plans.secrets import (
    ABSENT,
    SecretKey,
    SecretUse,
    SecretView,
    current_checksum,
    pod_checksum,
    pod_secret_uses,
    secret_rollout,
    secrets_of,
)
from celery_operator.plans.workers import PodView, WorkerPlan, plan_workers, workers_status
from celery_operator.render import autoscaling as render_autoscaling
from celery_operator.render import celeryworkerpool as render
from celery_operator.render import common
from celery_operator.scaling.decision import Policy
from celery_operator.scaling.scaler import Target
from celery_operator.scaling.workers import MonitorTarget, PoolHeartbeats
from celery_operator.status import AppRef, get_condition, pool_status
from celery_operator.validation import errors, format_problems
from celery_operator.validation.celeryworkerpool import (
    PoolContext,
    binding_reason,
    validate_pool,
    validate_pool_binding,
    validate_pool_pods,
)

BROKER, RESULT_BACKEND = "broker", "resultBackend"
MONITORED_FAMILIES = ("redis", "amqp")  # brokers that carry Celery's worker events


@dataclass(frozen=True)
class Connection:
    """A connection URL of the app as gather read it: the URL, or why it could not."""

    url: str | None = field(default=None, repr=False)  # it may carry a password
    problem: str = ""


@dataclass(frozen=True)
class ScalerView:
    """What the built-in scaler says of the pool (its `status()`), None when it does not
    poll it yet."""

    replicas: int | None = None
    queue_length: int | None = None
    last_scale_time: str | None = None
    error: str | None = None
    active_tasks: int | None = None


@dataclass(frozen=True)
class PoolInputs:
    """Everything the plan reads, gathered by the controller."""

    key: Key
    body: Body
    pool: CeleryWorkerPool | Blocker  # the parsed spec, or why the schema rejects it
    app: CeleryApp | None  # None: missing, being deleted or unreadable
    namespace_labels: Mapping[str, str]
    deployment: Body | None  # the worker Deployment as cached
    now: str
    apply: bool = True  # False: a status-only pass (nothing is written but the status)
    connections: Mapping[str, Connection] = field(default_factory=dict)  # see connection_reads
    keda_installed: bool = True
    scaler: ScalerView | None = None  # None: no built-in scaler runs in this process
    problem: Blocker | None = None  # a worker pod that cannot run
    pods: Sequence[PodView] = ()  # the worker pods
    heartbeats: PoolHeartbeats | None = None  # None: the broker is not listened to (yet)
    epoch: float = 0.0  # the clock, in seconds (drains are timed against the pods' marks)
    # Every pool's queues and workers are measured for the metrics, every this many
    # seconds (None: only the pools that need it for scaling or protection).
    observe: float | None = None
    # The Secrets `secret_reads` names, as last read (one missing here: it does not exist).
    secrets: Mapping[SecretKey, SecretView] = field(default_factory=dict)
    # The pool's HorizontalPodAutoscaler (engine hpa) or ScaledObject (keda), as cached:
    # what they say of themselves becomes ScalingActive.
    autoscaler_object: Body | None = None


@dataclass(frozen=True)
class PoolPlan:
    """What the reconcile does, and the status it writes (given the applied Deployment)."""

    key: Key
    body: Body
    accepted: Outcome
    blocked: Blocker | None = None
    children: tuple[dict[str, Any], ...] | None = None  # None: change no child
    delete_children: bool = False  # not accepted: stop its workers
    known_secrets: tuple[str, ...] = ()  # its Secrets (unwatched: deleted by name)
    keep_secrets: tuple[str, ...] = ()  # mirrors not rebuilt now (their source is unreadable)
    stale_secrets: tuple[str, ...] = ()  # mirrors of pull Secrets the app no longer names
    hand_off_replicas: bool = False  # an HPA or KEDA takes spec.replicas over
    track: Target | None = None  # the built-in scaler polls the pool's queues
    untrack: bool = False  # ... or stops polling them
    replicas: int | None = None  # the worker Deployment's spec.replicas (None: not ours)
    app_ref: AppRef | None = None
    deployment_name: str | None = None
    selector: str | None = None
    autoscaler: dict[str, Any] | None = None
    scaling: Outcome | None = None
    paused: bool = False
    problem: Blocker | None = None
    now: str = ""
    monitor: MonitorTarget | None = None  # the broker to listen to for the pool's workers
    unmonitor: bool = False
    quiet: bool = False  # listened to for the metrics only: its load changes no status
    worker_plan: WorkerPlan | None = None  # deletion costs, drains, consumer commands
    workers: dict[str, Any] | None = None  # status.workers
    load: Outcome | None = None  # LoadObserved
    draining: str = ""  # Reconciling=Draining, its message
    retry_after: float | None = None  # look again (a drain in progress)
    unready: Blocker | None = None  # Ready=False though everything was applied (pull Secrets)

    @property
    def deployment_ident(self) -> tuple[str, str, str]:
        return deployment_ident(self.key, self.body)

    @property
    def status_can_wait(self) -> bool:
        """Whether a status-only pass, run a moment later, rebuilds this status: not when it
        carries what only a full pass finds (a pull Secret that cannot be mirrored: a
        status pass reads no Secret, it keeps only what the written status says)."""
        return self.unready is None

    def status(self, deployment: Body | None, conflict: Blocker | None = None) -> dict[str, Any]:
        bound = self.accepted.ok
        meta = self.body["metadata"]
        return pool_status(
            generation=meta.get("generation"),
            old=self.body.get("status"),
            accepted=self.accepted,
            app=self.app_ref,
            deployment_name=self.deployment_name if bound else None,
            deployment=deployment if bound else None,
            selector=self.selector,
            blocked=conflict or self.blocked,
            autoscaler=None if conflict else self.autoscaler,
            scaling=None if conflict else self.scaling,
            paused=self.paused,
            problem=self.problem,
            workers=self.workers,
            load=None if conflict else self.load,
            draining="" if conflict else self.draining,
            unready=None if conflict else self.unready,
            now=self.now,
        )


def deployment_ident(key: Key, body: Body) -> tuple[str, str, str]:
    """The worker Deployment's (apiVersion/kind, namespace, name), as the cache names it."""
    name = common.worker_deployment_name(pool_app_key(body)[1], key[1])
    return (DEPLOYMENT.resource.key, key[0], name)


def autoscaler_ident(key: Key, body: Body, engine: str | None) -> tuple[str, str, str] | None:
    """The HPA (engine hpa) or ScaledObject (keda) of the pool, as the cache names it."""
    kind = {"hpa": HPA, "keda": SCALED_OBJECT}.get(engine or "")
    if kind is None:
        return None
    return (kind.resource.key, key[0], deployment_ident(key, body)[2])


def connection_reads(i: PoolInputs) -> tuple[str, ...]:
    """Which of the app's connection URLs the plan needs (gather reads exactly these): the
    broker for a pool outside the app's namespace (its workers read a mirror of the
    connection Secret) and for queue-length autoscaling, the result backend for the mirror."""
    if not i.apply or _early_block(i) is not None:
        return ()
    assert isinstance(i.pool, CeleryWorkerPool)
    assert i.app is not None
    if i.app.spec.paused:
        return ()
    cross_ns = i.key[0] != (i.app.metadata["namespace"])
    engine = render_autoscaling.autoscaler_engine(i.pool)
    if cross_ns:
        return (BROKER, RESULT_BACKEND)
    needed = engine in ("builtin", "keda") or _monitored(i.pool, engine)
    return (BROKER,) if needed else ()


def wanted_reads(i: PoolInputs) -> tuple[str, ...]:
    """What gather reads: what the plan needs, and the broker of a pool measured for the
    metrics only (a failure to read that one blocks nothing)."""
    reads = connection_reads(i)
    if reads or i.observe is None or not i.apply or _early_block(i) is not None:
        return reads
    assert i.app is not None
    return () if i.app.spec.paused else (BROKER,)


def secret_reads(i: PoolInputs) -> tuple[SecretKey, ...]:
    """Which Secrets the plan reads (gather reads exactly these, through the operator's
    Secret poller, which reconciles the pool again when one of them changes): the app's
    connection Secrets that `connection_reads` needs, those the worker pods read at start
    (their checksum), and for a pool outside the app's namespace the app's image pull
    Secrets (mirrored). None for a pass that renders nothing."""
    if not i.apply or _early_block(i) is not None:
        return ()
    assert isinstance(i.pool, CeleryWorkerPool)
    assert i.app is not None
    pool, app = i.pool, i.app
    if app.spec.paused or errors(validate_pool_pods(pool, app)):
        return ()
    keys: set[SecretKey] = set()
    for which in wanted_reads(i):
        conn = app.spec.broker if which == BROKER else app.spec.result_backend
        ref = None if conn is None else conn.url.secret_key_ref
        if ref and ref.get("name"):
            keys.add((app.metadata["namespace"], str(ref["name"])))
    deployment = _worker_deployment(i, pool, app, None, None)
    keys.update(secrets_of(_worker_uses(i, app, deployment)))
    keys.update((app.metadata["namespace"], source) for source, _ in _pull_mirrors(i, pool, app))
    return tuple(sorted(keys))


def _cross_namespace(i: PoolInputs, app: CeleryApp) -> bool:
    return bool(i.key[0] != app.metadata["namespace"])


def _connection_mirror(i: PoolInputs, pool: CeleryWorkerPool, app: CeleryApp) -> str | None:
    """The mirror of the app's connection Secret the workers read (a pool outside the
    app's namespace, an app whose broker or result backend URL is in a Secret)."""
    secret_refs = app.spec.broker.url.secret_key_ref or (
        app.spec.result_backend and app.spec.result_backend.url.secret_key_ref
    )
    if not _cross_namespace(i, app) or not secret_refs:
        return None
    return common.connection_secret_name(app.metadata["name"], pool.metadata["name"])


def _pull_mirrors(
    i: PoolInputs, pool: CeleryWorkerPool, app: CeleryApp
) -> tuple[tuple[str, str], ...]:
    """(the app's image pull Secret, its mirror) for a pool outside the app's namespace."""
    if not _cross_namespace(i, app):
        return ()
    names = dict.fromkeys(str(s["name"]) for s in app.spec.image_pull_secrets if s.get("name"))
    app_name, name = app.metadata["name"], pool.metadata["name"]
    return tuple((n, common.pull_secret_mirror_name(app_name, name, n)) for n in names)


def _worker_deployment(
    i: PoolInputs,
    pool: CeleryWorkerPool,
    app: CeleryApp,
    owner: dict[str, Any] | None,
    replicas: int | None,
) -> dict[str, Any]:
    """The worker Deployment as rendered, before its Secret checksum."""
    pulls = [mirror for _, mirror in _pull_mirrors(i, pool, app)]
    return render.build_worker_deployment(
        app,
        pool,
        owner,
        replicas=replicas,
        connection_secret=_connection_mirror(i, pool, app),
        pull_secrets=pulls if _cross_namespace(i, app) else None,
    )


def _worker_uses(
    i: PoolInputs, app: CeleryApp, deployment: Mapping[str, Any]
) -> tuple[SecretUse, ...]:
    """What the worker pods read of Secrets at start. A read of the connection mirror is a
    read of the app's Secret it copies: the checksum follows the source, so the mirror and
    the pods' new template are written by the same reconcile (one rollout, not two)."""
    assert isinstance(i.pool, CeleryWorkerPool)
    mirror = _connection_mirror(i, i.pool, app)
    sources: dict[str, SecretUse] = {}
    for key, conn in (
        (common.MIRROR_BROKER_KEY, app.spec.broker),
        (common.MIRROR_BACKEND_KEY, app.spec.result_backend),
    ):
        ref = None if conn is None else conn.url.secret_key_ref
        if ref and ref.get("name") and ref.get("key"):
            sources[key] = SecretUse(app.metadata["namespace"], str(ref["name"]), str(ref["key"]))
    out: set[SecretUse] = set()
    for use in pod_secret_uses(deployment):
        if mirror is not None and use.name == mirror and use.namespace == i.key[0]:
            source = sources.get(use.key or "")
            if source is not None:
                out.add(source)
                continue
        out.add(use)
    return tuple(sorted(out, key=SecretUse.order))


def _early_block(i: PoolInputs) -> Blocker | None:
    """The chain up to the app: the pool's spec, its binding, the app's spec."""
    if isinstance(i.pool, Blocker):
        return i.pool
    if spec_errors := errors(validate_pool(i.pool)):
        return Blocker(INVALID_SPEC, format_problems(spec_errors))
    ctx = PoolContext(app=i.app, namespace_labels=i.namespace_labels)
    if (reason := binding_reason(i.pool, ctx)) is not None:
        return reason
    assert i.app is not None
    if invalid := app_problems(i.app):
        return Blocker(APP_INVALID, invalid)
    return None


def plan_pool(i: PoolInputs) -> PoolPlan:
    base = PoolPlan(i.key, i.body, Outcome(False, INVALID_SPEC, ""), problem=i.problem, now=i.now)
    if isinstance(i.pool, Blocker):
        return dataclasses.replace(
            base, accepted=Outcome(False, *i.pool), blocked=i.pool, untrack=True
        )
    pool, app_key = i.pool, pool_app_key(i.body)
    base = dataclasses.replace(
        base,
        app_ref=AppRef(app_key[1], app_key[0]),
        deployment_name=common.worker_deployment_name(app_key[1], i.key[1]),
        selector=selector(render.selector_labels(pool)),
        untrack=True,
        unmonitor=True,
    )
    block = _early_block(i)
    if block is not None and block.reason != APP_INVALID:
        if block.reason == INVALID_SPEC:  # nothing from an invalid spec; nothing torn down
            return dataclasses.replace(base, accepted=Outcome(False, *block), blocked=block)
        return dataclasses.replace(  # not accepted: its workers stop
            base,
            accepted=Outcome(False, *block),
            delete_children=i.apply,
            known_secrets=_known_secrets(pool, i.deployment),
        )
    accepted = Outcome(True, BOUND, f"bound to CeleryApp {app_key[0]}/{app_key[1]}")
    base = dataclasses.replace(base, accepted=accepted)
    if block is not None:  # AppInvalid: the app's own status says why; nothing rendered
        return dataclasses.replace(base, blocked=block)
    assert i.app is not None
    return _plan_bound(i, pool, i.app, base)


def _plan_bound(i: PoolInputs, pool: CeleryWorkerPool, app: CeleryApp, base: PoolPlan) -> PoolPlan:
    engine = render_autoscaling.autoscaler_engine(pool)
    # Checked on every pass: a status-only pass must not report Ready over it.
    if pod_errors := errors(validate_pool_pods(pool, app)):
        return dataclasses.replace(base, blocked=Blocker(INVALID_SPEC, format_problems(pod_errors)))
    if not i.apply or app.spec.paused:
        return _plan_unchanged(i, pool, app, base, engine)
    broker = _broker(i)
    if isinstance(broker, Blocker):
        return dataclasses.replace(base, blocked=broker)
    ctx = PoolContext(
        app=app,
        namespace_labels=i.namespace_labels,
        broker=broker,
        keda_installed=engine != "keda" or i.keda_installed,
    )
    if binding_errors := errors(validate_pool_binding(pool, ctx)):
        return dataclasses.replace(
            base, blocked=Blocker(INVALID_SPEC, format_problems(binding_errors))
        )
    monitor = _monitor(i, pool, app, engine, broker)
    track = _target(i, pool, engine, broker, monitor)
    quiet = monitor is not None and not _monitored(pool, engine)
    wp = _workers(i, pool, engine, _replicas(i, pool, engine), status_only=False)
    children, pulls = _children(i, pool, app, engine, broker, wp.replicas)
    return _with_workers(
        dataclasses.replace(
            base,
            children=children,
            keep_secrets=pulls.keep,
            stale_secrets=pulls.stale,
            unready=pulls.problem,
            hand_off_replicas=wp.replicas is None and i.deployment is not None,
            track=track,
            untrack=track is None,
            monitor=monitor,
            unmonitor=monitor is None,
            quiet=quiet,
            replicas=wp.replicas,
            autoscaler=_autoscaler(pool, engine, i.scaler, wp.replicas),
            scaling=_scaling(engine, i.scaler, i.autoscaler_object, i.body.get("status")),
        ),
        i,
        pool,
        engine,
        wp,
    )


def _plan_unchanged(
    i: PoolInputs, pool: CeleryWorkerPool, app: CeleryApp, base: PoolPlan, engine: str | None
) -> PoolPlan:
    """A status pass, or a paused app: no child changes; deletion costs still follow."""
    polling = engine == "builtin" and not app.spec.paused
    generation = i.body["metadata"].get("generation")
    plan = dataclasses.replace(
        base,
        blocked=None if i.apply else kept_block(i.body.get("status"), generation),
        # A status-only pass reads no Secret: what the last full pass found holds.
        unready=None if i.apply else _kept_unready(i.body.get("status"), generation),
        # A status-only pass leaves the polling as it is (and the measuring), and the
        # listening.
        untrack=not polling and i.observe is None,
        unmonitor=False,
        autoscaler=_autoscaler(pool, engine, i.scaler, None),
        scaling=None
        if app.spec.paused
        else _scaling(engine, i.scaler, i.autoscaler_object, i.body.get("status")),
        paused=app.spec.paused,
    )
    return _with_workers(plan, i, pool, engine, _workers(i, pool, engine, None, status_only=True))


def _monitored(pool: CeleryWorkerPool, engine: str | None) -> bool:
    """Whether the pool's workers are listened to: to protect busy ones, or to see the
    whole load (the built-in engine)."""
    return pool.spec.scale_down.protect_busy_workers or engine == "builtin"


def _monitor(
    i: PoolInputs,
    pool: CeleryWorkerPool,
    app: CeleryApp,
    engine: str | None,
    broker: BrokerURL | None,
) -> MonitorTarget | None:
    url = i.connections.get(BROKER, Connection()).url
    if not (_monitored(pool, engine) or i.observe is not None) or broker is None or url is None:
        return None
    options = app.spec.broker.transport_options
    frozen = tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in options.items()))
    url_id = hashlib.sha256(json.dumps([url, frozen]).encode()).hexdigest()[:24]
    return MonitorTarget(
        url=url,
        url_id=url_id,
        redacted=broker.redacted(),
        transport_options=tuple(sorted(options.items())),
        supported=broker.family in MONITORED_FAMILIES,
    )


def _current(i: PoolInputs) -> int | None:
    replicas = ((i.deployment or {}).get("spec") or {}).get("replicas")
    return None if replicas is None else int(replicas)


def _workers(
    i: PoolInputs,
    pool: CeleryWorkerPool,
    engine: str | None,
    desired: int | None,
    status_only: bool,
) -> WorkerPlan:
    """Deletion costs, and for a full pass the drain and the replicas to apply."""
    if not _monitored(pool, engine):
        return plan_workers(
            i.pods,
            None,
            protect=False,
            drain_timeout=0,
            desired=desired,
            current=_current(i),
            ours=False,
            now=i.epoch,
            status_only=status_only,
        )
    sd = pool.spec.scale_down
    return plan_workers(
        i.pods,
        i.heartbeats,
        protect=sd.protect_busy_workers,
        drain_timeout=sd.drain_timeout_seconds,
        desired=desired,
        current=_current(i),
        ours=engine in (None, "builtin"),
        now=i.epoch,
        status_only=status_only,
    )


def _with_workers(
    plan: PoolPlan, i: PoolInputs, pool: CeleryWorkerPool, engine: str | None, wp: WorkerPlan
) -> PoolPlan:
    """The plan with what it does to the workers, and what its status says of them."""
    if not _monitored(pool, engine):
        return dataclasses.replace(plan, worker_plan=wp)
    hb = i.heartbeats
    if hb is None:
        load = Outcome(False, CONNECTING, "connecting to the broker to hear the workers")
    elif not hb.supported:
        load = Outcome(
            False,
            NOT_SUPPORTED,
            "this broker carries no worker heartbeats: busy workers "
            "are not protected on scale-down",
        )
    elif not hb.known and hb.error == "waiting":
        load = Outcome(False, CONNECTING, "listening for the workers' heartbeats")
    elif not hb.known and hb.error == "connecting":  # the first attempt is under way
        load = Outcome(False, CONNECTING, "connecting to the broker to hear the workers")
    elif not hb.known:
        load = Outcome(
            False,
            BROKER_UNREACHABLE,
            f"cannot hear the workers' heartbeats ({hb.error}); "
            "deletion costs and drains are left as they are",
        )
    else:
        load = Outcome(True, HEARTBEATS_RECEIVED, "the workers' heartbeats arrive")
    status = (
        workers_status(i.pods, hb, i.epoch, len(wp.draining))
        if hb is not None and hb.known
        else None
    )
    return dataclasses.replace(
        plan,
        worker_plan=wp,
        workers=status,
        load=load,
        draining=wp.message,
        retry_after=wp.retry_after,
    )


def _kept_unready(old: Mapping[str, Any] | None, generation: object) -> Blocker | None:
    """The PullSecretUnreadable that the last full reconcile of this generation found."""
    for c in (old or {}).get("conditions") or []:
        if (
            c.get("type") == READY
            and c.get("reason") == PULL_SECRET_UNREADABLE
            and c.get("observedGeneration") == generation
        ):
            return Blocker(PULL_SECRET_UNREADABLE, str(c.get("message", "")))
    return None


def _mirrors_of(deployment: Body | None) -> set[str]:
    """The pull Secret mirrors the worker Deployment (as cached) names."""
    annotations = ((deployment or {}).get("metadata") or {}).get("annotations") or {}
    return {n for n in str(annotations.get(PULL_SECRET_MIRRORS_ANNOTATION, "")).split(",") if n}


def _known_secrets(pool: CeleryWorkerPool, deployment: Body | None) -> tuple[str, ...]:
    app_name, name = pool.spec.app_ref.name, pool.metadata["name"]
    return tuple(
        sorted(
            {
                common.connection_secret_name(app_name, name),
                render_autoscaling.keda_secret_name_of(app_name, name),
                *_mirrors_of(deployment),
            }
        )
    )


def _broker(i: PoolInputs) -> BrokerURL | Blocker | None:
    """The app's broker URL, parsed, when gather read it; BrokerUnreadable when it could not."""
    for which in connection_reads(i):
        if i.connections.get(which, Connection()).problem:
            return Blocker(BROKER_UNREADABLE, i.connections[which].problem)
    url = i.connections.get(BROKER, Connection()).url
    try:
        return parse_broker_url(url) if url else None
    except BrokerURLError as e:
        if BROKER not in connection_reads(i):
            return None  # read for the metrics only: they go without it
        return Blocker(BROKER_UNREADABLE, str(e))


def _replicas(i: PoolInputs, pool: CeleryWorkerPool, engine: str | None) -> int | None:
    """The spec's when fixed; None (left to the HPA/KEDA) when they scale; for engine
    builtin the scaler's last decision, else the current replicas within the bounds."""
    if engine is None:
        return pool.spec.replicas
    if engine != "builtin":
        return None
    if i.scaler is not None and i.scaler.replicas is not None:
        return i.scaler.replicas
    a = pool.spec.autoscaling
    assert a is not None
    current = ((i.deployment or {}).get("spec") or {}).get("replicas")
    if current is None:
        return a.min_replicas
    return min(max(int(current), a.min_replicas), a.max_replicas)


def _target(
    i: PoolInputs,
    pool: CeleryWorkerPool,
    engine: str | None,
    broker: BrokerURL | None,
    monitor: MonitorTarget | None,
) -> Target | None:
    """What the built-in scaler polls for this pool: its queues, to scale it (engine builtin)
    or only to measure them for the metrics (`i.observe`); None: neither. It reads the
    queues through the broker's monitor, which the plan asks for too."""
    a = pool.spec.autoscaling
    if broker is None or i.scaler is None or monitor is None:
        return None
    if engine != "builtin" or a is None:
        if i.observe is None or broker.family not in MONITORED_FAMILIES:
            return None
        return Target(
            key=i.key,
            broker=broker,
            url_id=monitor.url_id,
            queues=tuple(pool.spec.queues),
            policy=None,
            interval=i.observe,
        )
    ql = a.queue_length
    assert ql is not None
    return Target(
        key=i.key,
        broker=broker,
        url_id=monitor.url_id,
        queues=tuple(pool.spec.queues),
        policy=Policy(
            a.min_replicas,
            a.max_replicas,
            ql.target_per_replica,
            ql.activation,
            ql.cooldown_seconds,
        ),
        interval=float(ql.polling_interval_seconds),
    )


@dataclass(frozen=True)
class PullMirrors:
    """The app's image pull Secrets, mirrored into a pool's namespace."""

    secrets: tuple[dict[str, Any], ...] = ()  # the mirrors rebuilt from their source
    keep: tuple[str, ...] = ()  # mirrors whose source cannot be read: left as they are
    stale: tuple[str, ...] = ()  # mirrors (per the Deployment) of Secrets no longer named
    problem: Blocker | None = None


def _pull_secrets(
    i: PoolInputs, pool: CeleryWorkerPool, app: CeleryApp, owner: dict[str, Any]
) -> PullMirrors:
    """Each mirror rebuilt from its source as read; one whose source is missing or cannot
    be read is kept (the pods name it whatever happens, so their template stays) and Ready
    says which."""
    mirrors = _pull_mirrors(i, pool, app)
    app_ns, ns = app.metadata["namespace"], i.key[0]
    built, keep, missing = [], [], []
    for source, mirror in mirrors:
        view = i.secrets.get((app_ns, source), ABSENT)
        if view.known and view.exists:
            built.append(
                render.build_pull_secret_mirror(app, pool, source, view.type, view.data, owner)
            )
            continue
        keep.append(mirror)
        missing.append(
            f"Secret {app_ns}/{source} ({view.error or 'it does not exist'}) as {mirror}"
        )
    problem = None
    if missing:
        problem = Blocker(
            PULL_SECRET_UNREADABLE,
            f"spec.imagePullSecrets of CeleryApp {app_ns}/{app.metadata['name']}: cannot mirror "
            f"{'; '.join(missing)} into namespace {ns}: a mirror written before is left as it "
            "was (the kubelet pulls without one that does not exist)",
        )
    stale = _mirrors_of(i.deployment) - {m for _, m in mirrors}
    return PullMirrors(tuple(built), tuple(keep), tuple(sorted(stale)), problem)


def _children(
    i: PoolInputs,
    pool: CeleryWorkerPool,
    app: CeleryApp,
    engine: str | None,
    broker: BrokerURL | None,
    replicas: int | None,
) -> tuple[tuple[dict[str, Any], ...], PullMirrors]:
    """The children in the order they are applied: the mirrors first, so that the pods of
    a new template read the new values."""
    owner = common.owner_reference(i.body, POOL.name)
    desired: list[dict[str, Any]] = []
    if _connection_mirror(i, pool, app) is not None:
        urls = {w: i.connections.get(w, Connection()).url for w in (BROKER, RESULT_BACKEND)}
        desired.append(
            render.build_connection_secret(app, pool, urls[BROKER], urls[RESULT_BACKEND], owner)
        )
    pulls = _pull_secrets(i, pool, app, owner)
    desired += pulls.secrets
    deployment = _worker_deployment(i, pool, app, owner, replicas)
    uses = _worker_uses(i, app, deployment)
    checksum = pod_checksum(uses, i.secrets, current_checksum(i.deployment))
    desired.append(common.with_secret_checksum(deployment, *secret_rollout(checksum, i.deployment)))
    desired += [
        x
        for x in (
            render.build_worker_pdb(app, pool, owner),
            render_autoscaling.build_hpa(app, pool, owner),
        )
        if x is not None
    ]
    if engine == "keda" and broker is not None:
        keda = render_autoscaling.build_keda_objects(app, pool, broker, owner)
        if keda is not None:
            desired += [
                x for x in (keda.secret, keda.trigger_authentication, keda.scaled_object) if x
            ]
    return tuple(desired), pulls


def _autoscaler(
    pool: CeleryWorkerPool, engine: str | None, scaler: ScalerView | None, applied: int | None
) -> dict[str, Any] | None:
    a = pool.spec.autoscaling
    if engine is None or a is None:
        return None
    out: dict[str, Any] = {
        "engine": engine,
        "summary": f"{engine} {a.min_replicas}-{a.max_replicas}",
    }
    if engine != "builtin" or scaler is None:
        return out
    # Tracked for the first time, the scaler holds the replicas it is given: `applied`.
    fields = {
        "desiredReplicas": scaler.replicas if scaler.replicas is not None else applied,
        "queueLength": scaler.queue_length,
        "activeTasks": scaler.active_tasks,
        "lastScaleTime": scaler.last_scale_time,
    }
    return out | {k: v for k, v in fields.items() if v is not None}


def _scaling(
    engine: str | None,
    scaler: ScalerView | None,
    autoscaler: Body | None = None,
    old_status: Mapping[str, Any] | None = None,
) -> Outcome | None:
    """ScalingActive (as an HPA says it): can the built-in scaler read the queues? For an
    HPA or KEDA, what their own object says (autoscaler_scaling)."""
    if engine in ("hpa", "keda"):
        return autoscaler_scaling(autoscaler) or _kept_autoscaler_scaling(old_status, autoscaler)
    if engine != "builtin" or scaler is None:
        return None
    if scaler.queue_length is None and scaler.error is None:
        return Outcome(True, POLLING, "waiting for the first queue-length poll")
    if scaler.error:
        return Outcome(
            False,
            BROKER_UNREACHABLE,
            f"cannot read queue lengths ({scaler.error}); replicas stay as they are",
        )
    return Outcome(True, QUEUE_LENGTH_READ, f"{scaler.queue_length} tasks waiting")


# The apiserver's optimistic-concurrency refusal: whoever got it reads again and retries.
CONFLICT = "the object has been modified"


def _autoscaler_what(obj: Body) -> str:
    """How ScalingActive's message names the object: "<Kind> <name>"."""
    return f"{obj.get('kind', '')} {(obj.get('metadata') or {}).get('name', '')}"


def _kept_autoscaler_scaling(status: Mapping[str, Any] | None, obj: Body | None) -> Outcome | None:
    """The ScalingActive an hpa or keda pool had while that same object says nothing new
    (a conflict KEDA retries); none once the object is gone or is another (a new engine)."""
    c = get_condition(status or {}, SCALING_ACTIVE)
    if obj is None or c is None or c.get("reason") not in (AUTOSCALER_ACTIVE, AUTOSCALER_FAILING):
        return None
    message = str(c.get("message", ""))
    if not message.startswith(f"{_autoscaler_what(obj)}:"):
        return None
    return Outcome(c.get("status") == "True", str(c["reason"]), message)


def autoscaler_scaling(obj: Body | None) -> Outcome | None:
    """ScalingActive of an hpa or keda pool, from its HorizontalPodAutoscaler's own
    AbleToScale/ScalingActive or its ScaledObject's Ready; None until they say anything.

    An HPA that gets no metrics (no metrics-server, no CPU request ...) or a ScaledObject
    whose triggers fail (KEDA cannot reach the broker, a RabbitMQ queue not declared yet)
    never scales, and nothing else in the pool's status would say so."""
    if obj is None:
        return None
    st = obj.get("status") or {}
    meta = obj.get("metadata") or {}
    name, ns = meta.get("name", ""), meta.get("namespace", "")
    what = _autoscaler_what(obj)
    if obj.get("kind") == "HorizontalPodAutoscaler":
        able, active = get_condition(st, "AbleToScale"), get_condition(st, "ScalingActive")
        bad = next((c for c in (able, active) if c and c.get("status") == "False"), None)
        if bad is not None:
            return Outcome(
                False,
                AUTOSCALER_FAILING,
                f"{what}: {bad.get('reason', '')}: {bad.get('message', '')} "
                f"(kubectl describe hpa {name} -n {ns})",
            )
        if active is None:
            return None
        return Outcome(True, AUTOSCALER_ACTIVE, f"{what}: {active.get('message', '')}")
    ready = get_condition(st, "Ready")
    if ready is None or (ready.get("status") == "Unknown" and not ready.get("reason")):
        return None
    if CONFLICT in str(ready.get("message", "")):
        return None  # KEDA lost a race with another writer of the object and tries again
    if ready.get("status") == "True":
        return Outcome(True, AUTOSCALER_ACTIVE, f"{what}: {ready.get('message', '')}")
    failing = sorted(
        str(k) for k, v in (st.get("health") or {}).items() if (v or {}).get("status") == "Failing"
    )
    message = f"{what}: {ready.get('reason', '')}: {ready.get('message', '')}"
    if failing:
        message += f"; failing: {', '.join(failing)}"
    message += f" (KEDA's events say why: kubectl describe scaledobject {name} -n {ns})"
    return Outcome(False, AUTOSCALER_FAILING, message)
