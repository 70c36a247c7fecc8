"""What admission needs to know about other objects, behind a small interface.

`ApiLookup` reads through `celery_operator.k8s`; unit tests pass their own Lookup with
fixed answers (the webhook's logic is tested through its ASGI app; the real apiserver
path is tested end to end with kubectl)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from celery_operator.api.base import API_VERSION
from celery_operator.api.kinds import APP, FLOWER, NAMESPACE, POOL
from celery_operator.api.labels import LABEL_APP, LABEL_APP_NAMESPACE, label_value
from celery_operator.k8s import client
from celery_operator.k8s.watchcache import WatchCache


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
