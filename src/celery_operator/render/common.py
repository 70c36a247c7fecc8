"""Names, labels and pod pieces shared by every builder (pure)."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast

import orjson

from celery_operator.api.base import API_VERSION
from celery_operator.api.celeryapp import CeleryApp, ConnectionSpec
from celery_operator.api.labels import (
    LABEL_APP,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    MANAGED_BY,
    SECRET_BASELINE_ANNOTATION,
    SECRET_CHECKSUM_ANNOTATION,
    fit,
    label_value,
)

BROKER_ENV = "CELERY_BROKER_URL"
BACKEND_ENV = "CELERY_RESULT_BACKEND"

# Deployment names: the ReplicaSet appends "-" + a 10-char hash and pods another "-" + 5
# chars; pod host names are cut at 63. 47 keeps "<deployment>-<rs-hash>" a DNS label.
MAX_DEPLOYMENT_NAME = 47
MAX_DNS_LABEL = 63


J = TypeVar("J")


def clone(obj: J) -> J:
    """A deep copy of JSON-like data. Every builder returns one, once, of its whole output
    (the pieces `pod_spec` and `container` put together share the models' and this
    module's maps until then), so that no caller's edit reaches a model or a default.
    Through orjson: about six times faster than copy.deepcopy for a Deployment, which
    made most of a reconcile's CPU."""
    return cast(J, orjson.loads(orjson.dumps(obj)))


def dns_label(name: str, limit: int = MAX_DNS_LABEL) -> str:
    """A DNS-1035 label (what a Service name must be): starts with a letter."""
    name = name.replace(".", "-")
    if not name[:1].isalpha():
        name = f"c-{name}"
    return fit(name, limit)


def worker_deployment_name(app_name: str, pool_name: str) -> str:
    return fit(f"{app_name}-{pool_name}".replace(".", "-"), MAX_DEPLOYMENT_NAME)


def beat_deployment_name(app_name: str) -> str:
    return fit(f"{app_name}-beat".replace(".", "-"), MAX_DEPLOYMENT_NAME)


def flower_name(flower: str) -> str:
    """Name of the Flower Deployment, Service and Ingress (a DNS-1035 label)."""
    return dns_label(f"{flower}-flower", MAX_DEPLOYMENT_NAME)


def b64(text: str) -> str:
    """Secret `data` encoding."""
    return base64.b64encode(text.encode()).decode()


def base_labels(app_name: str, component: str) -> dict[str, str]:
    return {
        LABEL_NAME: "celery",
        LABEL_INSTANCE: label_value(app_name),
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_APP: label_value(app_name),
    }


def merge_labels(*sources: Mapping[str, str], own: Mapping[str, str]) -> dict[str, str]:
    """User labels first, then ours: the operator's labels always win (selectors need them)."""
    out: dict[str, str] = {}
    for s in sources:
        out.update(s)
    out.update(own)
    return out


def owner_reference(obj: Mapping[str, Any], kind: str) -> dict[str, Any]:
    meta = obj["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    owner: dict[str, Any] | None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if annotations:
        meta["annotations"] = dict(annotations)
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return meta


# Keys of the connection Secret the operator mirrors into a pool's namespace when the
# pool runs outside its app's namespace (pods can only read Secrets of their own).
MIRROR_BROKER_KEY = "broker-url"
MIRROR_BACKEND_KEY = "result-backend-url"


def connection_secret_name(app_name: str, pool_name: str) -> str:
    return fit(f"{worker_deployment_name(app_name, pool_name)}-connection", MAX_DNS_LABEL)


def pull_secret_mirror_name(app_name: str, pool_name: str, secret_name: str) -> str:
    """The operator's mirror of one of the app's image pull Secrets in a pool's namespace."""
    return fit(f"{worker_deployment_name(app_name, pool_name)}-pull-{secret_name}", MAX_DNS_LABEL)


def connection_env(
    name: str, conn: ConnectionSpec, mirror: str | None = None, mirror_key: str = ""
) -> dict[str, Any]:
    """An EnvVar that carries a connection URL: by Secret reference, never a copied value.

    With `mirror`, a Secret-held URL is read from the operator's mirror of it instead.
    """
    url = conn.url
    if url.secret_key_ref is not None:
        ref = {"name": mirror, "key": mirror_key} if mirror else dict(url.secret_key_ref)
        return {"name": name, "valueFrom": {"secretKeyRef": ref}}
    return {"name": name, "value": url.value}


def merge_env(*lists: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Concatenates env lists; a later definition of a name replaces an earlier one in place.

    Kubernetes keeps duplicates and lets the last win silently; deduplicating keeps the
    rendered pod readable and SSA-friendly.
    """
    out: dict[str, dict[str, Any]] = {}
    for env in lists:
        for var in env:
            out[var["name"]] = dict(var)
    return list(out.values())


def app_env(app: CeleryApp, mirror: str | None = None) -> list[dict[str, Any]]:
    """The env every component of an app gets: broker, result backend, then the app's own."""
    ours: list[dict[str, Any]] = [
        connection_env(BROKER_ENV, app.spec.broker, mirror, MIRROR_BROKER_KEY)
    ]
    if app.spec.result_backend is not None:
        ours.append(
            connection_env(BACKEND_ENV, app.spec.result_backend, mirror, MIRROR_BACKEND_KEY)
        )
    # HOME on the writable /tmp: images run as an arbitrary non-root user here.
    ours.append({"name": "HOME", "value": "/tmp"})
    return merge_env(ours, app.spec.env)


DEFAULT_POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}

CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}

TMP_VOLUME = {"name": "tmp", "emptyDir": {}}
TMP_MOUNT = {"name": "tmp", "mountPath": "/tmp"}


def pod_spec(
    app: CeleryApp,
    containers: list[dict[str, Any]],
    *,
    node_selector: Mapping[str, str] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
    affinity: dict[str, Any] | None = None,
    priority_class_name: str = "",
    topology_spread_constraints: list[dict[str, Any]] | None = None,
    termination_grace_period_seconds: int | None = None,
    volumes: Sequence[Mapping[str, Any]] = (),
    init_containers: Sequence[Mapping[str, Any]] = (),
    sidecars: Sequence[Mapping[str, Any]] = (),
    image_pull_secrets: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A pod spec with the app's podDefaults; the given overrides win when non-empty.

    Volumes: the operator's 'tmp', the app's podDefaults.volumes, then the component's.
    Init containers: the component's, as written, then its sidecars as native sidecars.
    `image_pull_secrets` replaces the app's imagePullSecrets (the names of their mirrors,
    for a pool outside the app's namespace)."""
    d = app.spec.pod_defaults
    spec: dict[str, Any] = {}
    init = [*(dict(c) for c in init_containers), *map(native_sidecar, sidecars)]
    if init:
        spec["initContainers"] = init
    spec |= {
        "containers": containers,
        "securityContext": dict(d.security_context or DEFAULT_POD_SECURITY_CONTEXT),
        "volumes": [dict(TMP_VOLUME), *(dict(v) for v in (*d.volumes, *volumes))],
        "enableServiceLinks": False,
    }
    if d.service_account_name:
        spec["serviceAccountName"] = d.service_account_name
    if image_pull_secrets is not None:
        if image_pull_secrets:
            spec["imagePullSecrets"] = [{"name": n} for n in image_pull_secrets]
    elif app.spec.image_pull_secrets:
        spec["imagePullSecrets"] = [dict(s) for s in app.spec.image_pull_secrets]
    ns = node_selector or d.node_selector
    if ns:
        spec["nodeSelector"] = dict(ns)
    tol = tolerations or d.tolerations
    if tol:
        spec["tolerations"] = [dict(t) for t in tol]
    aff = affinity or d.affinity
    if aff:
        spec["affinity"] = dict(aff)
    pcn = priority_class_name or d.priority_class_name
    if pcn:
        spec["priorityClassName"] = pcn
    if topology_spread_constraints:
        spec["topologySpreadConstraints"] = [dict(t) for t in topology_spread_constraints]
    if termination_grace_period_seconds is not None:
        spec["terminationGracePeriodSeconds"] = termination_grace_period_seconds
    return spec


def native_sidecar(c: Mapping[str, Any]) -> dict[str, Any]:
    """A user's sidecar as a Kubernetes native sidecar: an init container that restarts
    Always, started before the main container and stopped after it. Otherwise verbatim."""
    return {**c, "restartPolicy": "Always"}


def container(
    name: str,
    image: str,
    app: CeleryApp,
    args: list[str],
    env: list[dict[str, Any]],
    resources: dict[str, Any] | None,
    volume_mounts: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The operator's container of a component: its mounts are 'tmp', the app's
    podDefaults.volumeMounts, then the component's `volume_mounts`."""
    c: dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": app.spec.image_pull_policy,
        "command": ["celery"],
        "args": args,
        "env": env,
        "securityContext": dict(CONTAINER_SECURITY_CONTEXT),
        "volumeMounts": [
            dict(TMP_MOUNT),
            *(dict(m) for m in (*app.spec.pod_defaults.volume_mounts, *volume_mounts)),
        ],
        # A container that crashes leaves the tail of its log in its status, which the
        # operator reports in Ready's message (an app path that does not import, ...).
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if app.spec.env_from:
        c["envFrom"] = [dict(e) for e in app.spec.env_from]
    if resources:
        c["resources"] = dict(resources)
    return c


def with_secret_checksum(
    deployment: Mapping[str, Any], checksum: str | None, baseline: str | None = None
) -> dict[str, Any]:
    """The Deployment with the checksum of the Secret data its pods read at start, on its
    pod template (a new value rolls the pods) and on its metadata (where the operator's
    cache, which keeps no pod template, reads the current one). None: no annotation.
    `baseline`: on the metadata only (a Deployment adopted without a roll).
    A new dict along the annotated paths; the rest is shared with `deployment`."""
    meta = dict(deployment["metadata"])
    if baseline is not None:
        meta["annotations"] = {
            **(meta.get("annotations") or {}),
            SECRET_BASELINE_ANNOTATION: baseline,
        }
    out = {**deployment, "metadata": meta}
    if checksum is None:
        return out
    meta["annotations"] = {**(meta.get("annotations") or {}), SECRET_CHECKSUM_ANNOTATION: checksum}
    spec = deployment["spec"]
    template = spec["template"]
    pod_meta = dict(template.get("metadata") or {})
    pod_meta["annotations"] = {
        **(pod_meta.get("annotations") or {}),
        SECRET_CHECKSUM_ANNOTATION: checksum,
    }
    out["spec"] = {**spec, "template": {**template, "metadata": pod_meta}}
    return out
