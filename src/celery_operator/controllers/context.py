"""What every reconcile shares: the cache, the queue, and applying a set of children."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from celery_operator.controllers.runtime import Cache, WorkQueue
from celery_operator.k8s import client
from celery_operator.k8s.children import ChildConflictError, apply_owned
from celery_operator.scaling.scaler import BuiltinScaler
from celery_operator.status import status_changed

log = logging.getLogger("celery_operator")

HASH_ANNOTATION = "celeryproject.org/applied-hash"
# Children whose kind is not watched (no cluster-wide list/watch on Secrets).
UNWATCHED_KINDS = frozenset({"Secret"})
Ident = tuple[str, str, str]  # ("apiVersion/kind", namespace, name)


def ident(obj: Mapping[str, Any]) -> Ident:
    meta = obj["metadata"]
    return (f"{obj['apiVersion']}/{obj['kind']}", meta.get("namespace", ""), meta["name"])


def manifest_hash(manifest: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Context:
    cache: Cache
    queue: WorkQueue
    scaler: BuiltinScaler | None = None
    # Pools whose (unwatched) Secrets were looked for since this process started.
    secrets_checked: set[str] = field(default_factory=set)
    _keda: client.ServedCheck = field(default_factory=client.keda_check)

    def keda_installed(self) -> bool:
        try:
            return self._keda()
        except client.ApiError:
            return self._keda.last  # the apiserver did not answer: the last answer holds

    def sync_children(
        self, owner_uid: str, desired: Iterable[Mapping[str, Any]]
    ) -> dict[Ident, dict[str, Any]]:
        """Applies every desired child and deletes the owner's children that are no longer
        desired. A child whose hash and generation show it is as last applied is skipped.
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
            self.cache.note_applied(result)
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
        ours = self.cache.applied_generation.get(meta.get("uid", ""))
        return ours is not None and int(meta.get("generation", 0)) == ours

    def delete_children(self, owner_uid: str) -> int:
        n = 0
        for key, obj in self.cache.owned(owner_uid).items():
            api_version, kind = key[0].rsplit("/", 1)
            if client.delete_object(api_version, kind, key[2], key[1], uid=obj["metadata"]["uid"]):
                n += 1
            self.cache.put_child(obj, deleted=True)
        return n


def patch_status_if_changed(body: Mapping[str, Any], kind: str, status: dict[str, Any]) -> None:
    if not status_changed(body.get("status"), status):
        return
    meta = body["metadata"]
    try:
        client.patch_status(body["apiVersion"], kind, meta["name"], meta["namespace"], status)
    except client.ApiError as e:
        if not e.not_found:
            raise


def kept_block(old: Mapping[str, Any] | None, generation: object) -> tuple[str, str] | None:
    """A status-only pass applies nothing, so it cannot see a name conflict: it keeps the
    ChildConflict that the last full reconcile of this generation reported, instead of
    reporting Ready from the children that did get created."""
    for c in (old or {}).get("conditions") or []:
        if (
            c.get("type") == "Ready"
            and c.get("reason") == "ChildConflict"
            and c.get("observedGeneration") == generation
        ):
            return ("ChildConflict", str(c.get("message", "")))
    return None


__all__ = ["ChildConflictError", "Context", "kept_block", "patch_status_if_changed"]
