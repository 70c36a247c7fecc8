"""What the three kind controllers share, below them: the cache, the queue, the scaler,
and the apply step (children by server-side apply and pruning, the status patch, and the
Events they post)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from celery_operator.api.conditions import CHILD_CONFLICT, CHILD_REJECTED, Blocker
from celery_operator.api.kinds import Kind, child_kinds
from celery_operator.api.labels import HASH_ANNOTATION
from celery_operator.controllers.cache import Cache, Ident, ident
from celery_operator.controllers.events import (
    EventMemory,
    child_event,
    classify_apply,
    conditions_of,
    deleted_event,
    problem_event,
    rollout_done,
    rollout_finished_event,
    status_events,
    template_digest,
)
from celery_operator.controllers.runtime import WorkQueue
from celery_operator.controllers.secretwatch import SecretWatch
from celery_operator.k8s import client
from celery_operator.k8s.children import (
    ChildConflictError,
    apply_new,
    apply_owned,
    delete_owned,
)
from celery_operator.k8s.events import Event, NullRecorder, Recorder
from celery_operator.k8s.objects import compact, compare_resource_versions, contains, projection
from celery_operator.scaling.monitor import Monitors
from celery_operator.scaling.scaler import BuiltinScaler
from celery_operator.status import minor_change, now_iso, status_changed

log = logging.getLogger("celery_operator")

# Status roll-ups wait this long for more changes, so a burst makes one write.
ROLLUP_DELAY = 0.25
# ... and for the status of the pools and Flowers being reconciled with it, at most this.
ROLLUP_CAP = 5.0
# A child's events (a Deployment's controller writes its status several times as it
# starts a rollout) wait this long, so they make one status pass.
CHILD_STATUS_DELAY = 1.0
# A status change that moves no condition (counts, messages) waits until this long after
# the object's last status write: at most one such write per object per window, however
# many replicas come and go. A condition that changes status or reason is written at once.
MINOR_STATUS_DELAY = 3.0
# A pool's workers changed load (or pods came and went): one look per pool per second
# however many changed, so deletion-cost writes are batched.
WORKERS_DELAY = 1.0
# Child kinds no watch tells about (Secrets): always applied, never skipped by hash.
UNWATCHED_KINDS = frozenset(c.resource.kind for c in child_kinds() if not c.watched)


def manifest_hash(manifest: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


def moved(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> bool:
    """Whether a child is new or another version than it was before the pass applied."""
    if after is None:
        return False
    if before is None:
        return True
    return bool(
        before["metadata"].get("resourceVersion") != after["metadata"].get("resourceVersion")
    )


@dataclass
class Context:
    cache: Cache
    queue: WorkQueue
    scaler: BuiltinScaler | None = None
    monitors: Monitors | None = None
    keda: client.ServedCheck | None = None
    events: Recorder = field(default_factory=NullRecorder)
    memory: EventMemory = field(default_factory=EventMemory)
    observe_seconds: float | None = None  # every pool measured for the metrics this often
    # The Secrets the objects name, polled (the operator may not watch Secrets).
    secrets: SecretWatch = field(default_factory=SecretWatch)

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
    def record(self, ev: Event | None) -> None:
        """Posts an Event (in the background; never fails the reconcile)."""
        if ev is not None:
            self.events.record(ev)

    def apply_children(
        self,
        owner: Mapping[str, Any],
        desired: Iterable[Mapping[str, Any]] | None,
        watch: Ident,
        keep: Iterable[Ident] = (),
    ) -> tuple[dict[str, Any] | None, Blocker | None]:
        """Applies the desired children (None: changes none), and deletes the others but
        those named in `keep`. Returns the child `watch` as it is now (the status follows
        it) and the ChildConflict or ChildRejected that stopped the apply, if one did."""
        cached = self.cache.child(owner["metadata"]["uid"], *watch)
        if desired is None:
            return cached, None
        try:
            live = self.sync_children(owner, desired, keep)
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
        self,
        owner: Mapping[str, Any],
        desired: Iterable[Mapping[str, Any]],
        keep: Iterable[Ident] = (),
    ) -> dict[Ident, dict[str, Any]]:
        """Applies every desired child and deletes the owner's children that are no longer
        desired (but those in `keep`: not rebuilt now, yet still wanted). A child that
        still holds what was last applied (its hash, its generation, its content) is
        skipped.
        Raises ChildConflictError for a name taken by another owner's object."""
        owner_uid = owner["metadata"]["uid"]
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
            before = cached
            if cached is None:  # not read first: the apply tells whether the name is taken
                created = owner["metadata"].get("creationTimestamp")
                result, before = apply_new(m, created)
            else:
                result = apply_owned(m, live=before, known=True)
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
            self._tell_applied(owner, m, before, result, digest)
            live[key] = self.cache.child(owner_uid, *key) or result
        kept = set(keep)
        for key, obj in owned.items():
            if key not in live and key not in kept:
                api_version, kind = key[0].rsplit("/", 1)
                log.info("deleting %s %s/%s: no longer desired", kind, key[1], key[2])
                client.delete_object(api_version, kind, key[2], key[1], uid=obj["metadata"]["uid"])
                self.cache.put_child(obj, deleted=True)
                self._tell_deleted(owner, key, obj, "no longer desired")
        return live

    def _unchanged(self, cached: Mapping[str, Any], digest: str) -> bool:
        if cached.get("kind") in UNWATCHED_KINDS:
            return False  # no watch tells us when it is deleted or edited: always apply
        meta = cached.get("metadata") or {}
        if (meta.get("annotations") or {}).get(HASH_ANNOTATION) != digest:
            return False
        return self.cache.holds_applied(cached)

    def _tell_applied(
        self,
        owner: Mapping[str, Any],
        manifest: Mapping[str, Any],
        before: Mapping[str, Any] | None,
        result: Mapping[str, Any],
        digest: str,
    ) -> None:
        """The Event of one applied child, if the apply changed something."""
        owner_uid = owner["metadata"]["uid"]
        key = (owner_uid, ident(result))
        applied_before = self.memory.applied.get(key) is not None
        self.memory.applied.set(key, True)
        template = template_digest(manifest)
        template_changed = False
        if template is not None:
            uid = str(result["metadata"].get("uid", ""))
            known = self.memory.templates.get(uid)
            if known is not None:
                template_changed = known != template
            elif before is not None:
                # Not applied by this process (a restart): the generation moved, and not
                # for replicas the operator sets, so for the template.
                wanted = (manifest.get("spec") or {}).get("replicas")
                template_changed = (
                    wanted is None or (before.get("spec") or {}).get("replicas") == wanted
                )
            self.memory.templates.set(uid, template)
        change = classify_apply(
            before, result, digest, applied_before=applied_before, template_changed=template_changed
        )
        if change is None:
            return
        if result.get("kind") == "Deployment" and change in ("created", "recreated", "rollout"):
            generation = int(result["metadata"].get("generation", 0))
            self.memory.rollouts.set((owner_uid, result["metadata"]["name"]), generation)
        self.record(child_event(owner, change, result))

    def _tell_deleted(
        self, owner: Mapping[str, Any], key: Ident, obj: Mapping[str, Any], why: str
    ) -> None:
        owner_uid = owner["metadata"]["uid"]
        self.memory.applied.pop((owner_uid, key))
        api_version, kind = key[0].rsplit("/", 1)
        if kind == "Deployment":
            self.memory.rollouts.pop((owner_uid, key[2]))
        self.record(deleted_event(owner, {**obj, "apiVersion": api_version, "kind": kind}, why))

    def delete_children(self, owner: Mapping[str, Any], why: str) -> int:
        n = 0
        for key, obj in self.cache.owned(owner["metadata"]["uid"]).items():
            api_version, kind = key[0].rsplit("/", 1)
            if client.delete_object(api_version, kind, key[2], key[1], uid=obj["metadata"]["uid"]):
                n += 1
                self._tell_deleted(owner, key, obj, why)
            self.cache.put_child(obj, deleted=True)
        return n

    def delete_secrets(self, owner: Mapping[str, Any], names: Iterable[str], why: str) -> int:
        """Deletes the owner's Secrets by name (they are not watched, so maybe not cached)."""
        meta = owner["metadata"]
        n = 0
        for name in names:
            if delete_owned("v1", "Secret", name, meta["namespace"], meta["uid"]):
                n += 1
                secret = {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": name, "namespace": meta["namespace"]},
                }
                self._tell_deleted(owner, ident(secret), secret, why)
        return n

    def follow_rollout(
        self, owner: Mapping[str, Any], deployment: Mapping[str, Any] | None
    ) -> None:
        """RolloutFinished, once a rollout this process started is complete."""
        if deployment is None:
            return
        key = (owner["metadata"]["uid"], deployment["metadata"]["name"])
        generation = self.memory.rollouts.get(key)
        if generation is None:
            return
        done = rollout_done(deployment, generation)
        if done is None:
            return
        self.memory.rollouts.pop(key)
        if done:  # a failed one says RolloutFailed through Ready
            self.record(rollout_finished_event(owner, {"kind": "Deployment", **deployment}))

    def tell_problem(self, owner: Mapping[str, Any], what: str, problem: Blocker | None) -> None:
        """A Warning when a component's pods cannot run, once per reason."""
        key = (owner["metadata"]["uid"], what)
        self.record(problem_event(owner, what, self.memory.problems.get(key) or "", problem))
        self.memory.problems.set(key, "" if problem is None else problem.reason)

    def fresh(self, body: dict[str, Any] | None) -> dict[str, Any] | None:
        """The cached body, with the status this process last wrote when the watch has not
        brought that write back yet: a status pass that runs before the echo neither writes
        the same status again nor restarts a condition's lastTransitionTime."""
        if body is None:
            return None
        meta = body["metadata"]
        written = self.memory.statuses.get(str(meta.get("uid", "")))
        if written is None:
            return body
        version, status = written
        if compare_resource_versions(version, str(meta.get("resourceVersion", ""))) != 1:
            # The watch brought the write back (or something newer): forget it, so that
            # only writes in flight are held (unless another write replaced it meanwhile).
            self.memory.statuses.discard(str(meta.get("uid", "")), written)
            return body
        return {**body, "status": status}

    def write_status(
        self,
        body: Mapping[str, Any],
        kind: Kind,
        status: dict[str, Any],
        *,
        settle: bool = False,
    ) -> None:
        """Patches the status if it changed, and posts what changed in its conditions.
        `body`: as `fresh` gives it. `settle`: the pass just wrote the child the status
        follows, whose controller answers within moments: the status waits for that
        (CHILD_STATUS_DELAY), so that its first state is written once, not twice."""
        old = body.get("status")
        if not status_changed(old, status):
            return
        meta = body["metadata"]
        uid = str(meta["uid"])
        item, key = f"{kind.task}-status", (meta["namespace"], meta["name"])
        if settle:
            self.queue.add_soon(item, key, CHILD_STATUS_DELAY)
            return
        last = self.memory.status_times.get(uid)
        if last is not None and minor_change(old, status):
            wait = last + MINOR_STATUS_DELAY - time.monotonic()
            if wait > 0:
                # A timer of its own (not add_soon's shared one): a change that cannot
                # wait, arriving meanwhile, still gets its pass at once.
                self.queue.add(item, key, wait)
                return
        try:
            answer = client.patch_status(
                body["apiVersion"], kind.name, meta["name"], meta["namespace"], status
            )
        except client.ApiError as e:
            if not e.not_found:
                raise
            return  # the object is gone
        version = str((answer.get("metadata") or {}).get("resourceVersion", ""))
        self.memory.statuses.set(uid, (version, compact(answer.get("status") or {})))
        self.memory.status_times.set(uid, time.monotonic())
        for ev in status_events(body, conditions_of(body.get("status")), conditions_of(status)):
            self.record(ev)
