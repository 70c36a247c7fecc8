"""Which Events a reconcile posts: decided in the apply step, from what the plan did and
what the operator had cached (the plans stay pure and know nothing of Events).

- A child applied: compared with the object as it was before (cached, or read) and with
  what this process applied last: Created, Updated, DriftRepaired (deleted or edited by
  someone else), RolloutStarted (a Deployment's pod template changed), SecretMirrored (a
  pool's copy of its app's connection Secret, or of one of its image pull Secrets, in a
  team namespace). A child applied again that the server left as it was (a resync, a
  restart) posts nothing.
- A child deleted: Deleted, with why.
- The worker Deployment's replicas changed: Scaled (from, to, why); a drain of busy
  workers: DrainStarted, DrainTimedOut, DrainAbandoned.
- A status written: what changed in its conditions (`status_events`): a Ready that turns
  False for a blocking reason or a pod that cannot run (a Warning of that reason), Bound,
  BrokerUnreachable / BrokerReachable, Paused / Resumed, ComponentsUnavailable. A pass that
  leaves a condition's reason as it was posts nothing.
- A rollout the operator started that completed: RolloutFinished.

The functions here are pure (tests call them with bodies); `EventMemory` is what the
decisions remember between reconciles.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Generic, Literal, TypeVar

from celery_operator.api.conditions import (
    ACCEPTED,
    AUTOSCALER_FAILING,
    BROKER_UNREACHABLE,
    COMPLETE,
    CREATING,
    DEGRADED,
    DRAINING,
    LOAD_OBSERVED,
    PAUSED,
    POD_PROBLEM_REASONS,
    PULL_SECRET_UNREADABLE,
    READY,
    RECONCILING,
    ROLLING_OUT,
    ROLLOUT_FAILED,
    SCALING_ACTIVE,
    Blocker,
)
from celery_operator.api.events import (
    BLOCKING_REASONS,
    BOUND,
    BROKER_REACHABLE,
    COMPONENTS_UNAVAILABLE,
    CREATED,
    DELETED,
    DRAIN_ABANDONED,
    DRAIN_STARTED,
    DRAIN_TIMED_OUT,
    DRIFT_REPAIRED,
    RESUMED,
    ROLLOUT_FINISHED,
    ROLLOUT_STARTED,
    SCALED,
    SECRET_MIRRORED,
    UPDATED,
)
from celery_operator.api.events import PAUSED as PAUSED_EVENT
from celery_operator.api.kinds import POOL, pool_app_key
from celery_operator.api.labels import HASH_ANNOTATION, MIRROR_OF_ANNOTATION
from celery_operator.k8s.events import Event, event
from celery_operator.plans.workers import WorkerPlan
from celery_operator.render.common import connection_secret_name
from celery_operator.status import rollout_of

Body = Mapping[str, Any]
Change = Literal["created", "recreated", "repaired", "updated", "rollout"]

# Ready=False reasons worth a Warning: nothing could be applied, a rollout failed, a pod
# cannot run, or a pull Secret cannot be mirrored. (Creating and Progressing are the
# ordinary way to Ready.)
WARN_READY = frozenset(
    (*BLOCKING_REASONS, ROLLOUT_FAILED, *POD_PROBLEM_REASONS, PULL_SECRET_UNREADABLE)
)
# Reconciling reasons of normal operation: leaving Paused for one of these is Resumed.
RUNNING = frozenset((CREATING, ROLLING_OUT, COMPLETE, DRAINING, ROLLOUT_FAILED))


def sentence(text: str) -> str:
    """A condition's message as an Event's note: capitalised, unless it starts with a
    field path or a name ("spec.queues: ...", "shop/shop ...")."""
    text = text.strip()
    first = text.split(" ", 1)[0].rstrip(":;,")
    if not text or any(c in first for c in "./"):
        return text
    return text[:1].upper() + text[1:]


def named(obj: Body) -> str:
    """ "Deployment shop-emails"."""
    return f"{obj.get('kind', '?')} {(obj.get('metadata') or {}).get('name', '?')}"


def template_digest(manifest: Body) -> str | None:
    """A hash of a Deployment's pod template as rendered (None: not a Deployment)."""
    if manifest.get("kind") != "Deployment":
        return None
    template = (manifest.get("spec") or {}).get("template")
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def _moved(before: Body, after: Body) -> bool:
    """Did the apply change the object on the server? Its generation where it has one that
    moves (Services and Secrets have none), else its resourceVersion."""
    b, a = before.get("metadata") or {}, after.get("metadata") or {}
    if b.get("generation") and a.get("generation"):
        return bool(b["generation"] != a["generation"])
    return bool(b.get("resourceVersion") != a.get("resourceVersion"))


def classify_apply(
    before: Body | None,
    after: Body,
    digest: str,
    *,
    applied_before: bool,
    template_changed: bool,
) -> Change | None:
    """What applying a child did. `before`: the object before the apply (None: absent);
    `digest`: the applied-hash of what was applied; `applied_before`: this process applied
    it earlier (so, absent now, someone deleted it); `template_changed`: a Deployment's pod
    template differs from the last one applied. None: nothing worth telling (the server
    kept the object as it was; or only a Deployment's replicas moved, which the pool tells
    as Scaled)."""
    if before is None:
        return "recreated" if applied_before else "created"
    if (before.get("metadata") or {}).get("uid") != (after.get("metadata") or {}).get("uid"):
        return "recreated"  # an unwatched child (a Secret) deleted since it was cached
    if not _moved(before, after):
        return None
    if (before.get("metadata", {}).get("annotations") or {}).get(HASH_ANNOTATION) == digest:
        return "repaired"  # what the operator applies is unchanged: someone else changed it
    if after.get("kind") == "Deployment":
        if template_changed:
            return "rollout"
        if _replicas(before) != _replicas(after):
            return None
    return "updated"


def _replicas(obj: Body) -> Any:
    return (obj.get("spec") or {}).get("replicas")


def mirrored(owner: Body, child: Body) -> str | None:
    """What a pool's Secret copies, when it is one of its mirrors (in the pool's
    namespace): "the connection Secret", or "the image pull Secret <namespace>/<name>"."""
    if owner.get("kind") != POOL.name or child.get("kind") != "Secret":
        return None
    meta = child.get("metadata") or {}
    source = (meta.get("annotations") or {}).get(MIRROR_OF_ANNOTATION)
    if source:
        return f"the image pull Secret {source}"
    name = connection_secret_name(pool_app_key(owner)[1], owner["metadata"]["name"])
    return "the connection Secret" if meta.get("name") == name else None


def child_event(owner: Body, change: Change, child: Body) -> Event:
    what = named(child)
    source = mirrored(owner, child)
    if source is not None:
        app_ns, app_name = pool_app_key(owner)
        ns = child["metadata"].get("namespace", "")
        if change == "created":
            note = (
                f"Mirrored {source} of CeleryApp {app_ns}/{app_name} into "
                f"namespace {ns} as Secret {child['metadata']['name']}"
            )
            return event(owner, SECRET_MIRRORED, note, child)
        if change == "updated":
            changed = (
                f"the connection of CeleryApp {app_ns}/{app_name}"
                if source == "the connection Secret"
                else f"{source} of CeleryApp {app_ns}/{app_name}"
            )
            note = f"Updated the mirrored {what}: {changed} changed"
            return event(owner, SECRET_MIRRORED, note, child)
    if change == "created":
        return event(owner, CREATED, f"Created {what}", child)
    if change == "recreated":
        return event(
            owner, DRIFT_REPAIRED, f"Recreated {what}: it was deleted by someone else", child
        )
    if change == "repaired":
        return event(
            owner, DRIFT_REPAIRED, f"Restored {what}: it was changed by someone else", child
        )
    if change == "rollout":
        gen = (child.get("metadata") or {}).get("generation")
        return event(
            owner,
            ROLLOUT_STARTED,
            f"Rolling out a new pod template of {what} (generation {gen})",
            child,
        )
    return event(owner, UPDATED, f"Updated {what}", child)


def deleted_event(owner: Body, child: Body, why: str) -> Event:
    return event(owner, DELETED, f"Deleted {named(child)}: {why}", child)


def rollout_finished_event(owner: Body, deployment: Body) -> Event:
    r = rollout_of(deployment)
    return event(
        owner,
        ROLLOUT_FINISHED,
        f"Rolled out {named(deployment)}: {r.updated}/{r.desired} replicas on the new pod "
        f"template, {r.ready} ready",
        deployment,
    )


# ---- the workers' scale ------------------------------------------------------------------
def scale_event(
    owner: Body,
    deployment: Body,
    before: int,
    after: int,
    *,
    autoscaler: Mapping[str, Any] | None,
    target_per_replica: int | None,
    workers: WorkerPlan | None,
) -> Event:
    """Scaled: from, to, and why (the spec, the built-in scaler's view, a drain)."""
    engine = (autoscaler or {}).get("engine")
    if engine == "builtin":
        a = autoscaler or {}
        waiting, running = a.get("queueLength"), a.get("activeTasks")
        why = f"the built-in scaler: {'?' if waiting is None else waiting} tasks waiting"
        why += f", {'?' if running is None else running} running"
        if target_per_replica:
            why += f", {target_per_replica} per replica"
    else:
        why = f"spec.replicas is {after}"
    if workers is not None and workers.draining and workers.outcome in ("completed", "timed_out"):
        done = "drained" if workers.outcome == "completed" else "drain timed out"
        why += f"; busy workers {done} first ({', '.join(workers.draining)})"
    direction = "up" if after > before else "down"
    return event(
        owner,
        SCALED,
        f"Scaled {direction} {named(deployment)} from {before} to {after} replicas ({why})",
        deployment,
    )


def drain_event(owner: Body, workers: WorkerPlan) -> Event | None:
    pods = ", ".join(workers.draining) or "-"
    if workers.outcome == "started":
        return event(owner, DRAIN_STARTED, sentence(workers.message) or f"Draining {pods}")
    if workers.outcome == "timed_out":
        return event(
            owner,
            DRAIN_TIMED_OUT,
            f"Busy workers still ran tasks at drainTimeoutSeconds ({pods}): scaling down anyway",
        )
    if workers.outcome == "abandoned":
        return event(
            owner,
            DRAIN_ABANDONED,
            f"The scale-down was called off: drained workers consume again ({', '.join(workers.resume)})",
        )
    return None


# ---- conditions ------------------------------------------------------------------------
Cond = tuple[str, str, str]  # (status, reason, message)


def conditions_of(status: Mapping[str, Any] | None) -> dict[str, Cond]:
    return {
        str(c.get("type")): (
            str(c.get("status")),
            str(c.get("reason", "")),
            str(c.get("message", "")),
        )
        for c in (status or {}).get("conditions") or []
    }


def status_events(owner: Body, old: Mapping[str, Cond], new: Mapping[str, Cond]) -> list[Event]:
    """What changed in the conditions, worth telling. `old`, `new`: `conditions_of`."""
    out: list[Event] = []
    acc_old, acc_new = old.get(ACCEPTED), new.get(ACCEPTED)
    if acc_new and acc_new[0] == "True" and (acc_old is None or acc_old[0] != "True"):
        out.append(event(owner, BOUND, sentence(acc_new[2])))
    r_old, r_new = old.get(READY), new.get(READY)
    if r_new and r_new[0] == "False" and r_new[1] in WARN_READY:
        same_reason = r_old is not None and r_old[:2] == r_new[:2]
        # A blocking reason whose message changed (another error in a new spec) is news;
        # a pod's message (its back-off, its restart count) is not.
        new_message = r_new[1] in BLOCKING_REASONS and r_old is not None and r_old[2] != r_new[2]
        if not same_reason or new_message:
            # Not accepted: Ready says only that no workers run; Accepted says why.
            why = acc_new if acc_new and acc_new[:2] == ("False", r_new[1]) else r_new
            out.append(event(owner, r_new[1], sentence(why[2])))
    for type_ in (SCALING_ACTIVE, LOAD_OBSERVED):
        o, n = old.get(type_), new.get(type_)
        if n and n[1] == BROKER_UNREACHABLE and (o is None or o[1] != BROKER_UNREACHABLE):
            out.append(event(owner, BROKER_UNREACHABLE, sentence(n[2])))
        elif n and o and o[1] == BROKER_UNREACHABLE and n[0] == "True":
            out.append(event(owner, BROKER_REACHABLE, sentence(n[2])))
    o, n = old.get(SCALING_ACTIVE), new.get(SCALING_ACTIVE)
    if n and n[1] == AUTOSCALER_FAILING and (o is None or o[1] != AUTOSCALER_FAILING):
        out.append(event(owner, AUTOSCALER_FAILING, sentence(n[2])))
    o, n = old.get(RECONCILING), new.get(RECONCILING)
    if n and n[1] == PAUSED and (o is None or o[1] != PAUSED):
        out.append(event(owner, PAUSED_EVENT, sentence(n[2])))
    elif n and o and o[1] == PAUSED and n[1] in RUNNING:
        out.append(
            event(owner, RESUMED, "The app is no longer paused: children follow the spec again")
        )
    o, n = old.get(DEGRADED), new.get(DEGRADED)
    if n and n[0] == "True" and n[1] == COMPONENTS_UNAVAILABLE and (o is None or o[0] != "True"):
        out.append(event(owner, COMPONENTS_UNAVAILABLE, sentence(n[2])))
    return out


def problem_event(owner: Body, what: str, old_reason: str, problem: Blocker | None) -> Event | None:
    """A pod of `what` (the app's beat) that cannot run, once per reason: the app's Ready
    only says "not ready: beat (...)" among its components."""
    if problem is None or problem.reason == old_reason:
        return None
    return event(owner, problem.reason, sentence(f"{what}: {problem.message}"))


# ---- memory ----------------------------------------------------------------------------
K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """A bounded, thread-safe map: the least recently set entries go first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            return self._items.get(key)

    def set(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def pop(self, key: K) -> V | None:
        with self._lock:
            return self._items.pop(key, None)

    def discard(self, key: K, value: V) -> None:
        """Removes the entry only while it is still `value` (not replaced meanwhile)."""
        with self._lock:
            if self._items.get(key) is value:
                del self._items[key]

    def __len__(self) -> int:
        return len(self._items)


Ident = tuple[str, str, str]


class EventMemory:
    """What the Event decisions remember between reconciles (lost on restart: then a child
    deleted meanwhile says Created, and a rollout in progress ends without
    RolloutFinished)."""

    def __init__(self, size: int = 50_000) -> None:
        # (owner uid, child ident) of each child this process applied.
        self.applied: Lru[tuple[str, Ident], bool] = Lru(size)
        # child uid -> the pod template last applied to it (Deployments).
        self.templates: Lru[str, str] = Lru(size)
        # (owner uid, Deployment name) -> the generation whose rollout was announced.
        self.rollouts: Lru[tuple[str, str], int] = Lru(size)
        # owner uid -> (resourceVersion, status) of this process's last status write: the
        # cache lags behind a write until the watch brings it back (Context.fresh).
        self.statuses: Lru[str, tuple[str, dict[str, Any]]] = Lru(size)
        # owner uid -> time.monotonic() of that write (MINOR_STATUS_DELAY).
        self.status_times: Lru[str, float] = Lru(size)
        # app uid -> time.monotonic() its roll-up started waiting for its components.
        self.rollup_waits: Lru[str, float] = Lru(size)
        # (owner uid, component) -> the reason its pods cannot run ("": they can).
        self.problems: Lru[tuple[str, str], str] = Lru(size)


def rollout_done(deployment: Body, generation: int) -> bool | None:
    """True: the rollout of `generation` is complete; False: it failed; None: going on."""
    r = rollout_of(deployment)
    observed = int(((deployment.get("status") or {}).get("observedGeneration")) or 0)
    if r.failed:
        return False
    if observed >= generation and r.complete:
        return True
    return None
