"""Caches of whole kinds, for readers that must not pay an API round trip per question
(the admission webhook answers every kubectl apply).

One informer per kind (`k8s.informer`: LIST, then WATCH, relisting after a 410 with
deletions delivered); `synced` says whether the first LIST has landed; until then readers
should ask the API directly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from celery_operator.k8s.informer import Informer
from celery_operator.k8s.informer import wait_synced as _wait_synced

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped kinds


class WatchCache:
    def __init__(self, api_version: str, kind: str, *, restart_delay: float = 1.0) -> None:
        self.api_version, self.kind = api_version, kind
        self._items: dict[Key, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._informer = Informer(api_version, kind, self._on_event, restart_delay=restart_delay)
        self.synced = self._informer.synced

    # ---- reading ------------------------------------------------------------------
    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._items.get((namespace, name))

    def list(
        self, predicate: Callable[[dict[str, Any]], bool] = lambda _: True
    ) -> list[dict[str, Any]]:
        with self._lock:
            return [o for o in self._items.values() if predicate(o)]

    # ---- running ------------------------------------------------------------------
    def start(self) -> WatchCache:
        self._informer.start()
        return self

    def stop(self) -> None:
        self._informer.stop()

    def _on_event(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        with self._lock:
            if kind == "DELETED":
                self._items.pop(key, None)
            else:
                self._items[key] = obj


def wait_synced(caches: list[WatchCache], timeout: float) -> bool:
    return not _wait_synced([c._informer for c in caches], timeout)
