"""Shared pieces of the three CRD models.

Field names are camelCase on the wire (the API contract) and snake_case in Python.
Core Kubernetes types (EnvVar, Affinity, ...) are kept as plain dicts in Python and are
passed through verbatim into rendered children; in the generated CRD each one carries the
real upstream OpenAPI schema (see `k8s_schemas.json`), so the apiserver validates them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

GROUP = "celeryproject.org"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

K8S_REF = "x-celery-operator-k8s-ref"
# Every core type the models embed; testenv/k8s_schemas.py extracts their upstream schemas.
K8S_DEFINITIONS: set[str] = set()


# The upstream schemas leave `name` unbounded (the apiserver checks names in code); CEL
# rules that compare two names are costed by their longest possible value, so the types
# such rules compare get the bound their names really have: a DNS label, 63.
K8S_NAME_MAX_LENGTH = "x-celery-operator-k8s-name-max-length"


def k8s(definition: str, name_max_length: int | None = None) -> Any:
    """A core Kubernetes type, by its OpenAPI definition name (e.g. io.k8s.api.core.v1.EnvVar).

    In Python it is a dict; in the CRD schema, the upstream schema of that definition (with
    `name_max_length` as its `name`'s maxLength, when given).
    """
    K8S_DEFINITIONS.add(definition)
    schema: dict[str, Any] = {K8S_REF: definition}
    if name_max_length is not None:
        schema[K8S_NAME_MAX_LENGTH] = name_max_length
    return Annotated[dict[str, Any], WithJsonSchema(schema)]


def sub(factory: type[BaseModel], description: str) -> Any:
    """A nested object field that is always present, defaulted by the apiserver too.

    Its schema default is `{}` (the apiserver then fills the nested defaults), except for
    models with CEL rules: the apiserver checks rules against the default as written, so
    those default to their fully defaulted form.
    """
    extra = factory.model_config.get("json_schema_extra") or {}
    default: dict[str, Any] = {}
    if isinstance(extra, dict) and "x-kubernetes-validations" in extra:
        default = factory().model_dump(by_alias=True, exclude_none=True, mode="json")
    return Field(
        default_factory=factory, description=description, json_schema_extra={"default": default}
    )


EnvVar = k8s("io.k8s.api.core.v1.EnvVar")
EnvFromSource = k8s("io.k8s.api.core.v1.EnvFromSource")
ResourceRequirements = k8s("io.k8s.api.core.v1.ResourceRequirements")
Toleration = k8s("io.k8s.api.core.v1.Toleration")
Affinity = k8s("io.k8s.api.core.v1.Affinity")
TopologySpreadConstraint = k8s("io.k8s.api.core.v1.TopologySpreadConstraint")
LocalObjectReference = k8s("io.k8s.api.core.v1.LocalObjectReference")
SecretKeySelector = k8s("io.k8s.api.core.v1.SecretKeySelector")
PodSecurityContext = k8s("io.k8s.api.core.v1.PodSecurityContext")
LabelSelector = k8s("io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector")
HPABehavior = k8s("io.k8s.api.autoscaling.v2.HorizontalPodAutoscalerBehavior")
Volume = k8s("io.k8s.api.core.v1.Volume", name_max_length=63)
VolumeMount = k8s("io.k8s.api.core.v1.VolumeMount", name_max_length=63)
Container = k8s("io.k8s.api.core.v1.Container", name_max_length=63)
Lifecycle = k8s("io.k8s.api.core.v1.Lifecycle")

IntOrString = Annotated[
    int | str,
    WithJsonSchema(
        {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}
    ),
]

# DNS-1123 subdomain: the names of most Kubernetes objects.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# DNS-1123 label: namespaces, Services, and the objects we derive names from.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class Model(BaseModel):
    """Base for every spec/status model: camelCase aliases, unknown fields ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        frozen=False,
        use_attribute_docstrings=False,
    )

    def wire(self) -> dict[str, Any]:
        """The object as the apiserver sees it: camelCase, no unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def rules(*pairs: tuple[str, str]) -> dict[str, Any]:
    """CEL `x-kubernetes-validations` for a model: (rule, message) pairs."""
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in pairs]}


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(Model):
    """A metav1.Condition."""

    type: str = Field(description="Type of the condition, in CamelCase (Ready, Accepted, ...).")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(description="A CamelCase reason for the last transition.")
    message: str = Field(default="", description="Human-readable details.")
    last_transition_time: str = Field(
        description="When the status last changed (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation the condition was computed from."
    )


Conditions = Annotated[
    list[Condition],
    Field(
        default_factory=list,
        description="The latest observations of the object's state (metav1.Condition).",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    ),
]


class NamespacedRef(Model):
    """A reference to a named object, optionally in another namespace."""

    name: str = Field(
        description="Name of the referenced object.",
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )
    namespace: str | None = Field(
        default=None,
        description="Namespace of the referenced object; defaults to the referrer's namespace.",
        max_length=63,
        pattern=DNS_LABEL,
    )


# ---- What users add to the pods: volumes, mounts, init containers, sidecars -------------------
# The operator's own pieces of every pod, which the users' additions must not collide with.
TMP_VOLUME_NAME = "tmp"  # an emptyDir mounted at /tmp in the operator's container
TMP_MOUNT_PATH = "/tmp"
MAX_VOLUMES = 64
MAX_CONTAINERS = 16

MSG_TMP_VOLUME = (
    "volume name 'tmp' is the operator's own (the writable /tmp of every pod); choose another name"
)
MSG_TMP_MOUNT = (
    "mountPath /tmp is the operator's own (an emptyDir, the only writable path of its read-only "
    "container); mount below it or elsewhere"
)
MSG_SIDECAR_RESTART = (
    "sidecars run as Kubernetes native sidecars: restartPolicy must be unset or Always (put a "
    "container that runs to completion under initContainers)"
)


MSG_CONTAINER_NAMES = (
    "initContainers and sidecars must not share a name: they are all containers of one pod"
)


def distinct_containers(at: str) -> tuple[str, str]:
    """The CEL rule (and message) that no sidecar of `at` is named like an init container."""
    return (
        f"!has({at}.sidecars) || !has({at}.initContainers) || "
        f"{at}.sidecars.all(s, !{at}.initContainers.exists(i, i.name == s.name))",
        MSG_CONTAINER_NAMES,
    )


MSG_INIT_HOOKS = (
    "lifecycle and probes are allowed only on an init container with restartPolicy: Always "
    "(a native sidecar); a helper that keeps running belongs under sidecars"
)
INIT_HOOKS = ("lifecycle", "livenessProbe", "readinessProbe", "startupProbe")


def container_name_message(main: str) -> str:
    return f"container name '{main}' is the operator's own container; choose another name"


def _map_list(key: str) -> dict[str, Any]:
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": [key]}


def volumes_field(description: str) -> Any:
    """`volumes`: core/v1 Volumes, unique by name, never the operator's own 'tmp'."""
    return Field(
        default_factory=list,
        max_length=MAX_VOLUMES,
        description=description,
        json_schema_extra={
            **_map_list("name"),
            **rules((f"self.all(v, v.name != '{TMP_VOLUME_NAME}')", MSG_TMP_VOLUME)),
        },
    )


def volume_mounts_field(description: str) -> Any:
    """`volumeMounts`: core/v1 VolumeMounts of the operator's container, unique by mountPath."""
    return Field(
        default_factory=list,
        max_length=MAX_VOLUMES,
        description=description,
        json_schema_extra={
            **_map_list("mountPath"),
            **rules(
                (
                    f"self.all(m, m.mountPath != '{TMP_MOUNT_PATH}' "
                    f"&& m.mountPath != '{TMP_MOUNT_PATH}/')",
                    MSG_TMP_MOUNT,
                )
            ),
        },
    )


def containers_field(main: str, description: str, *, sidecars: bool = False) -> Any:
    """`initContainers` or `sidecars`: core/v1 Containers, verbatim, unique by name, never
    named like the operator's own container `main`."""
    checks = [(f"self.all(c, c.name != '{main}')", container_name_message(main))]
    if sidecars:
        checks.append(
            (
                "self.all(c, !has(c.restartPolicy) || c.restartPolicy == 'Always')",
                MSG_SIDECAR_RESTART,
            )
        )
    else:
        none = " && ".join(f"!has(c.{f})" for f in INIT_HOOKS)
        always = "(has(c.restartPolicy) && c.restartPolicy == 'Always')"
        checks.append((f"self.all(c, {always} || ({none}))", MSG_INIT_HOOKS))
    return Field(
        default_factory=list,
        max_length=MAX_CONTAINERS,
        description=description,
        json_schema_extra={**_map_list("name"), **rules(*checks)},
    )


def pod_additions_descriptions(main: str, where: str) -> dict[str, str]:
    """The descriptions of the four fields, for the component whose container is `main`."""
    return {
        "volumes": (
            f"Volumes (core/v1 Volume, verbatim) added to the {where} pods, after the app's "
            "spec.podDefaults.volumes and the operator's own 'tmp'. Names must be unique among "
            "all of them. References by name (ConfigMaps, Secrets, claims) are resolved in the "
            "pod's namespace."
        ),
        "volumeMounts": (
            f"Mounts (core/v1 VolumeMount, verbatim) of the '{main}' container, added to the "
            "app's spec.podDefaults.volumeMounts. Each names a volume of the pod: 'tmp', one of "
            "spec.podDefaults.volumes or one of these volumes. The container's root file system "
            "is read-only: /tmp (the 'tmp' volume) and these mounts are its writable paths."
        ),
        "initContainers": (
            "Init containers (core/v1 Container), run in order before everything else in the "
            "pod, exactly as written: they get no env, mounts or securityContext from the "
            "operator. Where Pod Security 'restricted' is enforced each must set "
            "securityContext allowPrivilegeEscalation: false and capabilities.drop: [ALL] (the "
            "pod-level securityContext covers runAsNonRoot and seccomp). An entry with "
            "restartPolicy: Always is a native sidecar started at that point."
        ),
        "sidecars": (
            f"Containers (core/v1 Container) that run beside '{main}' for the pod's whole "
            "life, as Kubernetes native sidecars: rendered as init containers with "
            "restartPolicy: Always after spec.initContainers, they start before "
            f"'{main}' and stop only after it has stopped (a database proxy stays up while "
            "tasks finish their shutdown). Otherwise exactly as written, with no env, mounts "
            "or securityContext from the operator; under Pod Security 'restricted' each must "
            "set securityContext allowPrivilegeEscalation: false and capabilities.drop: [ALL]."
        ),
    }
