"""List-then-watch caches of whole kinds, for readers that must not pay an API round trip
per question (the admission webhook answers every kubectl apply).

One thread per kind: LIST (with its resourceVersion), then WATCH from there; on a 410 or any
error, start over after a short pause. `synced` says whether the first LIST has landed;
until then readers should ask the API directly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from celery_operator.k8s import client

log = logging.getLogger("celery_operator.watchcache")

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped kinds


class WatchCache:
    def __init__(self, api_version: str, kind: str, *, restart_delay: float = 1.0) -> None:
        self.resource = client.resource(api_version, kind)
        self.api_version, self.kind = api_version, kind
        self.restart_delay = restart_delay
        self._items: dict[Key, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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
        self._thread = threading.Thread(target=self._run, name=f"watch-{self.kind}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                version = self._list()
                self._watch(version)
            except Exception as e:  # any failure: relist after a pause
                log.warning("watch of %s restarts: %s", self.kind, type(e).__name__)
            self._stop.wait(self.restart_delay)

    def _list(self) -> str:
        objects, version = client.list_with_version(self.api_version, self.kind)
        items = {}
        for obj in objects:
            meta = obj["metadata"]
            items[(meta.get("namespace", ""), meta["name"])] = obj
        with self._lock:
            self._items = items
        self.synced.set()
        return version

    def _watch(self, version: str) -> None:
        """Follows the watch from `version` until it ends (then reconnects from the last
        version seen) or fails (then the caller relists)."""
        while not self._stop.is_set():
            for event in client.watch_events(self.api_version, self.kind, version):
                obj = event.get("object") or {}
                meta = obj.get("metadata") or {}
                if event.get("type") == "ERROR":  # e.g. 410 Gone: relist
                    raise RuntimeError(f"watch error: {obj.get('message', '')}")
                version = str(meta.get("resourceVersion", version))
                if event.get("type") == "BOOKMARK":
                    continue
                key = (meta.get("namespace", ""), meta["name"])
                with self._lock:
                    if event.get("type") == "DELETED":
                        self._items.pop(key, None)
                    else:
                        self._items[key] = obj


def wait_synced(caches: list[WatchCache], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    return all(c.synced.wait(max(0.0, deadline - time.monotonic())) for c in caches)
