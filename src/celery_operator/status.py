"""Status and conditions (pure): from observed children to each kind's .status, and the
CeleryApp's roll-up of its pools, Flower and beat."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from celery_operator.api.conditions import (
    ACCEPTED,
    ALL_COMPONENTS_READY,
    AS_EXPECTED,
    AVAILABLE,
    COMPLETE,
    COMPONENTS_NOT_READY,
    COMPONENTS_UNAVAILABLE,
    CREATING,
    DEGRADED,
    DRAINING,
    FAILED_CREATE,
    INVALID_SPEC,
    LOAD_OBSERVED,
    PAUSED,
    POD_PROBLEM_REASONS,
    PROGRESSING,
    READY,
    RECONCILING,
    ROLLING_OUT,
    ROLLOUT_FAILED,
    SCALED_TO_ZERO,
    SCALING_ACTIVE,
    Blocker,
    Outcome,
)


class AppRef(NamedTuple):
    """The app a pool is bound to, as its status names it."""

    name: str
    namespace: str


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def condition(type_: str, status: bool | str, reason: str, message: str = "") -> dict[str, Any]:
    value = status if isinstance(status, str) else ("True" if status else "False")
    return {"type": type_, "status": value, "reason": reason, "message": message}


def merge_conditions(
    old: Iterable[Mapping[str, Any]] | None,
    new: Iterable[Mapping[str, Any]],
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """New conditions, keeping lastTransitionTime where a condition's status did not change."""
    previous = {c.get("type"): c for c in old or []}
    out = []
    for c in new:
        before = previous.get(c["type"])
        since = now
        if before is not None and before.get("status") == c["status"]:
            since = str(before.get("lastTransitionTime") or now)
        item = {**c, "lastTransitionTime": since}
        if generation is not None:
            item["observedGeneration"] = generation
        out.append(item)
    return out


def get_condition(status: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    for c in (status or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def is_true(status: Mapping[str, Any] | None, type_: str) -> bool:
    c = get_condition(status, type_)
    return c is not None and c.get("status") == "True"


# ---- Pods: why they do not run -----------------------------------------------------------
MAX_PROBLEM_MESSAGE = 600


def _clip(text: str, limit: int) -> str:
    """One line of at most `limit` characters: its start (what and why) and its end (a
    log's last words), the middle cut out."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    head = limit // 3
    return text[:head] + " ... " + text[-(limit - head - 5) :]


def pod_problem(pod: Mapping[str, Any]) -> Blocker | None:
    """(reason, message) when a pod cannot run, from its status; None when it can or may.

    CrashLoopBackOff carries the container's last exit: its code, reason and message (the
    tail of its log, with terminationMessagePolicy FallbackToLogsOnError)."""
    name = (pod.get("metadata") or {}).get("name", "?")
    st = pod.get("status") or {}
    statuses = [*(st.get("initContainerStatuses") or []), *(st.get("containerStatuses") or [])]
    for cs in statuses:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = str(waiting.get("reason") or "")
        if reason not in POD_PROBLEM_REASONS:
            continue
        msg = f"pod {name}: container {cs.get('name')}: {reason}"
        if waiting.get("message"):
            msg += f": {waiting['message']}"
        last = (cs.get("lastState") or {}).get("terminated")
        if last:
            msg += f"; last exit code {last.get('exitCode')} ({last.get('reason', '')})"
            if last.get("message"):
                msg += f": {_clip(str(last['message']), 400)}"
        return Blocker(reason, _clip(msg, MAX_PROBLEM_MESSAGE))
    for c in st.get("conditions") or []:
        unschedulable = c.get("status") == "False" and c.get("reason") == "Unschedulable"
        if c.get("type") == "PodScheduled" and unschedulable:
            return Blocker(
                "Unschedulable", _clip(f"pod {name}: {c.get('message', '')}", MAX_PROBLEM_MESSAGE)
            )
    return None


# ---- Deployments ----------------------------------------------------------------------
@dataclass(frozen=True)
class Rollout:
    """What a Deployment says about itself."""

    exists: bool
    desired: int = 0
    ready: int = 0
    updated: int = 0
    available: int = 0
    current: bool = False  # the controller has seen the latest spec
    failed: str = ""  # ProgressDeadlineExceeded message, if any
    # ReplicaFailure message, if any: the apiserver refuses the pods (a Pod Security level
    # that a user's sidecar does not meet, a ResourceQuota, a LimitRange ...).
    replica_failure: str = ""

    @property
    def complete(self) -> bool:
        return self.current and self.settled

    @property
    def settled(self) -> bool:
        """Complete as far as its controller last observed it."""
        return (
            self.exists
            and self.updated >= self.desired
            and self.ready >= self.desired
            and self.available >= self.desired
        )

    @property
    def ready_enough(self) -> bool:
        """Ready, for the status: complete, or settled with a generation its controller has
        not observed yet. That lasts milliseconds after any write to the Deployment (its own
        annotations move its generation too), and its status tells nothing new meanwhile:
        Ready does not flip for it. A new template shows as Progressing once observed.
        (Rollout Events wait for `complete`.)"""
        return self.complete or (not self.current and self.settled and not self.failed)


def rollout_of(deployment: Mapping[str, Any] | None) -> Rollout:
    if deployment is None:
        return Rollout(exists=False)
    spec = deployment.get("spec") or {}
    st = deployment.get("status") or {}
    gen = (deployment.get("metadata") or {}).get("generation", 0)
    failed = replica_failure = ""
    for c in st.get("conditions") or []:
        if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
            failed = str(c.get("message", ""))
        if c.get("type") == "ReplicaFailure" and c.get("status") == "True":
            replica_failure = str(c.get("message", ""))
    return Rollout(
        exists=True,
        desired=int(spec.get("replicas", 1)),
        ready=int(st.get("readyReplicas", 0)),
        updated=int(st.get("updatedReplicas", 0)),
        available=int(st.get("availableReplicas", 0)),
        current=int(st.get("observedGeneration", 0)) >= int(gen),
        failed=failed,
        replica_failure=replica_failure,
    )


def _rollout_conditions(
    what: str, r: Rollout, problem: Blocker | None = None
) -> list[dict[str, Any]]:
    if not r.exists:
        return [
            condition(READY, False, CREATING, f"the {what} Deployment does not exist yet"),
            condition(RECONCILING, True, CREATING, f"creating the {what} Deployment"),
        ]
    if r.failed:
        return [
            condition(READY, False, ROLLOUT_FAILED, r.failed),
            condition(RECONCILING, False, ROLLOUT_FAILED, r.failed),
        ]
    if r.ready_enough:
        reason = SCALED_TO_ZERO if r.desired == 0 else AVAILABLE
        return [
            condition(READY, True, reason, f"{r.ready}/{r.desired} {what} replicas ready"),
            condition(RECONCILING, False, COMPLETE, "the latest spec is rolled out"),
        ]
    # Still rolling out; if a pod cannot be created or run, Ready says why, not PROGRESSING.
    reason, message = PROGRESSING, f"{r.ready}/{r.desired} {what} replicas ready"
    if problem is None and r.replica_failure:
        problem = Blocker(FAILED_CREATE, _clip(r.replica_failure, MAX_PROBLEM_MESSAGE))
    if problem is not None:
        reason, message = problem.reason, f"{message}; {problem.message}"
    return [
        condition(READY, False, reason, message),
        condition(
            RECONCILING,
            True,
            ROLLING_OUT,
            f"{r.updated}/{r.desired} replicas on the latest spec, {r.ready} ready",
        ),
    ]


def _child_conditions(
    accepted: Outcome,
    what: str,
    not_running: str,
    r: Rollout,
    blocked: Blocker | None,
    paused: bool,
    problem: Blocker | None = None,
) -> list[dict[str, Any]]:
    """Accepted, Ready and Reconciling of a kind that binds to an app and runs a Deployment."""
    ok, reason, message = accepted
    conds = [condition(ACCEPTED, ok, reason, message)]
    if blocked is not None:
        return [
            *conds,
            condition(READY, False, blocked.reason, blocked.message),
            condition(RECONCILING, False, blocked.reason, blocked.message),
        ]
    if not ok:
        return [
            *conds,
            condition(READY, False, reason, not_running),
            condition(RECONCILING, False, reason, message),
        ]
    conds += _rollout_conditions(what, r, problem)
    if paused:
        conds[-1] = condition(
            RECONCILING, False, PAUSED, "the app is paused: its children are not changed"
        )
    return conds


# ---- CeleryWorkerPool -----------------------------------------------------------------
def pool_status(
    *,
    generation: int | None,
    old: Mapping[str, Any] | None,
    accepted: Outcome,
    app: AppRef | None,
    deployment_name: str | None,
    deployment: Mapping[str, Any] | None,
    selector: str | None,
    blocked: Blocker | None = None,
    autoscaler: Mapping[str, Any] | None = None,
    scaling: Outcome | None = None,
    paused: bool = False,
    problem: Blocker | None = None,
    workers: Mapping[str, Any] | None = None,
    load: Outcome | None = None,
    draining: str = "",
    unready: Blocker | None = None,
    now: str | None = None,
) -> dict[str, Any]:
    """The pool's status. `blocked` (reason, message) means nothing could be applied;
    `scaling` is the built-in scaler's ScalingActive condition; `problem` is why a worker
    pod cannot run (pod_problem), if one cannot; `unready` makes Ready False though
    everything was applied (an image pull Secret that cannot be mirrored)."""
    now = now or now_iso()
    ok = accepted.ok
    r = rollout_of(deployment)
    conds = _child_conditions(
        accepted,
        "worker",
        "no workers run while the pool is not accepted",
        r,
        blocked,
        paused,
        problem,
    )
    if ok and blocked is None and draining and not paused:
        conds[-1] = condition(RECONCILING, True, DRAINING, draining)
    if ok and blocked is None and unready is not None and not paused:
        ready = condition(READY, False, unready.reason, unready.message)
        conds = [ready if c["type"] == READY else c for c in conds]
    if ok and blocked is None and scaling is not None:
        conds.append(condition(SCALING_ACTIVE, scaling.ok, scaling.reason, scaling.message))
    if ok and blocked is None and load is not None:
        conds.append(condition(LOAD_OBSERVED, load.ok, load.reason, load.message))
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": merge_conditions((old or {}).get("conditions"), conds, generation, now),
        "app": {"name": app.name, "namespace": app.namespace} if app else None,
        "deployment": deployment_name if ok else None,
        "replicas": r.desired if ok else 0,
        "readyReplicas": r.ready if ok else 0,
        "readySummary": f"{r.ready if ok else 0}/{r.desired if ok else 0}",
        "selector": selector,
        "autoscaler": dict(autoscaler) if autoscaler else None,
        "workers": dict(workers) if ok and workers else None,
    }
    return status


# ---- Flower ---------------------------------------------------------------------------
def flower_status(
    *,
    generation: int | None,
    old: Mapping[str, Any] | None,
    accepted: Outcome,
    deployment: Mapping[str, Any] | None,
    url: str | None,
    blocked: Blocker | None = None,
    paused: bool = False,
    problem: Blocker | None = None,
    now: str | None = None,
) -> dict[str, Any]:
    now = now or now_iso()
    ok = accepted.ok
    r = rollout_of(deployment)
    conds = _child_conditions(
        accepted,
        "Flower",
        "Flower does not run while it is not accepted",
        r,
        blocked,
        paused,
        problem,
    )
    return {
        "observedGeneration": generation,
        "conditions": merge_conditions((old or {}).get("conditions"), conds, generation, now),
        "url": url if ok else None,
        "readyReplicas": r.ready if ok else 0,
    }


# ---- CeleryApp roll-up ----------------------------------------------------------------
@dataclass(frozen=True)
class PoolView:
    """An accepted pool, as the app sees it (from the pool's status)."""

    name: str
    namespace: str
    queues: tuple[str, ...]
    replicas: int
    ready_replicas: int
    ready: bool
    reconciling: bool
    problem: str = ""  # "<reason>: <message>" when its pods cannot run


@dataclass(frozen=True)
class FlowerView:
    name: str
    ready: bool
    reconciling: bool
    url: str
    problem: str = ""


_POD_PROBLEMS = (*POD_PROBLEM_REASONS, FAILED_CREATE)


def _problem_of(status: Mapping[str, Any]) -> str:
    """The Ready condition's reason and message when it is a pod problem (one that cannot
    run, or cannot be created), else ""."""
    c = get_condition(status, READY)
    if c is None or c.get("status") == "True" or c.get("reason") not in _POD_PROBLEMS:
        return ""
    return f"{c.get('reason')}: {c.get('message', '')}"


def pool_view(pool: Mapping[str, Any]) -> PoolView | None:
    """The app's view of a pool body; None unless the pool is accepted by this app."""
    st = pool.get("status") or {}
    if not is_true(st, ACCEPTED):
        return None
    meta = pool["metadata"]
    return PoolView(
        name=meta["name"],
        namespace=meta["namespace"],
        queues=tuple((pool.get("spec") or {}).get("queues") or []),
        replicas=int(st.get("replicas", 0)),
        ready_replicas=int(st.get("readyReplicas", 0)),
        ready=is_true(st, READY),
        reconciling=is_true(st, RECONCILING),
        problem=_problem_of(st),
    )


def flower_view(flower: Mapping[str, Any]) -> FlowerView:
    st = flower.get("status") or {}
    return FlowerView(
        name=flower["metadata"]["name"],
        ready=is_true(st, READY),
        reconciling=is_true(st, RECONCILING),
        url=str(st.get("url") or ""),
        problem=_problem_of(st),
    )


MAX_LISTED = 5


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def app_status(
    *,
    generation: int | None,
    old: Mapping[str, Any] | None,
    pools: Iterable[PoolView],
    flower: FlowerView | None,
    beat_enabled: bool,
    beat_deployment: Mapping[str, Any] | None,
    beat_problem: Blocker | None = None,
    invalid: str | None = None,
    blocked: Blocker | None = None,
    paused: bool = False,
    max_pools: int = 100,
    now: str | None = None,
) -> dict[str, Any]:
    now = now or now_iso()
    pools = sorted(pools, key=lambda p: (p.namespace, p.name))
    beat = rollout_of(beat_deployment) if beat_enabled else None

    def named(what: str, problem: str) -> str:
        return f"{what} ({_clip(problem, 300)})" if problem else what

    not_ready: list[str] = [
        named(f"pool {p.namespace}/{p.name}", p.problem) for p in pools if not p.ready
    ]
    reconciling = any(p.reconciling for p in pools)
    if flower is not None:
        if not flower.ready:
            not_ready.append(named(f"flower {flower.name}", flower.problem))
        reconciling = reconciling or flower.reconciling
    if beat is not None:
        if not beat.ready_enough:
            problem = beat_problem or (
                Blocker(FAILED_CREATE, beat.replica_failure) if beat.replica_failure else None
            )
            not_ready.append(named("beat", ": ".join(problem) if problem else ""))
        reconciling = reconciling or (beat.exists and not beat.ready_enough and not beat.failed)

    if invalid is not None:
        conds = [
            condition(READY, False, INVALID_SPEC, invalid),
            condition(RECONCILING, False, INVALID_SPEC, "nothing is created from an invalid spec"),
            condition(DEGRADED, False, INVALID_SPEC, ""),
        ]
    elif blocked is not None:
        conds = [
            condition(READY, False, blocked.reason, blocked.message),
            condition(RECONCILING, False, blocked.reason, blocked.message),
            condition(DEGRADED, True, blocked.reason, blocked.message),
        ]
    else:
        if not_ready:
            ready = condition(READY, False, COMPONENTS_NOT_READY, f"not ready: {_names(not_ready)}")
        else:
            ready = condition(READY, True, ALL_COMPONENTS_READY, "every component is ready")
        if paused:
            rec = condition(
                RECONCILING, False, PAUSED, "spec.paused is true: children are not changed"
            )
        elif reconciling:
            rec = condition(RECONCILING, True, ROLLING_OUT, "components are rolling out")
        else:
            rec = condition(RECONCILING, False, COMPLETE, "every component is up to date")
        # Degraded: something that should run is not ready and no rollout explains it.
        degraded = bool(not_ready) and not reconciling
        deg = condition(
            DEGRADED,
            degraded,
            COMPONENTS_UNAVAILABLE if degraded else AS_EXPECTED,
            f"not ready: {_names(not_ready)}" if degraded else "",
        )
        conds = [ready, rec, deg]

    replicas = sum(p.replicas for p in pools)
    ready_replicas = sum(p.ready_replicas for p in pools)
    ready_pools = sum(1 for p in pools if p.ready)
    return {
        "observedGeneration": generation,
        "conditions": merge_conditions((old or {}).get("conditions"), conds, generation, now),
        "workers": {
            "replicas": replicas,
            "readyReplicas": ready_replicas,
            "summary": f"{ready_replicas}/{replicas}",
        },
        "pools": {
            "total": len(pools),
            "ready": ready_pools,
            "summary": f"{ready_pools}/{len(pools)}",
        },
        "workerPools": [
            {
                "name": p.name,
                "namespace": p.namespace,
                "queues": list(p.queues),
                "replicas": p.replicas,
                "readyReplicas": p.ready_replicas,
                "ready": p.ready,
            }
            for p in pools[:max_pools]
        ],
        "flower": (
            {"name": flower.name, "ready": flower.ready, "url": flower.url} if flower else None
        ),
        "beat": {"ready": bool(beat and beat.ready_enough)} if beat_enabled else None,
    }


def _members(status: Mapping[str, Any]) -> tuple[object, ...]:
    """Which components an app's status counts (nothing for a pool's or a Flower's)."""
    pools = status.get("pools") or {}
    return (
        pools.get("total"),
        bool(status.get("flower")),
        tuple(sorted((p.get("namespace"), p.get("name")) for p in status.get("workerPools") or [])),
    )


def minor_change(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether writing `new` over `old` changes only what may wait a moment (counts,
    messages, the workers' figures): no condition appears or changes status or reason,
    observedGeneration stays (what `kubectl wait` and rollout tools wait for), and an
    app counts the same pools and Flower."""
    old = old or {}
    if "observedGeneration" in new and new["observedGeneration"] != old.get("observedGeneration"):
        return False
    if _members(old) != _members(new):
        return False  # an app's pools or Flower came or went: what it is made of
    before = {
        c.get("type"): (c.get("status"), c.get("reason")) for c in old.get("conditions") or []
    }
    return all(
        before.get(c.get("type")) == (c.get("status"), c.get("reason"))
        for c in new.get("conditions") or []
    )


def status_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether patching `new` over `old` changes anything (ignores key order)."""
    old = old or {}
    return any(old.get(k) != v for k, v in new.items())
