"""Validators of a CeleryWorkerPool (pure): the object alone, and its binding to an app."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from celery_operator.api import celeryworkerpool as api
from celery_operator.api.celeryapp import CeleryApp
from celery_operator.api.celeryworkerpool import CeleryWorkerPool
from celery_operator.api.conditions import APP_NOT_FOUND, NAMESPACE_NOT_ALLOWED, Blocker
from celery_operator.brokerurl import BrokerURL
from celery_operator.validation.celeryapp import pod_defaults_part
from celery_operator.validation.common import (
    PodPart,
    Problem,
    image_tag_warning,
    inherited_pod_problems,
    own_pod_problems,
    selector_matches,
)

BUILTIN_FAMILIES = ("redis", "amqp")
KEDA_FAMILIES = ("redis", "amqp", "sqs")


def pod_part(pool: CeleryWorkerPool) -> PodPart:
    s = pool.spec
    return PodPart("spec", s.volumes, s.volume_mounts, s.init_containers, s.sidecars)


def validate_pool_pods(pool: CeleryWorkerPool, app: CeleryApp) -> list[Problem]:
    """The pool's volumes and mounts added to its app's podDefaults (needs no broker: the
    controller checks it on status-only passes too)."""
    return inherited_pod_problems(pod_part(pool), pod_defaults_part(app))


def validate_pool(pool: CeleryWorkerPool) -> list[Problem]:
    """What one pool object alone can tell (the CRD's CEL rules, with the same messages)."""
    s = pool.spec
    problems: list[Problem] = []
    if s.pool == "solo" and s.concurrency != 1:
        problems.append(Problem("spec.concurrency", api.MSG_SOLO))
    if s.pool == "solo" and s.probes.readiness.enabled:
        problems.append(Problem("spec.probes.readiness.enabled", api.MSG_SOLO_READINESS))
    problems += own_pod_problems(pod_part(pool), api.MAIN_CONTAINER)
    if s.shutdown.soft_shutdown_timeout >= s.shutdown.termination_grace_period_seconds:
        problems.append(Problem("spec.shutdown.softShutdownTimeout", api.MSG_SOFT_SHUTDOWN))
    a = s.autoscaling
    if a is not None:
        if a.min_replicas > a.max_replicas:
            problems.append(Problem("spec.autoscaling.minReplicas", api.MSG_MIN_MAX))
        if a.min_replicas == 0 and a.queue_length is None:
            problems.append(Problem("spec.autoscaling.minReplicas", api.MSG_MIN_ZERO))
        if a.cpu is None and a.memory is None and a.queue_length is None:
            problems.append(Problem("spec.autoscaling", api.MSG_NO_SIGNAL))
        if (
            a.queue_length is not None
            and a.queue_length.engine == "builtin"
            and (a.cpu is not None or a.memory is not None)
        ):
            problems.append(Problem("spec.autoscaling", api.MSG_BUILTIN_RESOURCES))
    if (w := image_tag_warning("spec.image", s.image)) is not None:
        problems.append(w)
    return problems


def _requested(container: Mapping[str, Any] | None, resource: str) -> bool:
    """Whether the container will have a request of `resource`: its own, or its limit
    (the apiserver sets a missing request to the limit)."""
    r = (container or {}).get("resources") or {}
    return resource in (r.get("requests") or {}) or resource in (r.get("limits") or {})


def utilization_without_requests(
    pool: CeleryWorkerPool, defaulted: Collection[str] = ()
) -> list[Problem]:
    """A CPU or memory utilization target is a percentage of the pods' requests: the HPA
    (KEDA's too) needs a request of that resource on every container of the worker pods,
    the worker's and each native sidecar's, or it never scales ("missing request"). A
    limit gives the request; `defaulted` are the resources the namespace's LimitRanges
    give every container (their default or defaultRequest). Admission only: the operator
    cannot see LimitRanges, and the HPA's own condition (the pool's ScalingActive) says it
    after the fact."""
    s, a = pool.spec, pool.spec.autoscaling
    if a is None:
        return []
    out: list[Problem] = []
    for resource, target in (("cpu", a.cpu), ("memory", a.memory)):
        if target is None or resource in defaulted:
            continue
        missing = (
            []
            if _requested({"resources": s.resources}, resource)
            else [f"spec.resources.requests.{resource}"]
        )
        missing += [
            f"spec.sidecars[{i}].resources.requests.{resource} ({c.get('name')})"
            for i, c in enumerate(s.sidecars)
            if not _requested(c, resource)
        ]
        if missing:
            out.append(
                Problem(
                    f"spec.autoscaling.{resource}",
                    f"a {resource} utilization target is a percentage of the workers' "
                    f"{resource} requests, and an HPA scales only when every container of the "
                    f"pods has one: set {', '.join(missing)} (or a LimitRange default "
                    "in the namespace)",
                )
            )
    return out


def app_namespace(pool: CeleryWorkerPool) -> str:
    return pool.spec.app_ref.namespace or str(pool.metadata["namespace"])


def namespace_admitted(app: CeleryApp, namespace: str, labels: Mapping[str, str]) -> bool:
    """The app's own namespace always; others when workerPoolPolicy.namespaceSelector matches."""
    if namespace == app.metadata["namespace"]:
        return True
    return selector_matches(app.spec.worker_pool_policy.namespace_selector, labels)


@dataclass(frozen=True)
class PoolContext:
    """What binding a pool to its app needs from other objects (read by the caller)."""

    app: CeleryApp | None
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    broker: BrokerURL | None = None  # None: unknown (the Secret could not be read)
    keda_installed: bool = True
    sibling_queues: Mapping[str, Iterable[str]] = field(default_factory=dict)  # pool -> queues


def binding_reason(pool: CeleryWorkerPool, ctx: PoolContext) -> Blocker | None:
    """Why the pool cannot bind to its app; None when it can."""
    ns = app_namespace(pool)
    if ctx.app is None:
        return Blocker(
            APP_NOT_FOUND,
            f"spec.appRef: CeleryApp {ns}/{pool.spec.app_ref.name} does not exist (yet); the "
            "pool binds by itself once it does",
        )
    pool_ns = str(pool.metadata["namespace"])
    if not namespace_admitted(ctx.app, pool_ns, ctx.namespace_labels):
        return Blocker(
            NAMESPACE_NOT_ALLOWED,
            f"spec.appRef: CeleryApp {ns}/{ctx.app.metadata['name']} does not admit pools from "
            f"namespace {pool_ns}: its spec.workerPoolPolicy.namespaceSelector must match the "
            "namespace's labels",
        )
    return None


def validate_pool_binding(pool: CeleryWorkerPool, ctx: PoolContext) -> list[Problem]:
    """What needs other objects: the app, the namespace, the broker, KEDA, sibling pools."""
    problems: list[Problem] = []
    reason = binding_reason(pool, ctx)
    if reason is not None:
        # A missing app is a warning at admission (split CRs arrive in any order).
        problems.append(
            Problem(
                "spec.appRef",
                reason.message.removeprefix("spec.appRef: "),
                warning=reason.reason == APP_NOT_FOUND,
            )
        )
    if ctx.app is not None:
        problems += validate_pool_pods(pool, ctx.app)
    ql = pool.spec.autoscaling.queue_length if pool.spec.autoscaling else None
    if ql is not None:
        b = ctx.broker
        if ql.engine == "builtin" and b is not None and b.family not in BUILTIN_FAMILIES:
            problems.append(
                Problem(
                    "spec.autoscaling.queueLength.engine",
                    f"builtin reads Redis and RabbitMQ queues, not a {b.scheme}:// broker; "
                    "use engine keda (which reads Amazon SQS too) or scale on cpu/memory",
                )
            )
        if ql.engine == "keda":
            if not ctx.keda_installed:
                problems.append(
                    Problem(
                        "spec.autoscaling.queueLength.engine",
                        "keda: the KEDA CRDs (keda.sh/v1alpha1 ScaledObject) are not installed "
                        "in this cluster; install KEDA or use engine builtin",
                    )
                )
            if b is not None and b.family not in KEDA_FAMILIES:
                problems.append(
                    Problem(
                        "spec.autoscaling.queueLength.engine",
                        f"KEDA cannot read queue lengths from a {b.scheme}:// broker; allowed: "
                        "redis, amqp (RabbitMQ), sqs",
                    )
                )
            if b is not None and b.family == "sqs" and ql.sqs is None:
                problems.append(
                    Problem(
                        "spec.autoscaling.queueLength.sqs",
                        "required for an sqs:// broker: region and queueUrlPrefix (an SQS queue "
                        "URL cannot be derived from the broker URL)",
                    )
                )
    mine = set(pool.spec.queues)
    for other, queues in sorted(ctx.sibling_queues.items()):
        shared = sorted(mine.intersection(queues))
        if shared:
            problems.append(
                Problem(
                    "spec.queues",
                    f"queue(s) {', '.join(shared)} also consumed by pool {other} of the same "
                    "app: both pools will take tasks from them",
                    warning=True,
                )
            )
    return problems
