"""CeleryWorkerPool: workers for some queues of one app, owned by a team."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from celery_operator.api.base import (
    API_VERSION,
    DNS_LABEL,
    Affinity,
    Conditions,
    Container,
    EnvFromSource,
    EnvVar,
    HPABehavior,
    IntOrString,
    Model,
    NamespacedRef,
    ResourceRequirements,
    Toleration,
    TopologySpreadConstraint,
    Volume,
    VolumeMount,
    containers_field,
    distinct_containers,
    pod_additions_descriptions,
    rules,
    sub,
    volume_mounts_field,
    volumes_field,
)

MSG_APPREF_NS_REMOVED = "appRef.namespace is immutable: it cannot be removed once set"
MSG_APPREF_NS_IMMUTABLE = (
    "appRef.namespace is immutable: create a new pool to attach to an app in another namespace"
)
MSG_SOFT_SHUTDOWN = (
    "shutdown.softShutdownTimeout must be less than shutdown.terminationGracePeriodSeconds"
)
MSG_MIN_MAX = "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas"
MSG_MIN_ZERO = "autoscaling.minReplicas: 0 is allowed only with autoscaling.queueLength (CPU and memory cannot wake a pool from zero)"
MSG_NO_SIGNAL = "autoscaling needs at least one of cpu, memory or queueLength"
MSG_BUILTIN_RESOURCES = "autoscaling.cpu and autoscaling.memory cannot be combined with queueLength.engine builtin; use engine keda to scale on both"
MSG_SOLO = "concurrency must be 1 when pool is solo"
MSG_SOLO_READINESS = (
    "probes.readiness cannot be enabled with pool solo: a solo worker answers no ping while it "
    "runs a task, so it would turn not Ready whenever it is busy (and Kubernetes removes "
    "not-Ready pods first when scaling down)"
)
MAIN_CONTAINER = "worker"
KIND = "CeleryWorkerPool"
PLURAL = "celeryworkerpools"

# Queue names go into `celery worker -Q a,b`: no commas, no white space.
QUEUE_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:@\-]*$"
PoolType = Literal["prefork", "threads", "gevent", "eventlet", "solo"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class AppRef(NamespacedRef):
    """The CeleryApp this pool belongs to."""

    model_config = NamespacedRef.model_config | {
        "json_schema_extra": rules(
            (
                "!has(oldSelf.namespace) || has(self.namespace)",
                MSG_APPREF_NS_REMOVED,
            ),
        )
    }

    namespace: str | None = Field(
        default=None,
        description=(
            "Namespace of the app; defaults to the pool's own namespace. Immutable: create a "
            "new pool to attach to an app in another namespace."
        ),
        max_length=63,
        pattern=DNS_LABEL,
        json_schema_extra=rules(
            (
                "self == oldSelf",
                MSG_APPREF_NS_IMMUTABLE,
            )
        ),
    )


class ShutdownSpec(Model):
    """How workers stop: Celery's soft shutdown, then the pod's grace period."""

    model_config = Model.model_config | {
        "json_schema_extra": rules(
            (
                "self.softShutdownTimeout < self.terminationGracePeriodSeconds",
                MSG_SOFT_SHUTDOWN,
            ),
        )
    }

    termination_grace_period_seconds: int = Field(
        default=300,
        ge=1,
        le=86400,
        description="Seconds a worker pod gets to finish its tasks after SIGTERM.",
    )
    soft_shutdown_timeout: int = Field(
        default=60,
        ge=0,
        le=86400,
        description=(
            "Celery's worker_soft_shutdown_timeout (Celery >= 5.5): seconds running tasks may "
            "still finish after SIGTERM before the worker stops them; a stopped task returns "
            "to the queue only with task_acks_late. 0: classic warm shutdown, waiting for "
            "tasks up to terminationGracePeriodSeconds. Must be less than "
            "terminationGracePeriodSeconds."
        ),
    )


class LivenessProbe(Model):
    """The worker liveness probe: pings this worker only, and passes while the broker
    cannot be reached (a restart would not bring it back)."""

    enabled: bool = Field(default=True, description="Run the liveness probe.")
    period_seconds: int = Field(default=60, ge=1, le=3600, description="Seconds between probes.")
    timeout_seconds: int = Field(default=20, ge=1, le=3600, description="Seconds a probe may take.")
    failure_threshold: int = Field(
        default=3, ge=1, le=100, description="Failed probes in a row before a restart."
    )
    termination_grace_period_seconds: int = Field(
        default=30,
        ge=1,
        le=86400,
        description=(
            "Seconds a worker that failed its liveness probe gets between SIGTERM and SIGKILL "
            "(the probe's own grace period): a hung worker is restarted after this, not after "
            "shutdown.terminationGracePeriodSeconds, which is meant for finishing tasks."
        ),
    )


class ReadinessProbe(Model):
    """Opt-in. Without it a worker pod is Ready as soon as its container runs: no traffic is
    routed to workers, so readiness only paces rollouts, counts in the pool's READY and
    guards the PodDisruptionBudget. With it, a worker is Ready only once it answers a ping
    through the broker (Celery answers from its event loop, which starts after its task
    consumers): a rollout (maxUnavailable 0) waits for new workers that really consume
    before it stops old ones, and a worker that lost the broker is not counted Ready. A
    worker drained before a scale-down still answers and stays Ready. Each probe runs a
    Python process that imports the app and sends one broadcast message, hence off by
    default. Brokers without broadcast (SQS) cannot carry the ping: there it only checks
    that the broker can be reached."""

    enabled: bool = Field(default=False, description="Run the readiness probe.")
    initial_delay_seconds: int = Field(
        default=5, ge=0, le=3600, description="Seconds after the start before the first probe."
    )
    period_seconds: int = Field(default=30, ge=1, le=3600, description="Seconds between probes.")
    timeout_seconds: int = Field(
        default=10, ge=1, le=3600, description="Seconds the worker has to answer."
    )
    failure_threshold: int = Field(
        default=3, ge=1, le=100, description="Failed probes in a row before the pod is not Ready."
    )


class ProbesSpec(Model):
    liveness: LivenessProbe = sub(LivenessProbe, "The worker liveness probe.")
    readiness: ReadinessProbe = sub(
        ReadinessProbe, "An opt-in worker readiness probe (off: Ready when the container runs)."
    )


class UpdateStrategy(Model):
    """Rolling update of the worker Deployment."""

    max_surge: IntOrString = Field(
        default="25%", description="Extra pods allowed during a rollout (number or percent)."
    )
    max_unavailable: IntOrString = Field(
        default=0, description="Pods that may be unavailable during a rollout (number or percent)."
    )


class DisruptionBudget(Model):
    """A PodDisruptionBudget for the pool's workers."""

    max_unavailable: IntOrString = Field(
        default=1, description="Workers that may be evicted at once (number or percent)."
    )


class UtilizationTarget(Model):
    average_utilization: int = Field(
        ge=1, le=1000, description="Target average utilization, in percent of the requests."
    )


Engine = Literal["builtin", "keda"]


class SQSQueueSource(Model):
    """Where KEDA finds the SQS queues of an sqs:// broker (not derivable from its URL)."""

    region: str = Field(
        min_length=1, max_length=64, description="AWS region of the queues, e.g. eu-west-1."
    )
    queue_url_prefix: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^https?://",
        description=(
            "Queue URL up to the queue name, including Celery's queue_name_prefix, e.g. "
            "https://sqs.eu-west-1.amazonaws.com/123456789012/shop-. The queue name is appended."
        ),
    )
    identity_owner: Literal["credentials", "workload"] = Field(
        default="credentials",
        description=(
            "credentials: the access key in the broker URL; workload: the IAM role of the "
            "workers' ServiceAccount (EKS pod identity)."
        ),
    )


class QueueLengthScaling(Model):
    """Scale on the number of waiting tasks in the pool's queues."""

    target_per_replica: int = Field(
        default=10, ge=1, description="Waiting tasks per worker replica."
    )
    activation: int = Field(
        default=0, ge=0, description="Scale up from zero only above this many waiting tasks."
    )
    engine: Engine = Field(
        default="builtin",
        description="builtin: the operator polls the broker itself; keda: a KEDA ScaledObject.",
    )
    polling_interval_seconds: int = Field(
        default=5, ge=1, le=3600, description="Seconds between queue length polls."
    )
    sqs: SQSQueueSource | None = Field(
        default=None, description="For sqs:// brokers with engine keda: where the queues are."
    )
    cooldown_seconds: int = Field(
        default=300,
        ge=0,
        le=86400,
        description=(
            "builtin: the scale-down stabilization window (replicas go down only to the "
            "highest need seen in this window, to zero only after empty queues for this "
            "long); keda: KEDA's cooldownPeriod before scaling to zero."
        ),
    )


class AutoscalingSpec(Model):
    """Autoscaling of the pool: CPU/memory (HorizontalPodAutoscaler) and/or queue length."""

    model_config = Model.model_config | {
        "json_schema_extra": rules(
            (
                "self.minReplicas <= self.maxReplicas",
                MSG_MIN_MAX,
            ),
            (
                "self.minReplicas > 0 || has(self.queueLength)",
                MSG_MIN_ZERO,
            ),
            (
                "has(self.cpu) || has(self.memory) || has(self.queueLength)",
                MSG_NO_SIGNAL,
            ),
            (
                "!has(self.queueLength) || self.queueLength.engine != 'builtin' "
                "|| (!has(self.cpu) && !has(self.memory))",
                MSG_BUILTIN_RESOURCES,
            ),
        )
    }

    min_replicas: int = Field(default=1, ge=0, description="Fewest replicas.")
    max_replicas: int = Field(ge=1, le=1000, description="Most replicas.")
    cpu: UtilizationTarget | None = Field(default=None, description="Scale on CPU utilization.")
    memory: UtilizationTarget | None = Field(
        default=None, description="Scale on memory utilization."
    )
    queue_length: QueueLengthScaling | None = Field(
        default=None, description="Scale on the number of waiting tasks."
    )
    behavior: HPABehavior | None = Field(
        default=None,
        description="autoscaling/v2 HorizontalPodAutoscalerBehavior, passed through.",
    )


class ScaleDownSpec(Model):
    """How workers go when the replicas are lowered."""

    protect_busy_workers: bool = Field(
        default=True,
        description=(
            "Idle workers are removed first, whatever lowers the replicas (the built-in "
            "scaler, an HPA, KEDA, kubectl scale): each worker pod's "
            "controller.kubernetes.io/pod-deletion-cost follows its load, read from the "
            "workers' own heartbeats. A worker whose heartbeats stop counts as busy."
        ),
    )
    drain_timeout_seconds: int = Field(
        default=600,
        ge=0,
        le=86400,
        description=(
            "Built-in engine and manual scale-down, when every worker that would go is busy: "
            "those workers stop consuming first (Celery's cancel_consumer) and the replicas "
            "are lowered once they are idle, or after this many seconds. 0: no drain."
        ),
    )


_POD = pod_additions_descriptions(MAIN_CONTAINER, "worker")


class CeleryWorkerPoolSpec(Model):
    model_config = Model.model_config | {
        "json_schema_extra": rules(
            (
                "self.pool != 'solo' || self.concurrency == 1",
                MSG_SOLO,
            ),
            (
                "self.pool != 'solo' || !self.probes.readiness.enabled",
                MSG_SOLO_READINESS,
            ),
            distinct_containers("self"),
        )
    }

    app_ref: AppRef = Field(description="The CeleryApp these workers belong to.")
    queues: list[str] = Field(
        default_factory=lambda: ["celery"],
        min_length=1,
        max_length=64,
        description="Queues to consume (celery worker -Q).",
        json_schema_extra={
            "items": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": QUEUE_PATTERN},
            "x-kubernetes-list-type": "set",
            "default": ["celery"],
        },
    )
    replicas: int = Field(
        default=1, ge=0, le=1000, description="Worker replicas; ignored while autoscaling is set."
    )
    concurrency: int = Field(
        default=2, ge=1, le=1000, description="Child processes or threads per worker."
    )
    pool: PoolType = Field(default="prefork", description="Celery execution pool.")
    prefetch_multiplier: int = Field(
        default=1, ge=0, le=1000, description="Messages prefetched per child (0: unlimited)."
    )
    max_tasks_per_child: int | None = Field(
        default=None, ge=1, description="Replace a child after this many tasks."
    )
    max_memory_per_child: int | None = Field(
        default=None, ge=1, description="Replace a child after it uses this much memory (KiB)."
    )
    log_level: LogLevel = Field(default="INFO", description="Worker log level.")
    extra_args: list[str] = Field(
        default_factory=list, description="Extra arguments appended to `celery worker`."
    )
    image: str = Field(default="", max_length=1024, description="Image; empty: the app's image.")
    env: list[EnvVar] = Field(default_factory=list, description="Added to the app's env.")
    env_from: list[EnvFromSource] = Field(
        default_factory=list, description="Added to the app's envFrom."
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="Compute resources of the worker container."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Overrides the app's podDefaults.nodeSelector."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Overrides the app's podDefaults.tolerations."
    )
    affinity: Affinity | None = Field(
        default=None, description="Overrides the app's podDefaults.affinity."
    )
    topology_spread_constraints: list[TopologySpreadConstraint] = Field(
        default_factory=list, description="How workers spread over zones and nodes."
    )
    priority_class_name: str = Field(
        default="", description="Overrides the app's podDefaults.priorityClassName."
    )
    annotations: dict[str, str] = Field(
        default_factory=dict, description="Added to the app's pod annotations."
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="Added to the app's pod labels."
    )
    volumes: list[Volume] = volumes_field(_POD["volumes"])
    volume_mounts: list[VolumeMount] = volume_mounts_field(_POD["volumeMounts"])
    init_containers: list[Container] = containers_field(MAIN_CONTAINER, _POD["initContainers"])
    sidecars: list[Container] = containers_field(MAIN_CONTAINER, _POD["sidecars"], sidecars=True)
    shutdown: ShutdownSpec = sub(ShutdownSpec, "Graceful shutdown.")
    probes: ProbesSpec = sub(ProbesSpec, "Worker probes.")
    update_strategy: UpdateStrategy = sub(UpdateStrategy, "Rolling update of the workers.")
    disruption_budget: DisruptionBudget | None = Field(
        default_factory=DisruptionBudget,
        description="PodDisruptionBudget of the workers; null: none.",
        json_schema_extra={"nullable": True, "default": {}},
    )
    autoscaling: AutoscalingSpec | None = Field(
        default=None, description="Autoscaling; absent: a fixed number of replicas."
    )
    scale_down: ScaleDownSpec = sub(ScaleDownSpec, "How workers go when replicas are lowered.")


class WorkersStatus(Model):
    """The pool's workers as their heartbeats tell (busy: running at least one task)."""

    online: int = Field(default=0, description="Workers whose heartbeats arrive.")
    busy: int = Field(default=0, description="Online workers running tasks.")
    active_tasks: int = Field(default=0, description="Tasks the online workers are running.")
    unknown: int = Field(
        default=0,
        description="Worker pods with no recent heartbeat: counted as busy, never as idle.",
    )
    draining: int = Field(
        default=0, description="Workers told to stop consuming before they are removed."
    )
    summary: str = Field(default="", description="busy/online, for display.")


class AutoscalerStatus(Model):
    engine: str = Field(description="hpa, keda or builtin.")
    desired_replicas: int | None = Field(default=None, description="Replicas the scaler wants.")
    queue_length: int | None = Field(default=None, description="Waiting tasks at the last poll.")
    active_tasks: int | None = Field(
        default=None, description="Tasks the workers were running at the last poll."
    )
    last_scale_time: str | None = Field(
        default=None,
        description="When replicas last changed.",
        json_schema_extra={"format": "date-time"},
    )
    summary: str = Field(default="", description="Engine and range, for display.")


class AppStatusRef(Model):
    name: str = Field(description="Name of the app.")
    namespace: str = Field(description="Namespace of the app.")


class CeleryWorkerPoolStatus(Model):
    observed_generation: int | None = Field(default=None, description="Generation last reconciled.")
    conditions: Conditions
    app: AppStatusRef | None = Field(default=None, description="The app the pool is bound to.")
    deployment: str | None = Field(default=None, description="Name of the worker Deployment.")
    replicas: int = Field(default=0, description="Worker replicas (scale subresource).")
    ready_replicas: int = Field(default=0, description="Ready worker replicas.")
    ready_summary: str = Field(default="0/0", description="ready/desired, for display.")
    selector: str | None = Field(
        default=None, description="Label selector of the worker pods (scale subresource)."
    )
    autoscaler: AutoscalerStatus | None = Field(default=None, description="Autoscaler state.")
    workers: WorkersStatus | None = Field(
        default=None,
        description="The workers' load, from their heartbeats (when the operator reads them).",
    )


class CeleryWorkerPool(Model):
    """Celery workers consuming some queues of one CeleryApp."""

    api_version: str = API_VERSION
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: CeleryWorkerPoolSpec
    status: CeleryWorkerPoolStatus | None = None
