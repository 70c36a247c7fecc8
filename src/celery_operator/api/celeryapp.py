"""CeleryApp: a Celery application, owned by its platform team."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, WithJsonSchema

from celery_operator.api.base import (
    API_VERSION,
    TMP_VOLUME_NAME,
    Affinity,
    Conditions,
    Container,
    EnvFromSource,
    EnvVar,
    LabelSelector,
    LocalObjectReference,
    Model,
    PodSecurityContext,
    ResourceRequirements,
    SecretKeySelector,
    Toleration,
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

MSG_URL_ONE_OF = "exactly one of value or secretKeyRef must be set"
MSG_DEFAULT_MOUNT = (
    "podDefaults.volumeMounts may only name 'tmp' or a volume of podDefaults.volumes (every "
    "pod of the app gets these mounts, so their volumes must be in every pod too)"
)
MSG_BEAT_MOUNT = (
    "beat.volumeMounts may only name 'tmp', a volume of podDefaults.volumes or one of beat.volumes"
)
MSG_BEAT_VOLUME = (
    "beat.volumes must not repeat a name of podDefaults.volumes (the beat pod gets both "
    "lists): rename it, or drop it and mount the app's volume"
)
BEAT_CONTAINER = "beat"
KIND = "CeleryApp"
PLURAL = "celeryapps"

# celery --app accepts "module", "module:attr" or "package.module:attr.attr".
APP_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*)?$"


class UrlSource(Model):
    """Where a connection URL comes from: a Secret key, or a literal without a password."""

    model_config = Model.model_config | {
        "json_schema_extra": rules(
            (
                "has(self.value) != has(self.secretKeyRef)",
                MSG_URL_ONE_OF,
            ),
        )
    }

    value: str | None = Field(
        default=None,
        description=(
            "A literal URL such as redis://redis.shop:6379/0. Allowed only without a "
            "password; put URLs with credentials in a Secret and use secretKeyRef."
        ),
        min_length=1,
        max_length=2048,
    )
    secret_key_ref: SecretKeySelector | None = Field(
        default=None, description="The key of a Secret in the app's namespace holding the URL."
    )


class ConnectionSpec(Model):
    """A broker or result backend connection."""

    url: UrlSource = Field(description="The connection URL (exactly one of value/secretKeyRef).")
    transport_options: Annotated[
        dict[str, Any],
        WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
    ] = Field(
        default_factory=dict,
        description=(
            "Broker only. The kombu transport options of the app's own Celery configuration "
            "(broker_transport_options) that change where messages are kept: global_keyprefix, "
            "priority_steps, sep, fanout_prefix, fanout_patterns (Redis), queue_name_prefix "
            "(SQS). The operator reads queue lengths and worker heartbeats with them; set "
            "them as the app does. The app's pods are not changed by them."
        ),
    )


class PodDefaults(Model):
    """Settings applied to every pod of the app (workers, beat, Flower) unless a pool overrides them."""

    service_account_name: str | None = Field(
        default=None, description="ServiceAccount the pods run as.", max_length=253
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the pods must match."
    )
    tolerations: list[Toleration] = Field(default_factory=list, description="Pod tolerations.")
    affinity: Affinity | None = Field(default=None, description="Pod affinity rules.")
    priority_class_name: str = Field(default="", description="PriorityClass of the pods.")
    annotations: dict[str, str] = Field(
        default_factory=dict, description="Annotations added to every pod."
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Labels added to every pod (the operator's own labels always win).",
    )
    security_context: PodSecurityContext | None = Field(
        default=None,
        description=(
            "Pod-level security context. Unset: runAsNonRoot with the RuntimeDefault seccomp "
            "profile, which meets Pod Security 'restricted'."
        ),
    )
    volumes: list[Volume] = volumes_field(
        "Volumes (core/v1 Volume, verbatim) in every pod of the app: workers (of every pool, "
        "in whatever namespace), beat and Flower, after the operator's own 'tmp'. Components "
        "add their own after these; names must be unique among all. References by name "
        "(ConfigMaps, Secrets, claims) are resolved in each pod's namespace: a pool in another "
        "namespace needs its own copies."
    )
    volume_mounts: list[VolumeMount] = volume_mounts_field(
        "Mounts (core/v1 VolumeMount, verbatim) of the Celery container of every pod of the "
        "app (worker, beat, flower); each names 'tmp' or one of podDefaults.volumes. Not given "
        "to init containers or sidecars, which declare their own."
    )


_BEAT = pod_additions_descriptions(BEAT_CONTAINER, "beat")


class BeatSpec(Model):
    """celery beat: the periodic task scheduler. Always exactly one replica."""

    enabled: bool = Field(default=False, description="Run celery beat for this app.")
    scheduler: str = Field(
        default="",
        description="Scheduler class, e.g. redbeat.RedBeatScheduler; empty: Celery's default.",
        max_length=256,
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="Compute resources of the beat container."
    )
    extra_args: list[str] = Field(
        default_factory=list, description="Extra arguments appended to `celery beat`."
    )
    volumes: list[Volume] = volumes_field(_BEAT["volumes"])
    volume_mounts: list[VolumeMount] = volume_mounts_field(_BEAT["volumeMounts"])
    init_containers: list[Container] = containers_field(BEAT_CONTAINER, _BEAT["initContainers"])
    sidecars: list[Container] = containers_field(BEAT_CONTAINER, _BEAT["sidecars"], sidecars=True)


class WorkerPoolPolicy(Model):
    """Which namespaces may attach CeleryWorkerPools to this app."""

    namespace_selector: LabelSelector | None = Field(
        default=None,
        description=(
            "Namespaces whose pools may attach. null: only pools in the app's own namespace; "
            "{}: any namespace; otherwise a label selector over namespaces. The app's own "
            "namespace is always admitted."
        ),
    )


def _mounts_known(mounts: str, *volumes: str) -> str:
    """CEL: every mount of `mounts` names 'tmp' or a volume of one of `volumes`."""
    known = " || ".join(f"(has({v}) && {v}.exists(v, v.name == m.name))" for v in volumes)
    return f"!has({mounts}) || {mounts}.all(m, m.name == '{TMP_VOLUME_NAME}' || {known})"


class CeleryAppSpec(Model):
    model_config = Model.model_config | {
        "json_schema_extra": rules(
            (
                _mounts_known("self.podDefaults.volumeMounts", "self.podDefaults.volumes"),
                MSG_DEFAULT_MOUNT,
            ),
            (
                _mounts_known(
                    "self.beat.volumeMounts", "self.podDefaults.volumes", "self.beat.volumes"
                ),
                MSG_BEAT_MOUNT,
            ),
            (
                "!has(self.beat.volumes) || !has(self.podDefaults.volumes) || "
                "self.beat.volumes.all(v, !self.podDefaults.volumes.exists(d, d.name == v.name))",
                MSG_BEAT_VOLUME,
            ),
            distinct_containers("self.beat"),
        )
    }

    image: str = Field(
        description="Container image holding the app's code with celery installed.",
        min_length=1,
        max_length=1024,
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="Image pull policy of every container."
    )
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, description="Secrets used to pull the image."
    )
    app: str = Field(
        description="The value of `celery --app`, e.g. shop.worker:app.",
        min_length=1,
        max_length=256,
        pattern=APP_PATTERN,
    )
    broker: ConnectionSpec = Field(description="The message broker.")
    result_backend: ConnectionSpec | None = Field(
        default=None, description="The result backend; unset: no result backend."
    )
    env: list[EnvVar] = Field(
        default_factory=list, description="Environment variables given to every component."
    )
    env_from: list[EnvFromSource] = Field(
        default_factory=list, description="Environment sources given to every component."
    )
    pod_defaults: PodDefaults = sub(PodDefaults, "Defaults for every pod of the app.")
    beat: BeatSpec = sub(BeatSpec, "celery beat.")
    worker_pool_policy: WorkerPoolPolicy = sub(
        WorkerPoolPolicy, "Which namespaces may attach worker pools to this app."
    )
    paused: bool = Field(
        default=False,
        description="Stop reconciling the app's children (they keep running as they are).",
    )


class WorkerCounts(Model):
    replicas: int = Field(default=0, description="Desired worker replicas over accepted pools.")
    ready_replicas: int = Field(default=0, description="Ready worker replicas over accepted pools.")
    summary: str = Field(default="0/0", description="ready/desired, for display.")


class PoolCounts(Model):
    total: int = Field(default=0, description="Accepted pools.")
    ready: int = Field(default=0, description="Accepted pools that are Ready.")
    summary: str = Field(default="0/0", description="ready/total, for display.")


class WorkerPoolSummary(Model):
    name: str = Field(description="Name of the pool.")
    namespace: str = Field(description="Namespace of the pool.")
    queues: list[str] = Field(default_factory=list, description="Queues the pool consumes.")
    replicas: int = Field(default=0, description="Desired replicas.")
    ready_replicas: int = Field(default=0, description="Ready replicas.")
    ready: bool = Field(default=False, description="Whether the pool is Ready.")


class FlowerSummary(Model):
    name: str = Field(description="Name of the Flower object.")
    ready: bool = Field(default=False, description="Whether Flower is Ready.")
    url: str = Field(default="", description="In-cluster URL of the Flower UI.")


class BeatStatus(Model):
    ready: bool = Field(default=False, description="Whether celery beat is running.")


MAX_POOLS_IN_STATUS = 100


class CeleryAppStatus(Model):
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation last reconciled."
    )
    conditions: Conditions
    workers: WorkerCounts | None = Field(default=None, description="Worker replica counts.")
    pools: PoolCounts | None = Field(default=None, description="Pool counts.")
    worker_pools: list[WorkerPoolSummary] = Field(
        default_factory=list,
        description=f"One entry per accepted pool (at most {MAX_POOLS_IN_STATUS}).",
        max_length=MAX_POOLS_IN_STATUS,
    )
    flower: FlowerSummary | None = Field(default=None, description="The app's Flower, if any.")
    beat: BeatStatus | None = Field(default=None, description="celery beat, when enabled.")


class CeleryApp(Model):
    """A Celery application: image, broker, result backend, beat and defaults for its pods."""

    api_version: str = API_VERSION
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: CeleryAppSpec
    status: CeleryAppStatus | None = None
