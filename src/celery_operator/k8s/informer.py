"""LIST then WATCH one kind, with an informer's semantics (client-go's reflector).

kopf's watches relist after a 410 Gone without telling what went missing: an object deleted
while the watch was cut stays "present" for whoever keeps a cache, until a restart. Here
every LIST, the first one and every relist, is compared with what was known: objects gone
from it are delivered as DELETED (with their last known metadata), changed ones as
MODIFIED, new ones as ADDED; unchanged ones not at all. After a relist the receiver has
seen exactly the server's list.

A watch the server ends (its timeout) resumes from the last resourceVersion seen; a
broken one (apiserver restart, network) too, after a pause; a 410 Gone (that version is
compacted or older than the apiserver's watch cache) relists. One thread per informer;
`handler(type, body)` runs on it and must not raise (what it raises is logged).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from celery_operator.k8s import client

log = logging.getLogger("celery_operator.informer")

RELISTS = Counter(
    "celery_operator_relists_total",
    "LISTs of a watched kind after the first (a 410 Gone, or a watch that could not resume)",
    ["resource"],
)
GONE_ON_RELIST = Counter(
    "celery_operator_relist_deletions_total",
    "Objects found gone by a relist (deleted while the watch was cut)",
    ["resource"],
)

Key = tuple[str, str]  # (namespace, name)
Handler = Callable[[str, dict[str, Any]], None]
OPTIONAL_RETRY = 30.0  # an optional kind not served (KEDA not installed): look again


class GoneError(Exception):
    """The watch's resourceVersion is too old: relist."""


@dataclass(frozen=True, slots=True)
class _Known:
    uid: str
    version: str
    tombstone: Tombstone  # what a DELETED found by a relist carries


# (apiVersion, kind, (name, namespace, uid, resourceVersion), labels as (k, v, k, v...),
# each owner reference as (k, v, k, v...)): interned strings in tuples.
Tombstone = tuple[Any, Any, tuple[Any, ...], tuple[str, ...], tuple[tuple[Any, ...], ...]]
_IDENTITY = ("name", "namespace", "uid", "resourceVersion")


def _interned(value: Any) -> Any:
    return sys.intern(value) if isinstance(value, str) else value


def _flat(mapping: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(_interned(x) for kv in mapping.items() for x in kv)


def tombstone(body: Mapping[str, Any]) -> Tombstone:
    """The part of a body a DELETED event needs (who it was, whose it was), as tuples of
    interned strings: one is kept per watched object, and as nested dicts (a dict for the
    body, its metadata, its labels, each owner reference) they were two fifths of the
    dicts the operator held at 3000 apps. (Not as JSON bytes: objects over 512 bytes go
    to malloc, whose per-thread arenas the long-lived ones pin: 41 MiB more at 1000.)"""
    meta = body.get("metadata") or {}
    return (
        _interned(body.get("apiVersion")),
        _interned(body.get("kind")),
        tuple(_interned(meta.get(k)) for k in _IDENTITY),
        _flat(meta.get("labels") or {}),
        tuple(_flat(r) for r in meta.get("ownerReferences") or ()),
    )


def revive(stone: Tombstone) -> dict[str, Any]:
    """The body a DELETED event carries, from its tombstone."""
    api_version, kind, identity, labels, refs = stone
    meta: dict[str, Any] = {k: v for k, v in zip(_IDENTITY, identity, strict=True) if v is not None}
    if labels:
        meta["labels"] = dict(zip(labels[::2], labels[1::2], strict=True))
    if refs:
        meta["ownerReferences"] = [dict(zip(r[::2], r[1::2], strict=True)) for r in refs]
    return {"apiVersion": api_version, "kind": kind, "metadata": meta}


class Informer:
    def __init__(
        self,
        api_version: str,
        kind: str,
        handler: Handler,
        *,
        namespace: str | None = None,
        label_selector: str = "",
        optional: bool = False,
        restart_delay: float = 1.0,
        watch_timeout: int = 300,
    ) -> None:
        self.api_version, self.kind = api_version, kind
        self.plural = client.resource(api_version, kind).plural
        self.handler = handler
        self.namespace = namespace
        self.label_selector = label_selector
        self.optional = optional
        self.restart_delay = restart_delay
        self.watch_timeout = watch_timeout
        self.synced = threading.Event()  # the first LIST was delivered
        self.lists = 0
        self._known: dict[Key, _Known] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        where = self.namespace or "all namespaces"
        return f"Informer({self.kind} in {where}, {self.label_selector or 'no selector'})"

    # ---- running ------------------------------------------------------------------
    def start(self) -> Informer:
        self._thread = threading.Thread(target=self._run, name=f"watch-{self.plural}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._relist()
                version = self._watch(version)
            except GoneError:
                log.info("watch of %s: resourceVersion too old, relisting", self.plural)
                version = None
            except client.ApiError as e:
                if version is None and e.not_found and self.optional:
                    self.synced.set()  # not served (yet): nothing to know
                    self._stop.wait(OPTIONAL_RETRY)
                    continue
                if e.not_found:
                    version = None  # the resource went (KEDA uninstalled): list again
                log.warning("watch of %s broke (%s): resuming", self.plural, e)
                self._stop.wait(self.restart_delay)
            except Exception:
                log.exception("watch of %s failed: relisting", self.plural)
                version = None
                self._stop.wait(self.restart_delay)

    # ---- list ---------------------------------------------------------------------
    def _relist(self) -> str:
        objects, version = client.list_with_version(
            self.api_version, self.kind, self.namespace, self.label_selector
        )
        if self.lists:
            RELISTS.labels(self.plural).inc()
        self.lists += 1
        seen: set[Key] = set()
        for obj in objects:
            obj.setdefault("apiVersion", self.api_version)
            obj.setdefault("kind", self.kind)
            meta = obj["metadata"]
            key = (meta.get("namespace", ""), meta["name"])
            seen.add(key)
            old = self._known.get(key)
            if old is not None and old.uid == meta.get("uid"):
                if old.version != meta.get("resourceVersion"):
                    self._deliver("MODIFIED", obj)
                continue
            if old is not None:  # deleted and made again under the same name
                self._deliver("DELETED", revive(old.tombstone))
            self._deliver("ADDED", obj)
        for key in [k for k in self._known if k not in seen]:
            old = self._known[key]
            GONE_ON_RELIST.labels(self.plural).inc()
            log.info("%s %s/%s was deleted while the watch was cut", self.kind, *key)
            self._deliver("DELETED", revive(old.tombstone))
        self.synced.set()
        return version

    # ---- watch --------------------------------------------------------------------
    def _watch(self, version: str) -> str:
        """Follows the watch from `version` until the server ends it; returns the last
        version seen (where the next watch resumes). Raises GoneError for a 410."""
        events = client.watch_events(
            self.api_version,
            self.kind,
            version,
            self.watch_timeout,
            namespace=self.namespace,
            label_selector=self.label_selector,
        )
        try:
            for event in events:
                if self._stop.is_set():
                    break
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise GoneError(obj.get("message", ""))
                    raise client.ApiError(
                        int(obj.get("code") or 0), str(obj.get("reason", "")), str(obj)
                    )
                meta = obj.get("metadata") or {}
                version = str(meta.get("resourceVersion") or version)
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    obj.setdefault("apiVersion", self.api_version)
                    obj.setdefault("kind", self.kind)
                    self._deliver(str(kind), obj)
        except client.ApiError as e:
            if e.status == 410:
                raise GoneError(e.message) from None
            raise
        return version

    def _deliver(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if kind == "DELETED":
            self._known.pop(key, None)
        else:
            self._known[key] = _Known(
                sys.intern(str(meta.get("uid", ""))),
                str(meta.get("resourceVersion", "")),
                tombstone(obj),
            )
        try:
            self.handler(kind, obj)
        except Exception:
            log.exception("handling %s of %s %s/%s failed", kind, self.kind, *key)


def wait_synced(informers: list[Informer], timeout: float) -> list[Informer]:
    """Waits for every informer's first LIST; returns those still not synced."""
    import time

    deadline = time.monotonic() + timeout
    return [i for i in informers if not i.synced.wait(max(0.0, deadline - time.monotonic()))]
