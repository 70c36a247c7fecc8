"""The Secrets the operator's objects name, polled: the operator may not list or watch
Secrets (it must not be able to enumerate the cluster's Secrets), so it GETs each Secret
that some app, pool or Flower references, and only those, every `--secret-poll-seconds`.

Reconciles register what they read (`read`: an owner's references replace its previous
ones, and are answered from here, with a GET only for a Secret not read yet); `forget`
drops a deleted owner's. A poll compares each Secret's resourceVersion with the one last
read and, when it moved (or the Secret appeared or went away), keeps the new data and
reconciles the owners that name it: they write the new mirrors and pod-template
checksums. The work grows with the referenced Secrets, not with the cluster.

A read that fails keeps what was read before (an apiserver that does not answer changes
nothing); a Secret never read successfully is a view with `error` set, read again at the
next poll.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from celery_operator.api.kinds import Key
from celery_operator.k8s import client
from celery_operator.plans.secrets import SecretKey, SecretView

log = logging.getLogger("celery_operator")

Owner = tuple[str, Key]  # (the work queue's task: "app", "pool", "flower"; the owner's key)

POLLS = Counter(
    "celery_operator_secret_polls_total",
    "GETs of referenced Secrets by the Secret poller, by result (unchanged, changed, failed)",
    ["result"],
)
POLL_SECONDS = Histogram(
    "celery_operator_secret_poll_seconds",
    "Time of one round of the Secret poller over every referenced Secret",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60),
)
REFERENCED = Gauge(
    "celery_operator_referenced_secrets", "Secrets named by the operator's objects, polled"
)


def view_of(secret: Mapping[str, Any] | None) -> SecretView:
    if secret is None:
        return SecretView(exists=False)
    return SecretView(
        exists=True,
        type=str(secret.get("type") or "Opaque"),
        data={str(k): str(v) for k, v in (secret.get("data") or {}).items()},
    )


def _get(key: SecretKey) -> dict[str, Any] | None:
    return client.get_object("v1", "Secret", key[1], key[0])


@dataclass(frozen=True)
class _Entry:
    version: str | None  # the resourceVersion read; "" absent; None never read (error)
    view: SecretView


class SecretWatch:
    def __init__(
        self,
        interval: float = 30.0,
        on_change: Callable[[str, Key], None] | None = None,
        get: Callable[[SecretKey], dict[str, Any] | None] = _get,
    ) -> None:
        self.interval = interval
        self.on_change = on_change
        self._get = get
        self._lock = threading.Lock()
        self._refs: dict[Owner, frozenset[SecretKey]] = {}
        self._owners: dict[SecretKey, set[Owner]] = {}
        self._entries: dict[SecretKey, _Entry] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- what reconciles call ---------------------------------------------------------
    def read(self, owner: Owner, keys: Iterable[SecretKey]) -> dict[SecretKey, SecretView]:
        """Registers the Secrets `owner` names now (its earlier ones not among them are
        dropped) and returns them as last read; a Secret not read yet is read now."""
        wanted = frozenset(keys)
        with self._lock:
            self._register(owner, wanted)
            missing = [k for k in sorted(wanted) if k not in self._entries]
        for key in missing:
            entry = self._fetch(key)
            with self._lock:
                if key in self._owners and key not in self._entries:
                    self._entries[key] = entry
        with self._lock:
            return {k: self._entries[k].view for k in wanted if k in self._entries}

    def forget(self, owner: Owner) -> None:
        """The owner is gone: it names nothing any more."""
        with self._lock:
            self._register(owner, frozenset())

    def referenced(self) -> dict[SecretKey, set[Owner]]:
        with self._lock:
            return {k: set(v) for k, v in self._owners.items()}

    def _register(self, owner: Owner, wanted: frozenset[SecretKey]) -> None:
        old = self._refs.get(owner, frozenset())
        if wanted:
            self._refs[owner] = wanted
        else:
            self._refs.pop(owner, None)
        for key in old - wanted:
            owners = self._owners.get(key)
            if owners is not None:
                owners.discard(owner)
                if not owners:
                    del self._owners[key]
                    self._entries.pop(key, None)
        for key in wanted - old:
            self._owners.setdefault(key, set()).add(owner)
        REFERENCED.set(len(self._owners))

    def _fetch(self, key: SecretKey) -> _Entry:
        try:
            secret = self._get(key)
        except client.ApiError as e:
            log.warning("cannot read Secret %s/%s: %s", *key, e)
            return _Entry(None, SecretView(error=f"cannot read it: {e.status} {e.reason}"))
        version = "" if secret is None else str(secret["metadata"].get("resourceVersion", ""))
        return _Entry(version, view_of(secret))

    # ---- the poller ---------------------------------------------------------------------
    def poll(self) -> set[Owner]:
        """One round: every referenced Secret read once; the owners of those that changed
        are told (`on_change`) and returned."""
        started = time.perf_counter()
        with self._lock:
            keys = sorted(self._owners)
        told: set[Owner] = set()
        for key in keys:
            entry = self._fetch(key)
            with self._lock:
                if key not in self._owners:
                    continue  # no longer referenced
                old = self._entries.get(key)
                if entry.version is None:
                    POLLS.labels("failed").inc()
                    if old is None or old.version is None:
                        self._entries[key] = entry  # still never read: say why
                    continue
                if old is not None and old.version == entry.version:
                    POLLS.labels("unchanged").inc()
                    continue
                POLLS.labels("changed").inc()
                self._entries[key] = entry
                owners = set(self._owners[key])
            if old is not None:  # a first read is what the reconcile that named it saw
                log.info(
                    "Secret %s/%s changed: reconciling %s",
                    *key,
                    ", ".join(f"{t} {k[0]}/{k[1]}" for t, k in sorted(owners)),
                )
                told |= owners
        for task, owner_key in sorted(told):
            if self.on_change is not None:
                self.on_change(task, owner_key)
        POLL_SECONDS.observe(time.perf_counter() - started)
        return told

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="secret-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # never let the poller die: the next round tries again
                log.exception("the Secret poller's round failed")
