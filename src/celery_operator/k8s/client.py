"""The only place that talks to the Kubernetes API.

Plain dicts in, plain dicts out. Every write of a child is a server-side apply under one
field manager. Errors surface as `ApiError`, so callers never import `kubernetes`.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException
from prometheus_client import Counter

API_REQUESTS = Counter(
    "celery_operator_api_requests_total",
    "Requests to the Kubernetes API, by method, resource and status class",
    ["method", "resource", "code"],
)

FIELD_MANAGER = "celery-operator"


class ApiError(RuntimeError):
    """An API call failed. `status` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def namespace_terminating(self) -> bool:
        """Writes into a namespace that is being deleted: its objects are going away."""
        return self.status == 403 and "being terminated" in self.message

    @property
    def transient(self) -> bool:
        return self.status in (0, 429, 500, 502, 503, 504)


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

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


RESOURCES: dict[str, Resource] = {
    "v1/Namespace": Resource("", "v1", "namespaces", namespaced=False),
    "v1/Secret": Resource("", "v1", "secrets"),
    "v1/Service": Resource("", "v1", "services"),
    "apps/v1/Deployment": Resource("apps", "v1", "deployments"),
    "policy/v1/PodDisruptionBudget": Resource("policy", "v1", "poddisruptionbudgets"),
    "autoscaling/v2/HorizontalPodAutoscaler": Resource(
        "autoscaling", "v2", "horizontalpodautoscalers"
    ),
    "networking.k8s.io/v1/Ingress": Resource("networking.k8s.io", "v1", "ingresses"),
    "keda.sh/v1alpha1/ScaledObject": Resource("keda.sh", "v1alpha1", "scaledobjects"),
    "keda.sh/v1alpha1/TriggerAuthentication": Resource(
        "keda.sh", "v1alpha1", "triggerauthentications"
    ),
    "celeryproject.org/v1alpha1/CeleryApp": Resource("celeryproject.org", "v1alpha1", "celeryapps"),
    "celeryproject.org/v1alpha1/CeleryWorkerPool": Resource(
        "celeryproject.org", "v1alpha1", "celeryworkerpools"
    ),
    "celeryproject.org/v1alpha1/Flower": Resource("celeryproject.org", "v1alpha1", "flowers"),
    "admissionregistration.k8s.io/v1/ValidatingWebhookConfiguration": Resource(
        "admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations", namespaced=False
    ),
    "admissionregistration.k8s.io/v1/MutatingWebhookConfiguration": Resource(
        "admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", namespaced=False
    ),
    "apiextensions.k8s.io/v1/CustomResourceDefinition": Resource(
        "apiextensions.k8s.io", "v1", "customresourcedefinitions", namespaced=False
    ),
}


_PLURALS = {r.plural for r in RESOURCES.values()}


def resource(api_version: str, kind: str) -> Resource:
    try:
        return RESOURCES[f"{api_version}/{kind}"]
    except KeyError:
        raise ValueError(f"unknown resource {api_version} {kind}") from None


_lock = threading.Lock()
_client: kubernetes.client.ApiClient | None = None


def configure(kubeconfig: str | None = None, pool_size: int = 32) -> None:
    """Loads credentials: in-cluster, else a kubeconfig file ($KUBECONFIG or ~/.kube/config)."""
    global _client
    config = kubernetes.client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
    else:
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=config)  # type: ignore[no-untyped-call]
    config.connection_pool_maxsize = pool_size
    with _lock:
        _client = kubernetes.client.ApiClient(config)


def server_url() -> str:
    """The apiserver's URL as configured (in a pod: from KUBERNETES_SERVICE_HOST/PORT,
    which needs no cluster DNS)."""
    return str(_api().configuration.host)


def _api() -> kubernetes.client.ApiClient:
    global _client
    with _lock:
        if _client is None:
            config = kubernetes.client.Configuration()
            try:
                kubernetes.config.load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config(client_configuration=config)  # type: ignore[no-untyped-call]
            config.connection_pool_maxsize = 32
            _client = kubernetes.client.ApiClient(config)
        return _client


def _call(
    method: str,
    path: str,
    *,
    body: Any = None,
    query: list[tuple[str, str]] | None = None,
    content_type: str = "application/json",
    timeout: float = 30,
) -> dict[str, Any]:
    api = _api()
    parts = path.split("?")[0].split("/")
    kind = next((p for p in reversed(parts) if p in _PLURALS), "other")
    if parts[-1] == "status":
        kind += "/status"
    try:
        m, url, headers, payload, post = api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = api.call_api(m, url, headers, payload, post, _request_timeout=timeout)
        data = response.read()  # type: ignore[no-untyped-call]
    except ApiException as e:
        API_REQUESTS.labels(method, kind, f"{(e.status or 0) // 100}xx").inc()
        raise ApiError(e.status or 0, e.reason or "", _message(e.body, e.reason or "")) from None
    except Exception as e:  # connection refused, timeout, TLS: no answer from the server
        API_REQUESTS.labels(method, kind, "none").inc()
        raise ApiError(0, type(e).__name__, str(e)) from None
    API_REQUESTS.labels(method, kind, f"{response.status // 100}xx").inc()
    if not 200 <= response.status < 300:
        raise ApiError(
            response.status, response.reason or "", _message(data, response.reason or "")
        )
    return dict(json.loads(data)) if data else {}


def _message(body: Any, default: str) -> str:
    """The `message` of a metav1.Status body, else `default`."""
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        return str(json.loads(body).get("message", default))
    return default


# ---- reads ----------------------------------------------------------------------------
def get_object(
    api_version: str, kind: str, name: str, namespace: str | None
) -> dict[str, Any] | None:
    r = resource(api_version, kind)
    try:
        return _call("GET", r.path(namespace, name))
    except ApiError as e:
        if e.not_found:
            return None
        raise


def list_objects(
    api_version: str, kind: str, namespace: str | None = None, label_selector: str = ""
) -> list[dict[str, Any]]:
    r = resource(api_version, kind)
    query = [("labelSelector", label_selector)] if label_selector else []
    out: list[dict[str, Any]] = []
    cont = ""
    while True:
        page = _call("GET", r.path(namespace), query=[*query, ("limit", "500"), ("continue", cont)])
        out.extend(page.get("items", []))
        cont = page.get("metadata", {}).get("continue", "")
        if not cont:
            return out


def get_secret_value(namespace: str, name: str, key: str) -> str | None:
    """A Secret's value, decoded; None when the Secret or the key does not exist."""
    import base64

    secret = get_object("v1", "Secret", name, namespace)
    if secret is None:
        return None
    raw = (secret.get("data") or {}).get(key)
    return None if raw is None else base64.b64decode(raw).decode()


def api_group_served(group_version: str, resource: str | None = None) -> bool:
    """Whether the apiserver serves a group/version (e.g. keda.sh/v1alpha1), and in it
    the given resource (e.g. scaledobjects) when one is named."""
    try:
        found = _call("GET", f"/apis/{group_version}")
    except ApiError as e:
        if e.not_found:
            return False
        raise
    if resource is None:
        return True
    return any(r.get("name") == resource for r in found.get("resources", []))


class ServedCheck:
    """Whether a resource is served (e.g. KEDA's scaledobjects), asked at most once per
    `ttl` seconds. Raises ApiError when the apiserver cannot answer; `last` is the last
    answer it gave (False before any)."""

    def __init__(self, group_version: str, resource: str, ttl: float) -> None:
        self.group_version, self.resource, self.ttl = group_version, resource, ttl
        self.last = False
        self._asked = float("-inf")

    def __call__(self) -> bool:
        if time.monotonic() - self._asked > self.ttl:
            self.last = api_group_served(self.group_version, self.resource)
            self._asked = time.monotonic()
        return self.last


def keda_check(ttl: float = 60.0) -> ServedCheck:
    """Is KEDA installed? (its ScaledObject kind is served)"""
    return ServedCheck("keda.sh/v1alpha1", "scaledobjects", ttl)


# ---- writes ---------------------------------------------------------------------------
def apply_object(
    manifest: Mapping[str, Any], *, force: bool = True, field_manager: str = FIELD_MANAGER
) -> dict[str, Any]:
    """Server-side apply under the operator's field manager; returns the live object."""
    meta = manifest["metadata"]
    r = resource(manifest["apiVersion"], manifest["kind"])
    return _call(
        "PATCH",
        r.path(meta.get("namespace"), meta["name"]),
        body=manifest,
        query=[("fieldManager", field_manager), ("force", "true" if force else "false")],
        content_type="application/apply-patch+yaml",
    )


def delete_object(
    api_version: str, kind: str, name: str, namespace: str | None, *, uid: str | None = None
) -> bool:
    """Deletes an object (only that exact one when `uid` is given). False if it was gone."""
    r = resource(api_version, kind)
    body: dict[str, Any] = {"propagationPolicy": "Background"}
    if uid:
        body["preconditions"] = {"uid": uid}
    try:
        _call("DELETE", r.path(namespace, name), body=body)
    except ApiError as e:
        if e.not_found or e.conflict:
            return False
        raise
    return True


def patch_status(
    api_version: str, kind: str, name: str, namespace: str | None, status: Mapping[str, Any]
) -> dict[str, Any]:
    """Replaces fields of .status (JSON merge patch on the status subresource)."""
    r = resource(api_version, kind)
    return _call(
        "PATCH",
        r.path(namespace, name, "status"),
        body={"status": status},
        content_type="application/merge-patch+json",
    )


def patch_object(
    api_version: str, kind: str, name: str, namespace: str | None, patch: Mapping[str, Any]
) -> dict[str, Any]:
    """A JSON merge patch of the object itself (used for small, owned fields)."""
    r = resource(api_version, kind)
    return _call(
        "PATCH", r.path(namespace, name), body=patch, content_type="application/merge-patch+json"
    )
