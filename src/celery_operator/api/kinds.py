"""The one table of kinds (pure data).

The operator's three kinds, the child kinds each one owns, and what the operator only
reads, declared once. The runtime watches, caches and primes from it, the client knows
their paths from it, `manifests/` derives RBAC, the webhook configurations, the CRDs and
the reference from it, and the webhook serves exactly these kinds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from celery_operator.api.base import GROUP, VERSION
from celery_operator.api.celeryapp import CeleryAppSpec, CeleryAppStatus
from celery_operator.api.celeryworkerpool import CeleryWorkerPoolSpec, CeleryWorkerPoolStatus
from celery_operator.api.flower import FlowerSpec, FlowerStatus
from celery_operator.api.labels import LABEL_APP, LABEL_FLOWER, LABEL_POOL

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects


@dataclass(frozen=True)
class Resource:
    """A Kubernetes resource: where it is served and what it is called."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        """ "apps/v1/Deployment": how the cache and the client name a resource."""
        return f"{self.api_version}/{self.kind}"

    def path(self, namespace: str | None = None, name: str | None = None, sub: str = "") -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if sub:
            base += f"/{sub}"
        return base


@dataclass(frozen=True)
class ChildKind:
    """A kind the operator creates, repairs and deletes for its owners."""

    resource: Resource
    # Watched (by the managed-by label) to repair it and follow its status. Secrets are
    # not: the operator has no right to list or watch Secrets cluster-wide, by design.
    watched: bool = True
    # May not be served at all (KEDA not installed): a 404 on listing it is no error.
    optional: bool = False


DEPLOYMENT = ChildKind(Resource("apps", "v1", "Deployment", "deployments"))
SERVICE = ChildKind(Resource("", "v1", "Service", "services"))
PDB = ChildKind(Resource("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets"))
HPA = ChildKind(
    Resource("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
)
INGRESS = ChildKind(Resource("networking.k8s.io", "v1", "Ingress", "ingresses"))
SCALED_OBJECT = ChildKind(
    Resource("keda.sh", "v1alpha1", "ScaledObject", "scaledobjects"), optional=True
)
TRIGGER_AUTHENTICATION = ChildKind(
    Resource("keda.sh", "v1alpha1", "TriggerAuthentication", "triggerauthentications"),
    optional=True,
)
SECRET = ChildKind(Resource("", "v1", "Secret", "secrets"), watched=False)

# Read, never written: namespace labels decide which pools an app admits; pods say why
# they cannot run.
NAMESPACE = Resource("", "v1", "Namespace", "namespaces", namespaced=False)
POD = Resource("", "v1", "Pod", "pods")
# Read by the webhook only: the requests a namespace gives containers that ask for none.
LIMIT_RANGE = Resource("", "v1", "LimitRange", "limitranges")


def pool_app_key(body: Mapping[str, Any]) -> Key:
    ref = (body.get("spec") or {}).get("appRef") or {}
    return (ref.get("namespace") or body["metadata"]["namespace"], ref.get("name", ""))


def flower_app_key(body: Mapping[str, Any]) -> Key:
    ref = (body.get("spec") or {}).get("appRef") or {}
    return (body["metadata"]["namespace"], ref.get("name", ""))


@dataclass(frozen=True)
class Kind:
    """One of the operator's kinds: its CRD, its controller's task, what it owns."""

    resource: Resource
    singular: str
    short_names: tuple[str, ...]
    spec: type[BaseModel]
    status: type[BaseModel]
    description: str
    columns: tuple[dict[str, Any], ...]
    # The work queue's name for its reconcile ("<task>-status": status only).
    task: str
    owns: tuple[ChildKind, ...]
    # Its pods: the component label's value, and the label naming the owner.
    pod_component: str
    pod_owner_label: str
    # The app it names, from its body (None for the app itself): the cache's "app" index.
    app_of: Callable[[Mapping[str, Any]], Key] | None = None
    scale: dict[str, str] | None = None

    @property
    def name(self) -> str:
        return self.resource.kind

    @property
    def plural(self) -> str:
        return self.resource.plural


def _col(name: str, path: str, type_: str = "string", **kw: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, "jsonPath": path, **kw}


def _crd(kind: str, plural: str) -> Resource:
    return Resource(GROUP, VERSION, kind, plural)


_READY = '.status.conditions[?(@.type=="Ready")].status'
_AGE = _col("Age", ".metadata.creationTimestamp", "date")

APP = Kind(
    resource=_crd("CeleryApp", "celeryapps"),
    singular="celeryapp",
    short_names=("capp",),
    spec=CeleryAppSpec,
    status=CeleryAppStatus,
    description=(
        "A Celery application: its image, `celery --app` path, broker and result backend, "
        "celery beat, defaults for its pods, and which namespaces may attach worker pools."
    ),
    columns=(
        _col("Ready", _READY),
        _col("Pools", ".status.pools.summary"),
        _col("Workers", ".status.workers.summary"),
        _col("Flower", ".status.flower.name"),
        _AGE,
        _col("Reason", '.status.conditions[?(@.type=="Ready")].reason', priority=1),
    ),
    task="app",
    owns=(DEPLOYMENT,),
    pod_component="beat",
    pod_owner_label=LABEL_APP,
)
POOL = Kind(
    resource=_crd("CeleryWorkerPool", "celeryworkerpools"),
    singular="celeryworkerpool",
    short_names=("cwp",),
    spec=CeleryWorkerPoolSpec,
    status=CeleryWorkerPoolStatus,
    description="Celery workers consuming some queues of one CeleryApp, owned by a team.",
    columns=(
        _col("App", ".spec.appRef.name"),
        _col("Queues", ".spec.queues"),
        _col("Ready", ".status.readySummary"),
        _col("Busy", ".status.workers.summary"),
        _col("Autoscaling", ".status.autoscaler.summary"),
        _AGE,
        # -o wide: who sets the replicas (hpa, keda, builtin; empty: spec.replicas) and how
        # many the worker Deployment is asked for.
        _col("Engine", ".status.autoscaler.engine", priority=1),
        _col("Desired", ".status.replicas", "integer", priority=1),
        _col("Accepted", '.status.conditions[?(@.type=="Accepted")].status', priority=1),
        _col("Reason", '.status.conditions[?(@.type=="Ready")].reason', priority=1),
    ),
    task="pool",
    owns=(DEPLOYMENT, PDB, HPA, SCALED_OBJECT, TRIGGER_AUTHENTICATION, SECRET),
    pod_component="worker",
    pod_owner_label=LABEL_POOL,
    app_of=pool_app_key,
    scale={
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    },
)
FLOWER = Kind(
    resource=_crd("Flower", "flowers"),
    singular="flower",
    short_names=("flower",),
    spec=FlowerSpec,
    status=FlowerStatus,
    description="Flower, the monitoring UI of one CeleryApp (always one replica).",
    columns=(
        _col("App", ".spec.appRef.name"),
        _col("Ready", _READY),
        _col("URL", ".status.url"),
        _AGE,
    ),
    task="flower",
    owns=(DEPLOYMENT, SERVICE, INGRESS),
    pod_component="flower",
    pod_owner_label=LABEL_FLOWER,
    app_of=flower_app_key,
)

KINDS: tuple[Kind, ...] = (APP, POOL, FLOWER)
BY_NAME: dict[str, Kind] = {k.name: k for k in KINDS}
BY_PLURAL: dict[str, Kind] = {k.plural: k for k in KINDS}
BY_POD_COMPONENT: dict[str, Kind] = {k.pod_component: k for k in KINDS}


def child_kinds() -> tuple[ChildKind, ...]:
    """Every kind some kind owns, each once, in the order first declared."""
    return tuple(dict.fromkeys(c for k in KINDS for c in k.owns))


def watched_children() -> tuple[ChildKind, ...]:
    return tuple(c for c in child_kinds() if c.watched)


def resources() -> tuple[Resource, ...]:
    """Every resource of the table: the kinds, their children, what is only read."""
    return (*(k.resource for k in KINDS), *(c.resource for c in child_kinds()), NAMESPACE, POD)
