"""The Kubernetes Events the operator posts on its users' objects (pure constants).

Every reason, its type, the `action` it reports (events.k8s.io/v1 requires one) and when
it is posted. The controllers decide the Events in their apply step
(`controllers/events.py`); `k8s/events.py` aggregates, rate-limits and posts them;
docs/events.md lists this table (a unit test keeps the two equal).
"""

from __future__ import annotations

from typing import NamedTuple

from celery_operator.api.base import GROUP
from celery_operator.api.conditions import (
    APP_INVALID,
    APP_NOT_FOUND,
    AUTOSCALER_FAILING,
    BROKER_UNREACHABLE,
    BROKER_UNREADABLE,
    CHILD_CONFLICT,
    INVALID_SPEC,
    NAMESPACE_NOT_ALLOWED,
    POD_PROBLEM_REASONS,
    PULL_SECRET_UNREADABLE,
    ROLLOUT_FAILED,
)

# The `reportingController` of every Event (kubectl describe shows it in its From column).
REPORTING_CONTROLLER = f"{GROUP}/celery-operator"

NORMAL = "Normal"
WARNING = "Warning"


class EventReason(NamedTuple):
    reason: str
    type: str
    action: str
    kinds: str  # which of the three kinds it is posted on (docs)
    when: str  # when it is posted (docs)


# ---- children ---------------------------------------------------------------------------
CREATED = "Created"
UPDATED = "Updated"
DELETED = "Deleted"
DRIFT_REPAIRED = "DriftRepaired"
SECRET_MIRRORED = "SecretMirrored"
# ---- the Deployments' rollouts and the workers' scale ---------------------------------------
ROLLOUT_STARTED = "RolloutStarted"
ROLLOUT_FINISHED = "RolloutFinished"
SCALED = "Scaled"
DRAIN_STARTED = "DrainStarted"
DRAIN_TIMED_OUT = "DrainTimedOut"
DRAIN_ABANDONED = "DrainAbandoned"
# ---- what the conditions say, when it changes ---------------------------------------------
BOUND = "Bound"
PAUSED = "Paused"
RESUMED = "Resumed"
BROKER_REACHABLE = "BrokerReachable"
COMPONENTS_UNAVAILABLE = "ComponentsUnavailable"

ALL = "all three"
POOLS = "CeleryWorkerPool"
BOUND_KINDS = "CeleryWorkerPool, Flower"

# A Ready condition that turns False for one of these reasons is posted as a Warning of the
# same reason (nothing could be applied, or what runs cannot).
BLOCKING_REASONS = (
    INVALID_SPEC,
    APP_NOT_FOUND,
    NAMESPACE_NOT_ALLOWED,
    APP_INVALID,
    BROKER_UNREADABLE,
    CHILD_CONFLICT,
)

EVENTS: tuple[EventReason, ...] = (
    EventReason(CREATED, NORMAL, "Create", ALL, "a child object was created"),
    EventReason(
        UPDATED,
        NORMAL,
        "Update",
        ALL,
        "a child was changed because the spec (or the app's) changed; a Deployment whose "
        "pod template changed says RolloutStarted instead",
    ),
    EventReason(
        DELETED,
        NORMAL,
        "Delete",
        ALL,
        "a child is no longer desired (e.g. autoscaling turned off), or the pool or "
        "Flower is no longer accepted (its workers stop)",
    ),
    EventReason(
        DRIFT_REPAIRED,
        NORMAL,
        "Repair",
        ALL,
        "a child deleted or edited by someone else was restored",
    ),
    EventReason(
        SECRET_MIRRORED,
        NORMAL,
        "Mirror",
        POOLS,
        "the app's connection Secret, or one of its image pull Secrets, was mirrored into "
        "a team namespace, or a mirror was updated because the app's Secret changed",
    ),
    EventReason(
        ROLLOUT_STARTED,
        NORMAL,
        "Rollout",
        ALL,
        "a Deployment (workers, Flower, beat) got a new pod template",
    ),
    EventReason(
        ROLLOUT_FINISHED,
        NORMAL,
        "Rollout",
        ALL,
        "that rollout is complete: every replica on the new template and ready",
    ),
    EventReason(
        SCALED,
        NORMAL,
        "Scale",
        POOLS,
        "the operator changed the worker Deployment's replicas: from, to and why (spec, "
        "the built-in scaler's queue lengths, a drain of busy workers)",
    ),
    EventReason(
        DRAIN_STARTED,
        NORMAL,
        "Drain",
        POOLS,
        "busy workers are drained (stop consuming, finish their tasks) before a scale-down",
    ),
    EventReason(
        DRAIN_TIMED_OUT,
        WARNING,
        "Drain",
        POOLS,
        "drained workers still ran tasks at drainTimeoutSeconds: the scale-down went ahead",
    ),
    EventReason(
        DRAIN_ABANDONED,
        NORMAL,
        "Drain",
        POOLS,
        "the scale-down was called off during a drain: the drained workers consume again",
    ),
    EventReason(BOUND, NORMAL, "Bind", BOUND_KINDS, "the object was accepted by its app"),
    EventReason(PAUSED, NORMAL, "Pause", ALL, "the app was paused: children are left as they are"),
    EventReason(RESUMED, NORMAL, "Resume", ALL, "the app was resumed"),
    EventReason(
        BROKER_UNREACHABLE,
        WARNING,
        "Observe",
        POOLS,
        "the built-in scaler cannot read the queue lengths, or the workers' heartbeats "
        "cannot be heard (ScalingActive or LoadObserved turned False)",
    ),
    EventReason(
        BROKER_REACHABLE,
        NORMAL,
        "Observe",
        POOLS,
        "the broker answers again after BrokerUnreachable",
    ),
    EventReason(
        AUTOSCALER_FAILING,
        WARNING,
        "Observe",
        POOLS,
        "the pool's HorizontalPodAutoscaler cannot get its metrics or cannot scale, or its "
        "KEDA ScaledObject's triggers fail (ScalingActive turned False; the message has their "
        "reason)",
    ),
    EventReason(
        COMPONENTS_UNAVAILABLE,
        WARNING,
        "Observe",
        "CeleryApp",
        "the app turned Degraded: a pool, its Flower or beat is not ready and no rollout "
        "explains it",
    ),
    EventReason(
        INVALID_SPEC,
        WARNING,
        "Validate",
        ALL,
        "the spec is invalid (it got past a disabled webhook): nothing is created from it",
    ),
    EventReason(
        APP_NOT_FOUND, WARNING, "Bind", BOUND_KINDS, "the CeleryApp it names does not exist"
    ),
    EventReason(
        NAMESPACE_NOT_ALLOWED,
        WARNING,
        "Bind",
        POOLS,
        "the app does not admit pools from the pool's namespace",
    ),
    EventReason(APP_INVALID, WARNING, "Bind", BOUND_KINDS, "the app it names is invalid"),
    EventReason(
        BROKER_UNREADABLE,
        WARNING,
        "Reconcile",
        POOLS,
        "the app's broker URL cannot be read (its Secret) or parsed",
    ),
    EventReason(
        PULL_SECRET_UNREADABLE,
        WARNING,
        "Mirror",
        POOLS,
        "an image pull Secret of the app cannot be mirrored into the pool's namespace (it "
        "does not exist, or cannot be read): its mirror is left as it was, the rest is applied",
    ),
    EventReason(
        CHILD_CONFLICT,
        WARNING,
        "Apply",
        ALL,
        "a child's name is taken by an object the operator does not control",
    ),
    EventReason(
        ROLLOUT_FAILED,
        WARNING,
        "Rollout",
        ALL,
        "a Deployment exceeded its progress deadline",
    ),
    *(
        EventReason(
            reason,
            WARNING,
            "Observe",
            ALL,
            "a pod cannot run (the pod, the container and the kubelet's message): a pool's "
            "or Flower's Ready turned False for it, or the app's beat pod",
        )
        for reason in POD_PROBLEM_REASONS
    ),
)

BY_REASON: dict[str, EventReason] = {e.reason: e for e in EVENTS}
assert len(BY_REASON) == len(EVENTS), "one row per reason"
