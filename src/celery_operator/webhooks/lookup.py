"""What admission needs to know about other objects, behind a small interface.

`ApiLookup` reads through `celery_operator.k8s`; unit tests pass their own Lookup with
fixed answers (the webhook's logic is tested through its ASGI app; the real apiserver
path is tested end to end with kubectl)."""

from __future__ import annotations

import time
from typing import Any, Protocol

from celery_operator.api.base import API_VERSION
from celery_operator.k8s import client
from celery_operator.render.common import LABEL_APP, LABEL_APP_NAMESPACE, label_value


class Lookup(Protocol):
    def app(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def namespace_labels(self, namespace: str) -> dict[str, str]: ...
    def secret_value(self, namespace: str, name: str, key: str) -> str | None: ...
    def keda_installed(self) -> bool: ...
    def pools_of_app(self, namespace: str, name: str) -> list[dict[str, Any]]: ...
    def flowers(self, namespace: str) -> list[dict[str, Any]]: ...


class ApiLookup:
    """Reads from the apiserver (KEDA's presence is cached for a minute)."""

    def __init__(self, keda_ttl: float = 60.0) -> None:
        self._keda: tuple[float, bool] = (0.0, False)
        self._keda_ttl = keda_ttl

    def app(self, namespace: str, name: str) -> dict[str, Any] | None:
        return client.get_object(API_VERSION, "CeleryApp", name, namespace)

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        ns = client.get_object("v1", "Namespace", namespace, None)
        return dict(((ns or {}).get("metadata") or {}).get("labels") or {})

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        return client.get_secret_value(namespace, name, key)

    def keda_installed(self) -> bool:
        checked, value = self._keda
        if time.monotonic() - checked > self._keda_ttl:
            value = client.api_group_served("keda.sh/v1alpha1", "scaledobjects")
            self._keda = (time.monotonic(), value)
        return value

    def pools_of_app(self, namespace: str, name: str) -> list[dict[str, Any]]:
        selector = f"{LABEL_APP}={label_value(name)},{LABEL_APP_NAMESPACE}={label_value(namespace)}"
        return client.list_objects(API_VERSION, "CeleryWorkerPool", None, selector)

    def flowers(self, namespace: str) -> list[dict[str, Any]]:
        return client.list_objects(API_VERSION, "Flower", namespace)
