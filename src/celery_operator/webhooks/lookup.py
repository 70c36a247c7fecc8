"""What admission needs to know about other objects, behind a small interface.

`ApiLookup` reads through `celery_operator.k8s`; unit tests pass their own Lookup with
fixed answers (the webhook's logic is tested through its ASGI app; the real apiserver
path is tested end to end with kubectl)."""

from __future__ import annotations

from typing import Any, Protocol

from celery_operator.api.base import API_VERSION
from celery_operator.api.kinds import APP, FLOWER, NAMESPACE, POOL
from celery_operator.api.labels import LABEL_APP, LABEL_APP_NAMESPACE, label_value
from celery_operator.k8s import client
from celery_operator.k8s.watchcache import WatchCache


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
        app_label, ns_label = label_value(name), label_value(namespace)
        if (c := self._ready(self._pools)) is not None:

            def of_app(p: dict[str, Any]) -> bool:
                labels = (p.get("metadata") or {}).get("labels") or {}
                return bool(
                    labels.get(LABEL_APP) == app_label
                    and labels.get(LABEL_APP_NAMESPACE) == ns_label
                )

            return c.list(of_app)
        selector = f"{LABEL_APP}={app_label},{LABEL_APP_NAMESPACE}={ns_label}"
        return client.list_objects(API_VERSION, POOL.name, None, selector)

    def flowers(self, namespace: str) -> list[dict[str, Any]]:
        if (c := self._ready(self._flowers)) is not None:
            return c.list(lambda f: (f.get("metadata") or {}).get("namespace") == namespace)
        return client.list_objects(API_VERSION, FLOWER.name, namespace)
