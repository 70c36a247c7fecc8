"""The only place that talks to the Kubernetes API.

Plain dicts in, plain dicts out. Every write of a child is a server-side apply under one
field manager. Errors surface as `ApiError`. Requests go through urllib3 with orjson
bodies; where the server is and the credentials come from k8s/connection.py.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlencode

import orjson
import urllib3
from prometheus_client import Counter

from celery_operator.api.kinds import LIMIT_RANGE, Resource, resources
from celery_operator.api.labels import FIELD_MANAGER
from celery_operator.k8s import connection

API_REQUESTS = Counter(
    "celery_operator_api_requests_total",
    "Requests to the Kubernetes API, by method, resource and status class",
    ["method", "resource", "code"],
)


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
        """Writes into a namespace that is being deleted, or already gone (the owner's
        events can still be on their way): its objects are going away."""
        if self.status == 404:
            return self.message.startswith('namespaces "') and self.message.endswith("not found")
        return self.status == 403 and "being terminated" in self.message

    @property
    def transient(self) -> bool:
        return self.status in (0, 429, 500, 502, 503, 504)


# The table's resources (the kinds, their children, what the operator reads), and what
# the webhook and the tests touch besides: its configurations and the CRDs.
RESOURCES: dict[str, Resource] = {
    r.key: r
    for r in (
        *resources(),
        LIMIT_RANGE,
        Resource(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingWebhookConfiguration",
            "validatingwebhookconfigurations",
            namespaced=False,
        ),
        Resource(
            "admissionregistration.k8s.io",
            "v1",
            "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations",
            namespaced=False,
        ),
        Resource("coordination.k8s.io", "v1", "Lease", "leases"),
        Resource("events.k8s.io", "v1", "Event", "events"),
        Resource(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            namespaced=False,
        ),
    )
}


_PLURALS = {r.plural for r in RESOURCES.values()}


def resource(api_version: str, kind: str) -> Resource:
    try:
        return RESOURCES[f"{api_version}/{kind}"]
    except KeyError:
        raise ValueError(f"unknown resource {api_version} {kind}") from None


_lock = threading.Lock()
_conn: connection.Connection | None = None


def configure(kubeconfig: str | None = None, pool_size: int = 32) -> None:
    """Loads credentials: in-cluster, else a kubeconfig file ($KUBECONFIG or ~/.kube/config)."""
    global _conn
    conn = connection.load(kubeconfig, pool_size)
    with _lock:
        _conn = conn


def set_user_agent(user_agent: str) -> None:
    """Names this process in the apiserver's audit log and request logs (which replica
    of the operator wrote what)."""
    _connection().user_agent = user_agent


def server_url() -> str:
    """The apiserver's URL as configured (in a pod: from KUBERNETES_SERVICE_HOST/PORT,
    which needs no cluster DNS)."""
    return _connection().server


def _connection() -> connection.Connection:
    global _conn
    with _lock:
        if _conn is None:
            _conn = connection.load()
        return _conn


def _url(conn: connection.Connection, path: str, query: list[tuple[str, str]] | None) -> str:
    return f"{conn.server}{path}?{urlencode(query)}" if query else f"{conn.server}{path}"


# Called before every write (POST, PUT, PATCH, DELETE) when set: the operator's leader
# election fences its writes with it (a replica whose lease may have passed to another
# never writes). A write that must not be fenced (renewing the lease) passes fenced=False.
write_guard: Callable[[], None] | None = None
_WRITES = frozenset(("POST", "PUT", "PATCH", "DELETE"))


def _call(
    method: str,
    path: str,
    *,
    body: Any = None,
    query: list[tuple[str, str]] | None = None,
    content_type: str = "application/json",
    timeout: float = 30,
    fenced: bool = True,
) -> dict[str, Any]:
    conn = _connection()
    parts = path.split("?")[0].split("/")
    kind = next((p for p in reversed(parts) if p in _PLURALS), "other")
    if parts[-1] == "status":
        kind += "/status"
    url, headers = _url(conn, path, query), conn.headers(content_type)
    payload = None if body is None else orjson.dumps(body)
    # The fence goes last, once the request is ready (the body encoded, a token file
    # re-read): the less a stopped process can have left to do between the check and the
    # send, the smaller the window in which a write checked before a SIGSTOP goes out after.
    guard = write_guard
    if fenced and guard is not None and method in _WRITES:
        guard()
    try:
        response = conn.pool.request(
            method, url, body=payload, headers=headers, timeout=urllib3.Timeout(total=timeout)
        )
        data = response.data
    except Exception as e:  # connection refused, timeout, TLS: no answer from the server
        API_REQUESTS.labels(method, kind, "none").inc()
        raise ApiError(0, type(e).__name__, str(e)) from None
    API_REQUESTS.labels(method, kind, f"{response.status // 100}xx").inc()
    if not 200 <= response.status < 300:
        raise ApiError(
            response.status, response.reason or "", _message(data, response.reason or "")
        )
    return dict(orjson.loads(data)) if data else {}


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
    query = [("labelSelector", label_selector)] if label_selector else []
    return _list(resource(api_version, kind), namespace, query)[0]


def list_with_version(
    api_version: str, kind: str, namespace: str | None = None, label_selector: str = ""
) -> tuple[list[dict[str, Any]], str]:
    """Every object of a kind, and the list's resourceVersion (where a watch starts)."""
    query = [("labelSelector", label_selector)] if label_selector else []
    return _list(resource(api_version, kind), namespace, query)


def _list(
    r: Resource, namespace: str | None, query: list[tuple[str, str]]
) -> tuple[list[dict[str, Any]], str]:
    """All pages of a LIST (500 objects a page) and the resourceVersion they were read at."""
    out: list[dict[str, Any]] = []
    cont = ""
    while True:
        page = _call("GET", r.path(namespace), query=[*query, ("limit", "500"), ("continue", cont)])
        out.extend(page.get("items", []))
        meta = page.get("metadata", {})
        cont = meta.get("continue", "")
        if not cont:
            return out, str(meta.get("resourceVersion", ""))


def watch_events(
    api_version: str,
    kind: str,
    resource_version: str,
    timeout_seconds: int = 300,
    *,
    namespace: str | None = None,
    label_selector: str = "",
) -> Iterator[dict[str, Any]]:
    """WATCHes a kind (in every namespace, or one) from `resource_version`, with
    bookmarks. Yields the decoded events ({"type": ..., "object": ...}, ERROR events
    included) until the server ends the watch (after about `timeout_seconds`). Failures
    raise ApiError."""
    r = resource(api_version, kind)
    conn = _connection()
    query = [
        ("watch", "true"),
        ("resourceVersion", resource_version),
        ("allowWatchBookmarks", "true"),
        ("timeoutSeconds", str(timeout_seconds)),
    ]
    if label_selector:
        query.append(("labelSelector", label_selector))
    try:
        response = conn.pool.request(
            "GET",
            _url(conn, r.path(namespace), query),
            headers=conn.headers(),
            preload_content=False,
            timeout=timeout_seconds + 30,
        )
    except Exception as e:  # no answer from the server
        API_REQUESTS.labels("WATCH", r.plural, "none").inc()
        raise ApiError(0, type(e).__name__, str(e)) from None
    API_REQUESTS.labels("WATCH", r.plural, f"{response.status // 100}xx").inc()
    try:
        if response.status != 200:
            reason = response.reason or ""
            raise ApiError(response.status, reason, _message(response.read(), reason))
        chunks = response.stream(65536, decode_content=True)
        # One event per line. Each chunk is searched once, and the consumed lines leave
        # the buffer once per chunk: a Deployment's event is several kilobytes, and
        # re-scanning or re-slicing the whole buffer per line grew with its length.
        pending = bytearray()
        while True:
            try:
                chunk = next(chunks, None)
            except Exception as e:  # the connection broke mid-watch
                raise ApiError(0, type(e).__name__, str(e)) from None
            if chunk is None:
                return
            search = len(pending)
            pending += chunk
            start = 0
            while (end := pending.find(b"\n", search)) >= 0:
                line = pending[start:end]
                if line.strip():
                    yield dict(orjson.loads(line))
                start = search = end + 1
            if start:
                del pending[:start]
    finally:
        response.close()
        response.release_conn()


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


def create_object(
    manifest: Mapping[str, Any], *, field_manager: str = FIELD_MANAGER, fenced: bool = True
) -> dict[str, Any]:
    """Creates an object (POST) and returns it; a name already taken raises ApiError 409."""
    meta = manifest["metadata"]
    r = resource(manifest["apiVersion"], manifest["kind"])
    return _call(
        "POST",
        r.path(meta.get("namespace")),
        body=manifest,
        query=[("fieldManager", field_manager)],
        fenced=fenced,
    )


def replace_object(
    manifest: Mapping[str, Any], *, field_manager: str = FIELD_MANAGER, fenced: bool = True
) -> dict[str, Any]:
    """Replaces an object (PUT) at the resourceVersion its metadata names: if it changed
    since, ApiError 409 and nothing is written (the Lease's compare-and-swap)."""
    meta = manifest["metadata"]
    r = resource(manifest["apiVersion"], manifest["kind"])
    return _call(
        "PUT",
        r.path(meta.get("namespace"), meta["name"]),
        body=manifest,
        query=[("fieldManager", field_manager)],
        fenced=fenced,
    )


def patch_object(
    api_version: str,
    kind: str,
    name: str,
    namespace: str | None,
    patch: Mapping[str, Any],
    *,
    field_manager: str | None = None,
    resource_version: str | None = None,
) -> dict[str, Any]:
    """A JSON merge patch of the object itself (used for small, owned fields), written
    under `field_manager` when given. With `resource_version`, the apiserver applies it
    only if the object is still at that version (else ApiError 409)."""
    r = resource(api_version, kind)
    body = patch
    if resource_version is not None:
        meta = {**dict(patch.get("metadata") or {}), "resourceVersion": resource_version}
        body = {**patch, "metadata": meta}
    return _call(
        "PATCH",
        r.path(namespace, name),
        body=body,
        query=[("fieldManager", field_manager)] if field_manager else None,
        content_type="application/merge-patch+json",
    )


# ---- authorization --------------------------------------------------------------------
def create_subject_access_review(spec: Mapping[str, Any], *, timeout: float = 30) -> dict[str, Any]:
    """Asks the apiserver's authorizers whether a user may do something: creates a
    SubjectAccessReview (authorization.k8s.io/v1; evaluated, never stored) and returns its
    status ({"allowed": ..., "denied": ..., "reason": ..., "evaluationError": ...})."""
    body = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": dict(spec),
    }
    review = _call(
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        body=body,
        timeout=timeout,
    )
    return dict(review.get("status") or {})
