"""The operator's cache: the latest body of every watched object. Fed only by watch
events (and by the answers to the operator's own writes, see `put_child`).

Kind-agnostic: one table per kind of `api.kinds` (and Namespaces), indexed by the app a
body names for every kind that declares one (`Kind.app_of`); children by the uid of their
controller; pods only when they cannot run.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from celery_operator.api.conditions import Blocker
from celery_operator.api.kinds import KINDS, NAMESPACE, Key
from celery_operator.k8s.objects import compare_resource_versions, contains, controller_uid, slim
from celery_operator.plans.workers import PodView

MAX_TOMBSTONES = 10_000
Ident = tuple[str, str, str]  # ("apiVersion/kind", namespace, name)
PodOwner = tuple[str, str, str]  # (namespace, pod component, owner name)


def ident(obj: Mapping[str, Any]) -> Ident:
    meta = obj["metadata"]
    # Interned: the key of every child the cache holds (one "apps/v1/Deployment" for all).
    return (
        sys.intern(f"{obj['apiVersion']}/{obj['kind']}"),
        meta.get("namespace", ""),
        meta["name"],
    )


@dataclass(frozen=True)
class Applied:
    """A child as the operator last applied it: its generation after the apply, and the
    manifest (trimmed like the cache's copy) whose fields the live object must still hold."""

    generation: int
    desired: Mapping[str, Any]

    def holds(self, live: Mapping[str, Any]) -> bool:
        """Nobody changed what the operator applied: the generation (the pod template,
        which the cache does not keep) and the content (Services and HPAs have no
        generation that moves)."""
        gen = int((live.get("metadata") or {}).get("generation", 0))
        return gen <= self.generation and contains(live, self.desired)


class Cache:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.tables: dict[str, dict[Key, dict[str, Any]]] = {
            **{k.name: {} for k in KINDS},
            NAMESPACE.kind: {},
        }
        # The declared indexes: kind -> the app a body names.
        self._app_of: dict[str, Callable[[Mapping[str, Any]], Key]] = {
            k.name: k.app_of for k in KINDS if k.app_of is not None
        }
        self.by_app: dict[str, dict[Key, set[Key]]] = {kind: {} for kind in self._app_of}
        # Children by the uid of their controller, then by ident.
        self.children: dict[str, dict[Ident, dict[str, Any]]] = {}
        # Each child as the operator last applied it, by uid (drift detection).
        self.applied: dict[str, Applied] = {}
        # Uids of children seen deleted (the newest MAX_TOMBSTONES), see put_child.
        self._gone: dict[str, None] = {}
        # Pods that cannot run: pod name -> problem. A healthy pod costs nothing here.
        self.pod_problems: dict[PodOwner, dict[str, Blocker]] = {}
        # Worker pods by pool, as much as busy-worker protection needs of them.
        self.worker_pods: dict[Key, dict[str, PodView]] = {}

    # ---- the kinds' tables -------------------------------------------------------------
    def get(self, kind: str, key: Key) -> dict[str, Any] | None:
        with self.lock:
            return self.tables[kind].get(key)

    def keys(self, kind: str) -> list[Key]:
        with self.lock:
            return list(self.tables[kind])

    def items(self, kind: str) -> list[tuple[Key, dict[str, Any]]]:
        with self.lock:
            return list(self.tables[kind].items())

    def put(self, kind: str, key: Key, body: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """Stores (or with None, removes) a body; returns the previous one."""
        with self.lock:
            store = self.tables[kind]
            old = store.get(key)
            new = None if body is None else slim(body)
            if new is None:
                store.pop(key, None)
            else:
                store[key] = new
            app_of = self._app_of.get(kind)
            if app_of is not None:
                index = self.by_app[kind]
                if old is not None:
                    members = index.get(app_of(old), set())
                    members.discard(key)
                    if not members:
                        index.pop(app_of(old), None)
                if new is not None:
                    index.setdefault(app_of(new), set()).add(key)
            return old

    def keys_of_app(self, kind: str, app: Key) -> list[Key]:
        """Keys of the objects of `kind` that name `app`, sorted."""
        with self.lock:
            return sorted(self.by_app[kind].get(app, ()))

    def of_app(self, kind: str, app: Key) -> list[dict[str, Any]]:
        with self.lock:
            store = self.tables[kind]
            return [store[k] for k in self.keys_of_app(kind, app)]

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        body = self.get(NAMESPACE.kind, ("", namespace))
        return dict(((body or {}).get("metadata") or {}).get("labels") or {})

    # ---- pods --------------------------------------------------------------------------
    def set_pod_problem(self, owner: PodOwner, pod: str, problem: Blocker | None) -> bool:
        """Records (or clears) a pod's problem; True when that changes what is recorded."""
        with self.lock:
            pods = self.pod_problems.get(owner, {})
            if pods.get(pod) == problem:
                return False
            if problem is None:
                pods.pop(pod, None)
            else:
                pods[pod] = problem
            if pods:
                self.pod_problems[owner] = pods
            else:
                self.pod_problems.pop(owner, None)
            return True

    def pod_problem(self, owner: PodOwner) -> Blocker | None:
        """The problem of the owner's first pod (by name) that cannot run, if any."""
        with self.lock:
            pods = self.pod_problems.get(owner)
            return pods[min(pods)] if pods else None

    def set_worker_pod(self, pool: Key, name: str, view: PodView | None) -> bool:
        """Records (or with None, forgets) a worker pod. True when the pool should look
        again: a pod came or went, became (un)ready or started to go. The operator's own
        annotations are recorded without that."""
        with self.lock:
            pods = self.worker_pods.setdefault(pool, {})
            old = pods.get(name)
            if view is None:
                pods.pop(name, None)
                if not pods:
                    self.worker_pods.pop(pool, None)
                return old is not None
            pods[name] = view
            return old is None or (old.ready, old.deleting) != (view.ready, view.deleting)

    def worker_pods_of(self, pool: Key) -> tuple[PodView, ...]:
        with self.lock:
            return tuple(sorted(self.worker_pods.get(pool, {}).values(), key=lambda p: p.name))

    # ---- children ----------------------------------------------------------------------
    def owned(self, owner_uid: str) -> dict[Ident, dict[str, Any]]:
        with self.lock:
            return dict(self.children.get(owner_uid, {}))

    def child(self, owner_uid: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            return self.children.get(owner_uid, {}).get((kind, namespace, name))

    def cached(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """The cached version of this child (same controller, kind, namespace and name)."""
        owner = controller_uid(body)
        return None if owner is None else self.child(owner, *ident(body))

    def put_child(
        self, body: Mapping[str, Any], deleted: bool, *, from_write: bool = False
    ) -> tuple[str | None, bool]:
        """Records a child. Returns (controller uid, whether someone else changed its spec).

        `from_write`: the body is the answer to the operator's own write, which can arrive
        after the watch already brought a newer version (a Deployment's first status) or
        its deletion; the cache never goes back to it then."""
        meta = body.get("metadata") or {}
        owner = controller_uid(body)
        if owner is None:
            return None, False
        key = ident(body)
        with self.lock:
            owned = self.children.setdefault(owner, {})
            uid = meta.get("uid", "")
            if deleted:
                owned.pop(key, None)
                if not owned:
                    self.children.pop(owner, None)
                self.applied.pop(uid, None)
                self._gone[uid] = None
                while len(self._gone) > MAX_TOMBSTONES:
                    del self._gone[next(iter(self._gone))]
                return owner, False
            current = owned.get(key)
            if from_write and (
                uid in self._gone
                or (
                    current is not None
                    and current["metadata"].get("uid") == uid
                    and compare_resource_versions(
                        current["metadata"].get("resourceVersion", ""),
                        meta.get("resourceVersion", ""),
                    )
                    == 1
                )
            ):
                if not owned:
                    self.children.pop(owner, None)
                return owner, False
            if (
                current is not None
                and current["metadata"].get("uid") == uid
                and current["metadata"].get("resourceVersion") == meta.get("resourceVersion")
            ):
                return owner, False  # the echo of our own write: already kept as it is
            ours = self.applied.get(uid)
            # What the child holds as applied is shared with the manifest, not kept twice.
            kept = owned[key] = slim(body, child=True, like=ours and ours.desired)
            return owner, ours is not None and not ours.holds(kept)

    def note_applied(self, live: Mapping[str, Any], desired: Mapping[str, Any]) -> None:
        """The operator applied `desired`; `live` is the server's answer."""
        meta = live.get("metadata") or {}
        uid = meta.get("uid", "")
        with self.lock:
            before = self.applied.get(uid)
            kept = slim(desired, child=True, like=before and before.desired)
            self.applied[uid] = Applied(int(meta.get("generation", 0)), kept)

    def holds_applied(self, child: Mapping[str, Any]) -> bool:
        """The cached child is as the operator last applied it (False: never applied by
        this process, or changed since)."""
        with self.lock:
            ours = self.applied.get((child.get("metadata") or {}).get("uid", ""))
        return ours is not None and ours.holds(child)
