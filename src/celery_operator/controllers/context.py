"""What the three kind controllers share, below them: the cache, the queue, the scaler,
and the apply step (children by server-side apply and pruning, the status patch)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from celery_operator.api.conditions import CHILD_CONFLICT, CHILD_REJECTED, Blocker
from celery_operator.api.kinds import Kind, child_kinds
from celery_operator.api.labels import HASH_ANNOTATION
from celery_operator.controllers.cache import Cache, Ident, ident
from celery_operator.controllers.runtime import WorkQueue
from celery_operator.k8s import client
from celery_operator.k8s.children import ChildConflictError, apply_owned
from celery_operator.k8s.objects import contains, projection
from celery_operator.scaling.monitor import Monitors
from celery_operator.scaling.scaler import BuiltinScaler
from celery_operator.status import now_iso, status_changed

log = logging.getLogger("celery_operator")

# Status roll-ups wait this long for more changes, so a burst makes one write.
ROLLUP_DELAY = 0.25
CHILD_STATUS_DELAY = 0.1
# A pool's workers changed load (or pods came and went): one look per pool per second
# however many changed, so deletion-cost writes are batched.
WORKERS_DELAY = 1.0
# Child kinds no watch tells about (Secrets): always applied, never skipped by hash.
UNWATCHED_KINDS = frozenset(c.resource.kind for c in child_kinds() if not c.watched)


def manifest_hash(manifest: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Context:
    cache: Cache
    queue: WorkQueue
    scaler: BuiltinScaler | None = None
    monitors: Monitors | None = None
    keda: client.ServedCheck | None = None

    def __post_init__(self) -> None:
        if self.keda is None:
            self.keda = client.keda_check()

    # ---- gather ------------------------------------------------------------------------
    def keda_installed(self) -> bool:
        assert self.keda is not None
        try:
            return self.keda()
        except client.ApiError:
            return self.keda.last  # the apiserver did not answer: the last answer holds

    @staticmethod
    def now() -> str:
        return now_iso()

    @staticmethod
    def epoch() -> float:
        return time.time()

    # ---- apply -------------------------------------------------------------------------
    def apply_children(
        self, owner_uid: str, desired: Iterable[Mapping[str, Any]] | None, watch: Ident
    ) -> tuple[dict[str, Any] | None, Blocker | None]:
        """Applies the desired children (None: changes none). Returns the child `watch`
        as it is now (the status follows it) and the ChildConflict or ChildRejected that
        stopped the apply, if one did."""
        cached = self.cache.child(owner_uid, *watch)
        if desired is None:
            return cached, None
        try:
            live = self.sync_children(owner_uid, desired)
        except ChildConflictError as e:
            return cached, Blocker(CHILD_CONFLICT, str(e))
        except client.ApiError as e:
            # What the schema cannot tell about users' containers (requests above limits,
            # probes on an init container that is not a sidecar, ...): the apiserver's
            # answer, in Ready, instead of a reconcile that fails forever in the log.
            if e.status != 422:
                raise
            return cached, Blocker(CHILD_REJECTED, f"the apiserver refuses it: {e.message}")
        return live.get(watch) or cached, None

    def sync_children(
        self, owner_uid: str, desired: Iterable[Mapping[str, Any]]
    ) -> dict[Ident, dict[str, Any]]:
        """Applies every desired child and deletes the owner's children that are no longer
        desired. A child that still holds what was last applied (its hash, its generation,
        its content) is skipped.
        Raises ChildConflictError for a name taken by another owner's object."""
        owned = self.cache.owned(owner_uid)
        live: dict[Ident, dict[str, Any]] = {}
        for manifest in desired:
            m = dict(manifest)
            meta = dict(m["metadata"])
            digest = manifest_hash(m)
            meta["annotations"] = {**meta.get("annotations", {}), HASH_ANNOTATION: digest}
            m["metadata"] = meta
            key = ident(m)
            cached = owned.get(key)
            if cached is not None and self._unchanged(cached, digest):
                live[key] = cached
                continue
            result = apply_owned(m, live=cached)
            if contains(result, m):
                self.cache.note_applied(result, m)
            else:
                # The server keeps a field in a form of its own even after the repair:
                # drift is judged against that form, or every event would look like drift.
                log.warning("%s %s/%s is stored unlike its manifest", key[0], key[1], key[2])
                self.cache.note_applied(result, projection(result, m))
            # Not every kind is watched (Secrets are not: no cluster-wide list/watch on
            # Secrets), so the cache learns what was applied from the answer, unless the
            # watch already brought something newer (then that is what the status reads).
            self.cache.put_child(result, deleted=False, from_write=True)
            live[key] = self.cache.child(owner_uid, *key) or result
        for key, obj in owned.items():
            if key not in live:
                api_version, kind = key[0].rsplit("/", 1)
                log.info("deleting %s %s/%s: no longer desired", kind, key[1], key[2])
                client.delete_object(api_version, kind, key[2], key[1], uid=obj["metadata"]["uid"])
                self.cache.put_child(obj, deleted=True)
        return live

    def _unchanged(self, cached: Mapping[str, Any], digest: str) -> bool:
        if cached.get("kind") in UNWATCHED_KINDS:
            return False  # no watch tells us when it is deleted or edited: always apply
        meta = cached.get("metadata") or {}
        if (meta.get("annotations") or {}).get(HASH_ANNOTATION) != digest:
            return False
        return self.cache.holds_applied(cached)

    def delete_children(self, owner_uid: str) -> int:
        n = 0
        for key, obj in self.cache.owned(owner_uid).items():
            api_version, kind = key[0].rsplit("/", 1)
            if client.delete_object(api_version, kind, key[2], key[1], uid=obj["metadata"]["uid"]):
                n += 1
            self.cache.put_child(obj, deleted=True)
        return n


def patch_status_if_changed(body: Mapping[str, Any], kind: Kind, status: dict[str, Any]) -> None:
    if not status_changed(body.get("status"), status):
        return
    meta = body["metadata"]
    try:
        client.patch_status(body["apiVersion"], kind.name, meta["name"], meta["namespace"], status)
    except client.ApiError as e:
        if not e.not_found:
            raise
