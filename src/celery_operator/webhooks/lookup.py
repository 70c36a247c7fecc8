"""What admission needs to know about other objects, behind a small interface.

`ApiLookup` reads through `celery_operator.k8s`; unit tests pass their own Lookup with
fixed answers (the webhook's logic is tested through its ASGI app; the real apiserver
path is tested end to end with kubectl)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from celery_operator.api.base import API_VERSION
from celery_operator.api.kinds import APP, FLOWER, LIMIT_RANGE, NAMESPACE, POOL
from celery_operator.api.labels import LABEL_APP, LABEL_APP_NAMESPACE, label_value
from celery_operator.k8s import client
from celery_operator.k8s.watchcache import WatchCache
from celery_operator.webhooks.review import UserInfo

# A SubjectAccessReview answers within this; the apiserver gives the webhook 5 s in all.
ACCESS_REVIEW_TIMEOUT = 2.0


@dataclass(frozen=True)
class Access:
    """A SubjectAccessReview's answer: allowed or not, and the authorizer's reason."""

    allowed: bool
    reason: str = ""


def access_review_spec(user: UserInfo, namespace: str, name: str) -> dict[str, Any]:
    """The spec of a SubjectAccessReview asking whether `user` may get one Secret."""
    spec: dict[str, Any] = {
        "resourceAttributes": {
            "namespace": namespace,
            "verb": "get",
            "group": "",
            "version": "v1",
            "resource": "secrets",
            "name": name,
        },
        "user": user.username,
        "groups": list(user.groups),
    }
    if user.uid:
        spec["uid"] = user.uid
    if user.extra:
        spec["extra"] = {k: list(v) for k, v in user.extra.items()}
    return spec


def access_of(status: Mapping[str, Any]) -> Access:
    """A SubjectAccessReview status as an Access (anything but allowed: true denies)."""
    reason = str(status.get("reason") or status.get("evaluationError") or "")
    return Access(status.get("allowed") is True, reason)


def app_ref_of(pool: Mapping[str, Any]) -> tuple[str, str]:
    """(namespace, name) of the app a pool names; the namespace defaults to the pool's."""

    def part(m: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        value = m.get(key)
        return value if isinstance(value, Mapping) else {}

    ref, meta = part(part(pool, "spec"), "appRef"), part(pool, "metadata")
    return (str(ref.get("namespace") or meta.get("namespace") or ""), str(ref.get("name") or ""))


class Lookup(Protocol):
    def app(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def namespace_labels(self, namespace: str) -> dict[str, str]: ...
    def secret_value(self, namespace: str, name: str, key: str) -> str | None: ...
    def keda_installed(self) -> bool: ...
    def pools_of_app(self, namespace: str, name: str) -> list[dict[str, Any]]: ...
    def flowers(self, namespace: str) -> list[dict[str, Any]]: ...
    def may_get_secret(self, user: UserInfo, namespace: str, name: str) -> Access: ...
    def limit_range_defaults(self, namespace: str) -> frozenset[str]: ...


class ApiLookup:
    """Reads other objects from watch-driven caches (one LIST+WATCH per kind, started
    with the lookup), and from the API while a cache has not synced yet or for Secrets
    (never watched). KEDA's presence is cached for `keda_ttl` seconds."""

    def __init__(self, keda_ttl: float = 60.0, *, watch: bool = True) -> None:
        self.keda_installed = client.keda_check(keda_ttl)
        self._apps = self._pools = self._flowers = self._namespaces = None
        if watch:
            self._apps, self._pools, self._flowers, self._namespaces = (
                WatchCache(r.api_version, r.kind).start()
                for r in (APP.resource, POOL.resource, FLOWER.resource, NAMESPACE)
            )

    @staticmethod
    def _ready(cache: WatchCache | None) -> WatchCache | None:
        return cache if cache is not None and cache.synced.is_set() else None

    def app(self, namespace: str, name: str) -> dict[str, Any] | None:
        if (c := self._ready(self._apps)) is not None:
            return c.get(namespace, name)
        return client.get_object(API_VERSION, APP.name, name, namespace)

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        if (c := self._ready(self._namespaces)) is not None:
            ns = c.get("", namespace)
        else:
            ns = client.get_object(NAMESPACE.api_version, NAMESPACE.kind, namespace, None)
        return dict(((ns or {}).get("metadata") or {}).get("labels") or {})

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        return client.get_secret_value(namespace, name, key)

    def pools_of_app(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The pools whose spec.appRef names the app. The cache is filtered on the spec
        itself, so a pool whose labels are missing or stale (written while the mutating
        webhook, failurePolicy Ignore, was down) still counts; the API fallback narrows
        by label on the server and then checks the spec."""
        key = (namespace, name)
        if (c := self._ready(self._pools)) is not None:
            return c.list(lambda p: app_ref_of(p) == key)
        selector = f"{LABEL_APP}={label_value(name)},{LABEL_APP_NAMESPACE}={label_value(namespace)}"
        listed = client.list_objects(API_VERSION, POOL.name, None, selector)
        return [p for p in listed if app_ref_of(p) == key]

    def flowers(self, namespace: str) -> list[dict[str, Any]]:
        if (c := self._ready(self._flowers)) is not None:
            return c.list(lambda f: (f.get("metadata") or {}).get("namespace") == namespace)
        return client.list_objects(API_VERSION, FLOWER.name, namespace)

    def may_get_secret(self, user: UserInfo, namespace: str, name: str) -> Access:
        """Asks the apiserver (a SubjectAccessReview, never cached: a grant or a revocation
        counts from the next request). Failures raise ApiError; the caller fails closed."""
        status = client.create_subject_access_review(
            access_review_spec(user, namespace, name), timeout=ACCESS_REVIEW_TIMEOUT
        )
        return access_of(status)

    def limit_range_defaults(self, namespace: str) -> frozenset[str]:
        """The resources the namespace's LimitRanges give every container that asks for
        none (`default` or `defaultRequest` of a Container limit). Read from the API (rare,
        and only for a pool with a utilization target lacking a request)."""
        return limit_range_defaults(
            client.list_objects(LIMIT_RANGE.api_version, LIMIT_RANGE.kind, namespace)
        )


def limit_range_defaults(limit_ranges: list[dict[str, Any]]) -> frozenset[str]:
    out: set[str] = set()
    for lr in limit_ranges:
        for item in (lr.get("spec") or {}).get("limits") or []:
            if item.get("type") == "Container":
                out.update(item.get("default") or {})
                out.update(item.get("defaultRequest") or {})
    return frozenset(out)
