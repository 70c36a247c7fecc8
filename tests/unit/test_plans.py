"""The plans of the three kinds, table-driven, with no cluster: every blocking reason,
every child set, the status each computes; and the reasons they set are exactly the ones
docs/reference.md documents."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from celery_operator.api.celeryapp import CeleryApp
from celery_operator.api.celeryworkerpool import CeleryWorkerPool
from celery_operator.api.conditions import POD_PROBLEM_REASONS, Blocker
from celery_operator.api.flower import Flower
from celery_operator.manifests.reference import CONDITIONS
from celery_operator.plans.celeryapp import AppInputs, plan_app
from celery_operator.plans.celeryworkerpool import (
    BROKER,
    RESULT_BACKEND,
    Connection,
    PoolInputs,
    ScalerView,
    connection_reads,
    plan_pool,
    wanted_reads,
)
from celery_operator.plans.common import parse, parse_app
from celery_operator.plans.flower import FlowerInputs, plan_flower
from celery_operator.plans.secrets import SecretView
from celery_operator.plans.workers import PodView
from celery_operator.scaling.workers import Heartbeat, PoolHeartbeats
from tests.support import objects as o

NOW = "2026-01-01T00:00:00Z"
DEFAULT = "celeryworkerpool/examples/shop-default.yaml"
TEAM = "celeryworkerpool/examples/team-a-emails.yaml"  # team-a, builtin engine
REDIS = "redis://:secret@redis.shop:6379/0"
ATTACHED = {"celeryproject.org/attach-to-shop": "true"}


def body(
    rel: str, gen: int = 1, created: str = "2026-01-01T00:00:00Z", **patch: Any
) -> dict[str, Any]:
    obj = o.deep_merge(o.example(rel), patch)
    meta = obj["metadata"]
    meta.update(uid=f"uid-{meta['namespace']}-{meta['name']}", generation=gen)
    meta["creationTimestamp"] = created
    return obj


def app_body(**patch: Any) -> dict[str, Any]:
    return body("celeryapp/examples/shop.yaml", **patch)


REJECTED = (
    'pods "shop-default-5d8f7c9b4-x2x9k" is forbidden: violates PodSecurity "restricted:latest": '
    'allowPrivilegeEscalation != false (container "proxy" must set '
    "securityContext.allowPrivilegeEscalation=false)"
)


def deployment(
    replicas: int = 2,
    ready: int | None = None,
    updated: int | None = None,
    failed: bool = False,
    rejected: bool = False,
) -> dict[str, Any]:
    ready = replicas if ready is None else ready
    conds = []
    if failed:
        conds.append(
            {"type": "Progressing", "reason": "ProgressDeadlineExceeded", "message": "stuck"}
        )
    if rejected:
        conds.append(
            {
                "type": "ReplicaFailure",
                "status": "True",
                "reason": "FailedCreate",
                "message": REJECTED,
            }
        )
    return {
        "metadata": {"generation": 1, "uid": "d"},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": 1,
            "replicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "updatedReplicas": replicas if updated is None else updated,
            "conditions": conds,
        },
    }


def conflict_status(reason: str, generation: int = 1) -> dict[str, Any]:
    return {
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": reason,
                "message": "Deployment shop/x already exists",
                "observedGeneration": generation,
                "lastTransitionTime": "2025-01-01T00:00:00Z",
            }
        ]
    }


# ---- the cases -----------------------------------------------------------------------------
def pool_inputs(
    rel: str = DEFAULT,
    spec: dict[str, Any] | None = None,
    app: dict[str, Any] | None = None,
    no_app: bool = False,
    labels: dict[str, str] | None = None,
    status: dict[str, Any] | None = None,
    **kw: Any,
) -> PoolInputs:
    b = body(rel, spec=spec or {})
    if status is not None:
        b["status"] = status
    key = (b["metadata"]["namespace"], b["metadata"]["name"])
    return PoolInputs(
        key=key,
        body=b,
        pool=parse(CeleryWorkerPool, b),
        app=None if no_app else parse_app(app or app_body()),
        namespace_labels=ATTACHED if labels is None else labels,
        deployment=kw.pop("deployment", None),
        now=NOW,
        **kw,
    )


CROSS = {BROKER: Connection(REDIS), RESULT_BACKEND: Connection(REDIS)}
DOCKER = SecretView(True, "kubernetes.io/dockerconfigjson", {".dockerconfigjson": "e30="})


@dataclass(frozen=True)
class Case:
    id: str
    kind: str
    plan: Callable[[], Any]
    # condition type -> (status, reason) of the status computed after apply
    conditions: dict[str, tuple[str, str]]
    deployment: dict[str, Any] | None = None  # the Deployment as apply leaves it
    conflict: Blocker | None = None
    # Kinds of the desired children (None: no child is changed; "any": not checked here).
    children: tuple[str, ...] | str | None = "any"
    check: Callable[[Any, dict[str, Any]], None] = lambda plan, status: None


def _kinds(plan: Any) -> tuple[str, ...] | None:
    return None if plan.children is None else tuple(c["kind"] for c in plan.children)


def _deletes(plan: Any, status: dict[str, Any]) -> None:
    assert plan.delete_children
    assert plan.untrack


def _keeps(plan: Any, status: dict[str, Any]) -> None:
    assert not plan.delete_children


def _pool_checks(
    replicas: int | None = None, hand_off: bool = False, track: bool = False
) -> Callable[[Any, dict[str, Any]], None]:
    def check(plan: Any, status: dict[str, Any]) -> None:
        assert plan.replicas == replicas
        assert plan.hand_off_replicas == hand_off
        assert (plan.track is not None) == track
        assert not plan.delete_children
        assert plan.status_can_wait
        if plan.children is not None:
            deploy = next(c for c in plan.children if c["kind"] == "Deployment")
            assert deploy["spec"].get("replicas") == replicas

    return check


def rollouts(kind: str, inputs: Callable[[], Any], replicas: int) -> list[Case]:
    """A Deployment part-way through its rollout, and one past its progress deadline."""
    return [
        Case(
            "progressing",
            kind,
            inputs,
            {"Ready": ("False", "Progressing"), "Reconciling": ("True", "RollingOut")},
            deployment=deployment(replicas, ready=replicas - 1, updated=replicas - 1),
        ),
        Case(
            "rollout-failed",
            kind,
            inputs,
            {"Ready": ("False", "RolloutFailed"), "Reconciling": ("False", "RolloutFailed")},
            deployment=deployment(replicas, ready=replicas - 1, failed=True),
        ),
        Case(
            "pods-rejected",
            kind,
            inputs,
            {"Ready": ("False", "FailedCreate"), "Reconciling": ("True", "RollingOut")},
            deployment=deployment(replicas, ready=0, rejected=True),
            check=lambda plan, status: _says(status, "Ready", f"0/{replicas} ", REJECTED),
        ),
    ]


def _says(status: dict[str, Any], type_: str, *parts: str) -> None:
    message = next(c["message"] for c in status["conditions"] if c["type"] == type_)
    for part in parts:
        assert part in message, message


REFUSED = (
    'Deployment.apps "shop-default" is invalid: spec.template.spec.initContainers[0].resources'
    '.requests: Invalid value: "2": must be less than or equal to cpu limit of 1'
)


def rejected(kind: str, inputs: Callable[[], Any], children: tuple[str, ...]) -> list[Case]:
    """The apiserver refuses a rendered child (422): Ready says so, also on status passes."""
    blocked = {"Ready": ("False", "ChildRejected"), "Reconciling": ("False", "ChildRejected")}
    if kind == "CeleryApp":
        blocked["Degraded"] = ("True", "ChildRejected")
    return [
        Case(
            "child-rejected",
            kind,
            inputs,
            blocked,
            conflict=Blocker("ChildRejected", f"the apiserver refuses it: {REFUSED}"),
            children=children,
            check=lambda plan, status: _says(status, "Ready", REFUSED),
        ),
        Case(
            "status-only-keeps-a-rejection",
            kind,
            lambda: dataclasses.replace(
                inputs(),
                apply=False,
                body={**inputs().body, "status": conflict_status("ChildRejected")},
            ),
            {"Ready": ("False", "ChildRejected")},
            deployment=deployment(),
        ),
    ]


def hpa_object(*conds: tuple[str, str, str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "shop-emails", "namespace": "team-a"},
        "status": {
            "conditions": [
                {"type": t, "status": st, "reason": r, "message": m} for t, st, r, m in conds
            ]
        },
    }


def scaled_object(
    *conds: tuple[str, str, str, str], health: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "shop-emails", "namespace": "team-a"},
        "status": {
            "conditions": [
                {"type": t, "status": st, "reason": r, "message": m} for t, st, r, m in conds
            ],
            "health": {k: {"numberOfFailures": 3, "status": v} for k, v in (health or {}).items()},
        },
    }


def _no_condition(status: dict[str, Any], type_: str) -> None:
    assert type_ not in {c["type"] for c in status["conditions"]}, status["conditions"]


def _says_scaling(*parts: str) -> Callable[[Any, dict[str, Any]], None]:
    def check(plan: Any, status: dict[str, Any]) -> None:
        _says(status, "ScalingActive", *parts)

    return check


def _unmirrored_checks(plan: Any, status: dict[str, Any]) -> None:
    _says(status, "Ready", "Secret shop/regcred (it does not exist)", "namespace team-a")
    assert plan.keep_secrets == ("shop-emails-pull-regcred",)
    # A status pass reads no Secret: this status is written at once, not left to one.
    assert not plan.status_can_wait


READY_AVAILABLE = {"Accepted": ("True", "Bound"), "Ready": ("True", "Available")}
HPA = {"autoscaling": {"minReplicas": 1, "maxReplicas": 4, "cpu": {"averageUtilization": 70}}}
KEDA = {
    "autoscaling": {
        "minReplicas": 0,
        "maxReplicas": 4,
        "queueLength": {"targetPerReplica": 10, "engine": "keda"},
    }
}
SQS = "sqs://AKIA:secret@"

POOL_CASES = [
    Case(
        "schema-invalid",
        "CeleryWorkerPool",
        lambda: pool_inputs(spec={"replicas": -1}),
        {"Accepted": ("False", "InvalidSpec"), "Ready": ("False", "InvalidSpec")},
        check=_keeps,
    ),
    Case(
        "validator-invalid",
        "CeleryWorkerPool",
        lambda: pool_inputs(spec={"pool": "solo", "concurrency": 4}),
        {
            "Accepted": ("False", "InvalidSpec"),
            "Ready": ("False", "InvalidSpec"),
            "Reconciling": ("False", "InvalidSpec"),
        },
        check=_keeps,
    ),
    Case(
        "app-not-found",
        "CeleryWorkerPool",
        lambda: pool_inputs(no_app=True),
        {
            "Accepted": ("False", "AppNotFound"),
            "Ready": ("False", "AppNotFound"),
            "Reconciling": ("False", "AppNotFound"),
        },
        check=_deletes,
    ),
    Case(
        "app-being-deleted",
        "CeleryWorkerPool",
        lambda: pool_inputs(app=app_body(metadata={"deletionTimestamp": NOW})),
        {"Accepted": ("False", "AppNotFound")},
        check=_deletes,
    ),
    Case(
        "app-not-found-status-only-deletes-nothing",
        "CeleryWorkerPool",
        lambda: pool_inputs(no_app=True, apply=False),
        {"Accepted": ("False", "AppNotFound")},
        check=_keeps,
    ),
    Case(
        "namespace-not-allowed",
        "CeleryWorkerPool",
        lambda: pool_inputs(TEAM, labels={}),
        {
            "Accepted": ("False", "NamespaceNotAllowed"),
            "Ready": ("False", "NamespaceNotAllowed"),
            "Reconciling": ("False", "NamespaceNotAllowed"),
        },
        check=_deletes,
    ),
    Case(
        "app-invalid",
        "CeleryWorkerPool",
        lambda: pool_inputs(app=app_body(spec={"broker": {"url": {"value": REDIS}}})),
        {
            "Accepted": ("True", "Bound"),
            "Ready": ("False", "AppInvalid"),
            "Reconciling": ("False", "AppInvalid"),
        },
        deployment=deployment(),
        check=_keeps,
    ),
    Case(
        "broker-unreadable",
        "CeleryWorkerPool",
        lambda: pool_inputs(
            TEAM,
            connections={
                BROKER: Connection(problem="cannot read Secret shop/shop-broker: Forbidden")
            },
        ),
        {
            "Accepted": ("True", "Bound"),
            "Ready": ("False", "BrokerUnreadable"),
            "Reconciling": ("False", "BrokerUnreadable"),
        },
        check=_keeps,
    ),
    Case(
        "broker-url-unparsable",
        "CeleryWorkerPool",
        lambda: pool_inputs(TEAM, connections={BROKER: Connection("not a url")}),
        {"Ready": ("False", "BrokerUnreadable")},
    ),
    Case(
        "builtin-cannot-read-sqs",
        "CeleryWorkerPool",
        lambda: pool_inputs(
            TEAM, connections={BROKER: Connection(SQS), RESULT_BACKEND: Connection()}
        ),
        {"Accepted": ("True", "Bound"), "Ready": ("False", "InvalidSpec")},
    ),
    Case(
        "keda-not-installed",
        "CeleryWorkerPool",
        lambda: pool_inputs(
            spec=KEDA, connections={BROKER: Connection(REDIS)}, keda_installed=False
        ),
        {"Ready": ("False", "InvalidSpec")},
    ),
    Case(
        "fixed-replicas-creating",
        "CeleryWorkerPool",
        lambda: pool_inputs(),
        {
            "Accepted": ("True", "Bound"),
            "Ready": ("False", "Creating"),
            "Reconciling": ("True", "Creating"),
        },
        children=("Deployment", "PodDisruptionBudget"),
        check=_pool_checks(replicas=2),
    ),
    Case(
        "fixed-replicas-available",
        "CeleryWorkerPool",
        lambda: pool_inputs(),
        {**READY_AVAILABLE, "Reconciling": ("False", "Complete")},
        deployment=deployment(),
        children=("Deployment", "PodDisruptionBudget"),
    ),
    Case(
        "scaled-to-zero",
        "CeleryWorkerPool",
        lambda: pool_inputs(spec={"replicas": 0}),
        {"Ready": ("True", "ScaledToZero")},
        deployment=deployment(0),
        check=_pool_checks(replicas=0),
    ),
    *rollouts("CeleryWorkerPool", lambda: pool_inputs(), replicas=2),
    Case(
        "pod-cannot-run",
        "CeleryWorkerPool",
        lambda: pool_inputs(problem=Blocker("CrashLoopBackOff", "pod p: exit 2")),
        {"Ready": ("False", "CrashLoopBackOff")},
        deployment=deployment(2, ready=0),
    ),
    Case(
        "child-conflict",
        "CeleryWorkerPool",
        lambda: pool_inputs(),
        {"Ready": ("False", "ChildConflict"), "Reconciling": ("False", "ChildConflict")},
        conflict=Blocker("ChildConflict", "Deployment shop/shop-default already exists"),
        children=("Deployment", "PodDisruptionBudget"),
    ),
    *rejected("CeleryWorkerPool", lambda: pool_inputs(), ("Deployment", "PodDisruptionBudget")),
    Case(
        "status-only-keeps-a-conflict-of-this-generation",
        "CeleryWorkerPool",
        lambda: pool_inputs(apply=False, status=conflict_status("ChildConflict")),
        {"Ready": ("False", "ChildConflict")},
        deployment=deployment(),
    ),
    Case(
        "status-only-drops-a-conflict-of-an-older-generation",
        "CeleryWorkerPool",
        lambda: pool_inputs(apply=False, status=conflict_status("ChildConflict", generation=0)),
        READY_AVAILABLE,
        deployment=deployment(),
    ),
    Case(
        "paused",
        "CeleryWorkerPool",
        lambda: pool_inputs(app=app_body(spec={"paused": True})),
        {"Ready": ("True", "Available"), "Reconciling": ("False", "Paused")},
        deployment=deployment(),
    ),
    Case(
        "cross-namespace-mirrors-the-connection-secret",
        "CeleryWorkerPool",
        lambda: pool_inputs(TEAM, spec={"autoscaling": None, "replicas": 3}, connections=CROSS),
        {"Ready": ("False", "Creating")},
        children=("Secret", "Deployment", "PodDisruptionBudget"),
        check=_pool_checks(replicas=3),
    ),
    Case(
        "cross-namespace-mirrors-the-image-pull-secrets",
        "CeleryWorkerPool",
        lambda: pool_inputs(
            TEAM,
            spec={"autoscaling": None},
            app=app_body(spec={"imagePullSecrets": [{"name": "regcred"}]}),
            connections=CROSS,
            secrets={("shop", "regcred"): DOCKER},
        ),
        {"Ready": ("True", "Available"), "Reconciling": ("False", "Complete")},
        deployment=deployment(),
        children=("Secret", "Secret", "Deployment", "PodDisruptionBudget"),
        check=lambda plan, status: (
            plan.children[1]["type"] == "kubernetes.io/dockerconfigjson"
            or pytest.fail(str(plan.children[1]))
        ),
    ),
    Case(
        "an-image-pull-secret-cannot-be-mirrored",
        "CeleryWorkerPool",
        lambda: pool_inputs(
            TEAM,
            spec={"autoscaling": None},
            app=app_body(spec={"imagePullSecrets": [{"name": "regcred"}]}),
            connections=CROSS,
        ),
        {
            "Accepted": ("True", "Bound"),
            "Ready": ("False", "PullSecretUnreadable"),
            "Reconciling": ("False", "Complete"),
        },
        deployment=deployment(),
        # Everything else is applied; the mirror is neither rebuilt nor deleted.
        children=("Secret", "Deployment", "PodDisruptionBudget"),
        check=_unmirrored_checks,
    ),
    Case(
        "status-only-keeps-a-pull-secret-problem",
        "CeleryWorkerPool",
        lambda: pool_inputs(
            TEAM,
            apply=False,
            status=conflict_status("PullSecretUnreadable"),
        ),
        {"Ready": ("False", "PullSecretUnreadable"), "Reconciling": ("False", "Complete")},
        deployment=deployment(),
    ),
    Case(
        "hpa-takes-replicas-over",
        "CeleryWorkerPool",
        lambda: pool_inputs(spec=HPA, deployment=deployment(3)),
        READY_AVAILABLE,
        deployment=deployment(3),
        children=("Deployment", "PodDisruptionBudget", "HorizontalPodAutoscaler"),
        check=_pool_checks(replicas=None, hand_off=True),
    ),
    Case(
        "keda",
        "CeleryWorkerPool",
        lambda: pool_inputs(spec=KEDA, connections={BROKER: Connection(REDIS)}),
        {"Ready": ("False", "Creating")},
        children=(
            "Deployment",
            "PodDisruptionBudget",
            "Secret",
            "TriggerAuthentication",
            "ScaledObject",
        ),
        check=_pool_checks(replicas=None),
    ),
    Case(
        "hpa-without-metrics",
        "CeleryWorkerPool",
        lambda: pool_inputs(
            spec=HPA,
            deployment=deployment(3),
            autoscaler_object=hpa_object(
                (
                    "AbleToScale",
                    "True",
                    "SucceededGetScale",
                    "the HPA controller was able to get the target's current scale",
                ),
                (
                    "ScalingActive",
                    "False",
                    "FailedGetResourceMetric",
                    "the HPA was unable to compute the replica count: failed to get cpu utilization: unable to get metrics for resource cpu: no metrics returned from resource metrics API",
                ),
            ),
        ),
        {"Ready": ("True", "Available"), "ScalingActive": ("False", "AutoscalerFailing")},
        deployment=deployment(3),
        children=("Deployment", "PodDisruptionBudget", "HorizontalPodAutoscaler"),
        check=_says_scaling(
            "FailedGetResourceMetric", "no metrics returned", "kubectl describe hpa shop-emails"
        ),
    ),
    Case(
        "hpa-active",
        "CeleryWorkerPool",
        lambda: pool_inputs(
            spec=HPA,
            deployment=deployment(3),
            autoscaler_object=hpa_object(
                (
                    "AbleToScale",
                    "True",
                    "ReadyForNewScale",
                    "recommended size matches current size",
                ),
                (
                    "ScalingActive",
                    "True",
                    "ValidMetricFound",
                    "the HPA was able to successfully calculate a replica count from cpu resource utilization (percentage of request)",
                ),
            ),
        ),
        {"ScalingActive": ("True", "AutoscalerActive")},
        deployment=deployment(3),
        children=("Deployment", "PodDisruptionBudget", "HorizontalPodAutoscaler"),
        check=_says_scaling("from cpu resource utilization"),
    ),
    Case(
        "keda-trigger-error",
        "CeleryWorkerPool",
        lambda: pool_inputs(
            spec=KEDA,
            connections={BROKER: Connection(REDIS)},
            deployment=deployment(1),
            autoscaler_object=scaled_object(
                (
                    "Ready",
                    "False",
                    "TriggerError",
                    "Triggers defined in ScaledObject are not working correctly",
                ),
                health={"s0-redis-emails": "Failing", "s1-redis-emails": "Happy"},
            ),
        ),
        {"Ready": ("True", "Available"), "ScalingActive": ("False", "AutoscalerFailing")},
        deployment=deployment(1),
        children="any",
        check=_says_scaling(
            "TriggerError", "failing: s0-redis-emails", "kubectl describe scaledobject shop-emails"
        ),
    ),
    Case(
        "keda-ready",
        "CeleryWorkerPool",
        lambda: pool_inputs(
            spec=KEDA,
            connections={BROKER: Connection(REDIS)},
            deployment=deployment(1),
            autoscaler_object=scaled_object(
                (
                    "Ready",
                    "True",
                    "ScaledObjectReady",
                    "ScaledObject is defined correctly and is ready for scaling",
                ),
            ),
        ),
        {"ScalingActive": ("True", "AutoscalerActive")},
        deployment=deployment(1),
        children="any",
    ),
    Case(
        "keda-conflict-keeps-what-it-said",
        "CeleryWorkerPool",
        lambda: pool_inputs(
            spec=KEDA,
            connections={BROKER: Connection(REDIS)},
            deployment=deployment(1),
            status={
                "conditions": [
                    {
                        "type": "ScalingActive",
                        "status": "False",
                        "reason": "AutoscalerFailing",
                        "message": "ScaledObject shop-emails: TriggerError: ...",
                        "lastTransitionTime": NOW,
                    }
                ]
            },
            autoscaler_object=scaled_object(
                (
                    "Ready",
                    "False",
                    "ScaledObjectCheckFailed",
                    "failed to update ScaledObject with scaledObjectName label: Operation cannot "
                    'be fulfilled on scaledobjects.keda.sh "shop-emails": the object has been '
                    "modified; please apply your changes to the latest version and try again",
                ),
            ),
        ),
        {"ScalingActive": ("False", "AutoscalerFailing")},
        deployment=deployment(1),
        children="any",
        check=_says_scaling("TriggerError"),
    ),
    Case(
        "switched-to-hpa-forgets-what-keda-said",
        "CeleryWorkerPool",
        lambda: pool_inputs(
            spec=HPA,
            deployment=deployment(3),
            status={
                "conditions": [
                    {
                        "type": "ScalingActive",
                        "status": "False",
                        "reason": "AutoscalerFailing",
                        "message": "ScaledObject shop-emails: TriggerError: ...",
                        "lastTransitionTime": NOW,
                    }
                ]
            },
            autoscaler_object=hpa_object(),  # the new HPA, not read by its controller yet
        ),
        {"Ready": ("True", "Available")},
        deployment=deployment(3),
        children=("Deployment", "PodDisruptionBudget", "HorizontalPodAutoscaler"),
        check=lambda plan, status: _no_condition(status, "ScalingActive"),
    ),
    Case(
        "keda-not-yet-read",
        "CeleryWorkerPool",
        lambda: pool_inputs(
            spec=KEDA,
            connections={BROKER: Connection(REDIS)},
            deployment=deployment(1),
            autoscaler_object=scaled_object(("Ready", "Unknown", "", "")),
        ),
        {"Ready": ("True", "Available")},
        deployment=deployment(1),
        children="any",
        check=lambda plan, status: _no_condition(status, "ScalingActive"),
    ),
    Case(
        "builtin-first-poll",
        "CeleryWorkerPool",
        lambda: pool_inputs(
            TEAM, connections=CROSS, scaler=ScalerView(), deployment=deployment(20)
        ),
        {"Ready": ("True", "Available"), "ScalingActive": ("True", "Polling")},
        deployment=deployment(10),
        children=("Secret", "Deployment", "PodDisruptionBudget"),
        # 20 running, maxReplicas 10: the bound holds before the scaler's first poll.
        check=_pool_checks(replicas=10, track=True),
    ),
    Case(
        "builtin-queue-read",
        "CeleryWorkerPool",
        lambda: pool_inputs(
            TEAM, connections=CROSS, scaler=ScalerView(replicas=4, queue_length=70)
        ),
        {"ScalingActive": ("True", "QueueLengthRead")},
        deployment=deployment(4),
        check=_pool_checks(replicas=4, track=True),
    ),
    Case(
        "builtin-broker-unreachable",
        "CeleryWorkerPool",
        lambda: pool_inputs(
            TEAM, connections=CROSS, scaler=ScalerView(replicas=2, error="connection refused")
        ),
        {"ScalingActive": ("False", "BrokerUnreachable")},
        deployment=deployment(2),
        check=_pool_checks(replicas=2, track=True),
    ),
]


def flower_inputs(
    spec: dict[str, Any] | None = None,
    app: dict[str, Any] | None = None,
    no_app: bool = False,
    siblings: tuple[tuple[str, str], ...] = (),
    **kw: Any,
) -> FlowerInputs:
    b = body("flower/examples/shop.yaml", spec=spec or {})
    if "status" in kw:
        b["status"] = kw.pop("status")
    return FlowerInputs(
        key=(b["metadata"]["namespace"], b["metadata"]["name"]),
        body=b,
        flower=parse(Flower, b),
        app=None if no_app else parse_app(app or app_body()),
        siblings=siblings,
        deployment=None,
        now=NOW,
        **kw,
    )


def heard(*pods: tuple[str, int], known: bool = True, error: str = "") -> PoolHeartbeats:
    return PoolHeartbeats(
        known=known, error=error, beats={name: Heartbeat(active, 2.0, 1.0) for name, active in pods}
    )


def worker_pods(*names: str, draining: str | None = None) -> tuple[PodView, ...]:
    return tuple(PodView(n, created=EPOCH - 3600, draining_since=draining) for n in names)


EPOCH = 1_800_000_000.0
WORKER_CASES = [
    Case(
        "heartbeats-heard",
        "CeleryWorkerPool",
        lambda: pool_inputs(
            connections={BROKER: Connection(REDIS)},
            pods=worker_pods("w1", "w2"),
            heartbeats=heard(("w1", 0), ("w2", 3)),
            epoch=EPOCH,
        ),
        {"LoadObserved": ("True", "HeartbeatsReceived")},
        deployment=deployment(2),
        check=lambda plan, status: (
            status["workers"]
            == {
                "online": 2,
                "busy": 1,
                "activeTasks": 3,
                "unknown": 0,
                "draining": 0,
                "summary": "1/2",
            }
            or pytest.fail(str(status["workers"]))
        ),
    ),
    Case(
        "broker-not-heard",
        "CeleryWorkerPool",
        lambda: pool_inputs(
            connections={BROKER: Connection(REDIS)},
            pods=worker_pods("w1"),
            heartbeats=PoolHeartbeats(known=False, error="ConnectionRefusedError"),
            epoch=EPOCH,
        ),
        {"LoadObserved": ("False", "BrokerUnreachable"), "Ready": ("True", "Available")},
        deployment=deployment(2),
    ),
    Case(
        "broker-without-events",
        "CeleryWorkerPool",
        lambda: pool_inputs(
            connections={BROKER: Connection(REDIS)},
            heartbeats=PoolHeartbeats(known=False, supported=False),
        ),
        {"LoadObserved": ("False", "NotSupported")},
        deployment=deployment(2),
    ),
    Case(
        "scale-down-drains-a-busy-worker",
        "CeleryWorkerPool",
        lambda: pool_inputs(
            spec={"replicas": 1},
            connections={BROKER: Connection(REDIS)},
            pods=worker_pods("w1", "w2"),
            heartbeats=heard(("w1", 1), ("w2", 1)),
            deployment=deployment(2),
            epoch=EPOCH,
        ),
        {"Reconciling": ("True", "Draining"), "LoadObserved": ("True", "HeartbeatsReceived")},
        deployment=deployment(2),
        check=lambda plan, status: (
            (plan.replicas, plan.retry_after) == (2, 2.0)
            or pytest.fail(str((plan.replicas, plan.retry_after)))
        ),
    ),
]

FLOWER_CASES = [
    Case(
        "schema-invalid",
        "Flower",
        lambda: flower_inputs(spec={"appRef": {"name": "Not A Name"}}),
        {"Accepted": ("False", "InvalidSpec"), "Ready": ("False", "InvalidSpec")},
    ),
    Case(
        "an-older-flower-monitors-the-app",
        "Flower",
        lambda: flower_inputs(siblings=(("2025-01-01T00:00:00Z", "first"),)),
        {
            "Accepted": ("False", "InvalidSpec"),
            "Ready": ("False", "InvalidSpec"),
            "Reconciling": ("False", "InvalidSpec"),
        },
    ),
    Case(
        "a-younger-flower-does-not-count",
        "Flower",
        lambda: flower_inputs(siblings=(("2027-01-01T00:00:00Z", "later"),)),
        {"Accepted": ("True", "Bound")},
        children=("Deployment", "Service"),
    ),
    Case(
        "app-not-found",
        "Flower",
        lambda: flower_inputs(no_app=True),
        {
            "Accepted": ("False", "AppNotFound"),
            "Ready": ("False", "AppNotFound"),
            "Reconciling": ("False", "AppNotFound"),
        },
        check=lambda plan, status: plan.delete_children or pytest.fail("children kept"),
    ),
    Case(
        "app-invalid",
        "Flower",
        lambda: flower_inputs(app=app_body(spec={"broker": {"url": {"value": REDIS}}})),
        {"Ready": ("False", "AppInvalid"), "Reconciling": ("False", "AppInvalid")},
    ),
    Case(
        "creating-with-an-ingress",
        "Flower",
        lambda: flower_inputs(spec={"ingress": {"enabled": True, "host": "flower.example.com"}}),
        {
            "Accepted": ("True", "Bound"),
            "Ready": ("False", "Creating"),
            "Reconciling": ("True", "Creating"),
        },
        children=("Deployment", "Service", "Ingress"),
    ),
    Case(
        "available",
        "Flower",
        lambda: flower_inputs(),
        {"Ready": ("True", "Available"), "Reconciling": ("False", "Complete")},
        deployment=deployment(1),
    ),
    *rollouts("Flower", lambda: flower_inputs(), replicas=1),
    Case(
        "paused",
        "Flower",
        lambda: flower_inputs(app=app_body(spec={"paused": True})),
        {"Reconciling": ("False", "Paused")},
        deployment=deployment(1),
    ),
    Case(
        "child-conflict",
        "Flower",
        lambda: flower_inputs(),
        {"Ready": ("False", "ChildConflict"), "Reconciling": ("False", "ChildConflict")},
        conflict=Blocker("ChildConflict", "Service shop/shop-flower already exists"),
        children=("Deployment", "Service"),
    ),
    *rejected("Flower", lambda: flower_inputs(), ("Deployment", "Service")),
    Case(
        "status-only-keeps-a-conflict",
        "Flower",
        lambda: flower_inputs(apply=False, status=conflict_status("ChildConflict")),
        {"Ready": ("False", "ChildConflict")},
    ),
]


def pool_status_body(name: str, ready: bool, reconciling: bool = False) -> dict[str, Any]:
    b = body(DEFAULT, metadata={"name": name})
    b["status"] = {
        "replicas": 2,
        "readyReplicas": 2 if ready else 0,
        "conditions": [
            {"type": "Accepted", "status": "True", "reason": "Bound"},
            {"type": "Ready", "status": str(ready), "reason": "x"},
            {"type": "Reconciling", "status": str(reconciling), "reason": "x"},
        ],
    }
    return b


def app_inputs(
    spec: dict[str, Any] | None = None,
    pools: tuple[dict[str, Any], ...] = (),
    beat: dict[str, Any] | None = None,
    **kw: Any,
) -> AppInputs:
    b = app_body(spec=spec or {})
    if "status" in kw:
        b["status"] = kw.pop("status")
    return AppInputs(
        key=("shop", "shop"),
        body=b,
        app=parse(CeleryApp, b),
        pools=pools,
        flowers=kw.pop("flowers", ()),
        beat=beat,
        now=NOW,
        **kw,
    )


def _rolls_up_later(plan: Any, status: dict[str, Any]) -> None:
    assert plan.rollup_later


APP_CASES = [
    Case(
        "schema-invalid",
        "CeleryApp",
        lambda: app_inputs(spec={"image": ""}),
        {
            "Ready": ("False", "InvalidSpec"),
            "Reconciling": ("False", "InvalidSpec"),
            "Degraded": ("False", "InvalidSpec"),
        },
    ),
    Case(
        "validator-invalid",
        "CeleryApp",
        lambda: app_inputs(spec={"broker": {"url": {"value": REDIS}}}),
        {"Ready": ("False", "InvalidSpec")},
    ),
    Case(
        "beat",
        "CeleryApp",
        lambda: app_inputs(),
        {},
        children=("Deployment",),
        check=_rolls_up_later,
    ),
    Case(
        "no-beat",
        "CeleryApp",
        lambda: app_inputs(spec={"beat": {"enabled": False}}),
        {},
        children=(),
        check=_rolls_up_later,
    ),
    Case(
        "all-components-ready",
        "CeleryApp",
        lambda: app_inputs(
            apply=False,
            pools=(pool_status_body("a", True), pool_status_body("b", True)),
        ),
        {
            "Ready": ("True", "AllComponentsReady"),
            "Reconciling": ("False", "Complete"),
            "Degraded": ("False", "AsExpected"),
        },
        deployment=deployment(1),
    ),
    Case(
        "a-pool-rolls-out",
        "CeleryApp",
        lambda: app_inputs(apply=False, pools=(pool_status_body("a", False, True),)),
        {
            "Ready": ("False", "ComponentsNotReady"),
            "Reconciling": ("True", "RollingOut"),
            "Degraded": ("False", "AsExpected"),
        },
        deployment=deployment(1),
    ),
    Case(
        "a-pool-is-down",
        "CeleryApp",
        lambda: app_inputs(apply=False, pools=(pool_status_body("a", False),)),
        {"Ready": ("False", "ComponentsNotReady"), "Degraded": ("True", "ComponentsUnavailable")},
        deployment=deployment(1),
    ),
    Case(
        "beat-pods-rejected",
        "CeleryApp",
        lambda: app_inputs(apply=False),
        {"Ready": ("False", "ComponentsNotReady"), "Reconciling": ("True", "RollingOut")},
        deployment=deployment(1, ready=0, rejected=True),
        check=lambda plan, status: _says(status, "Ready", "beat (FailedCreate: pods "),
    ),
    Case(
        "paused",
        "CeleryApp",
        lambda: app_inputs(spec={"paused": True}),
        {"Reconciling": ("False", "Paused")},
        deployment=deployment(1),
    ),
    Case(
        "child-conflict",
        "CeleryApp",
        lambda: app_inputs(),
        {
            "Ready": ("False", "ChildConflict"),
            "Reconciling": ("False", "ChildConflict"),
            "Degraded": ("True", "ChildConflict"),
        },
        conflict=Blocker("ChildConflict", "Deployment shop/shop-beat already exists"),
        children=("Deployment",),
    ),
    *rejected("CeleryApp", lambda: app_inputs(), ("Deployment",)),
    Case(
        "status-only-keeps-a-conflict",
        "CeleryApp",
        lambda: app_inputs(apply=False, status=conflict_status("ChildConflict")),
        {"Ready": ("False", "ChildConflict")},
    ),
]

PLANS: dict[str, Callable[[Any], Any]] = {
    "CeleryWorkerPool": plan_pool,
    "Flower": plan_flower,
    "CeleryApp": plan_app,
}
CASES = POOL_CASES + WORKER_CASES + FLOWER_CASES + APP_CASES


def run(case: Case) -> tuple[Any, dict[str, Any]]:
    """The plan of the case, and the status written after an apply that left the case's
    Deployment (and conflict)."""
    plan = PLANS[case.kind](case.plan())
    return plan, plan.status(copy.deepcopy(case.deployment), case.conflict)


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


@pytest.mark.parametrize("case", CASES, ids=[f"{c.kind}:{c.id}" for c in CASES])
def test_plan(case: Case) -> None:
    plan, status = run(case)
    got = conditions(status)
    for type_, expected in case.conditions.items():
        assert got.get(type_) == expected, (type_, got, status["conditions"])
    if case.children != "any":
        assert _kinds(plan) == case.children
    case.check(plan, status)
    for c in status["conditions"]:
        assert c["observedGeneration"] == 1
        if "status" not in plan.body:  # a first status: every condition changes now
            assert c["lastTransitionTime"] == NOW


def test_every_reason_set_is_documented_and_every_documented_reason_is_set() -> None:
    """What a status can say is what docs/reference.md says, no more and no less (a pod
    problem is one of POD_PROBLEM_REASONS, documented as such)."""
    set_ = set()
    for case in CASES:
        for c in run(case)[1]["conditions"]:
            if c["reason"] in POD_PROBLEM_REASONS:
                continue
            set_.add((case.kind, c["type"], c["status"], c["reason"]))
    documented = {
        (kind, c.type, r.status, r.reason)
        for kind, docs in CONDITIONS.items()
        for c in docs
        for r in c.reasons
        if r.reason not in POD_PROBLEM_REASONS
    }
    assert set_ - documented == set(), "set by the plans but not documented"
    assert documented - set_ == set(), "documented but set by no case here"


# ---- what the plans read, and what they decide beyond conditions -----------------------------
def test_a_pool_reads_the_broker_only_when_it_needs_it() -> None:
    # Same namespace, fixed replicas: only to hear its workers (busy-worker protection).
    assert connection_reads(pool_inputs()) == (BROKER,)
    unprotected = {"scaleDown": {"protectBusyWorkers": False}}
    assert connection_reads(pool_inputs(spec=unprotected)) == ()
    assert connection_reads(pool_inputs(spec=KEDA)) == (BROKER,)
    assert connection_reads(pool_inputs(TEAM)) == (BROKER, RESULT_BACKEND)
    # Nothing is read for a pool that is blocked earlier, paused, or in a status-only pass.
    assert connection_reads(pool_inputs(TEAM, labels={})) == ()
    assert connection_reads(pool_inputs(TEAM, apply=False)) == ()
    assert connection_reads(pool_inputs(TEAM, app=app_body(spec={"paused": True}))) == ()


def test_the_builtin_target_polls_the_pools_queues_with_its_policy() -> None:
    plan = plan_pool(pool_inputs(TEAM, connections=CROSS, scaler=ScalerView()))
    assert plan.track is not None
    assert plan.track.key == ("team-a", "emails")
    assert plan.track.queues == ("emails", "emails.priority")
    assert (plan.track.policy.min_replicas, plan.track.policy.max_replicas) == (1, 10)
    assert plan.track.policy.target_per_replica == 20
    assert plan.autoscaler == {"engine": "builtin", "summary": "builtin 1-10", "desiredReplicas": 1}


def test_observed_pools_are_measured_for_the_metrics_without_being_scaled() -> None:
    """With --celery-metrics-interval, a pool the built-in engine does not scale is still
    measured (a Target without a policy, at that interval) and listened to quietly; its
    broker is read for that, and a failure to read it blocks nothing."""
    unprotected = {"scaleDown": {"protectBusyWorkers": False}}
    off = pool_inputs(spec=unprotected, connections={BROKER: Connection(REDIS)})
    assert wanted_reads(off) == ()
    on = dataclasses.replace(off, observe=30.0, scaler=ScalerView())
    assert wanted_reads(on) == (BROKER,)
    assert connection_reads(on) == (), "needed by nothing but the metrics"
    plan = plan_pool(on)
    assert plan.track is not None
    assert plan.track.policy is None
    assert plan.track.interval == 30.0
    assert plan.track.queues == ("celery",)
    assert plan.monitor is not None
    assert plan.quiet
    assert plan.replicas == 2, "the spec's replicas, not a decision"
    # A builtin pool keeps its policy and its polling interval, and is not quiet.
    builtin = plan_pool(pool_inputs(TEAM, connections=CROSS, scaler=ScalerView(), observe=30.0))
    assert builtin.track is not None
    assert builtin.track.policy is not None
    assert builtin.track.interval != 30.0
    assert not builtin.quiet
    # A broker URL that cannot be read or parsed: no metrics, but no block either.
    broken = dataclasses.replace(on, connections={BROKER: Connection(problem="no such Secret")})
    assert plan_pool(broken).blocked is None
    bad = dataclasses.replace(on, connections={BROKER: Connection("nonsense://")})
    assert plan_pool(bad).blocked is None
    assert plan_pool(bad).track is None
    # A status-only pass does not stop the measuring.
    assert not plan_pool(dataclasses.replace(on, apply=False)).untrack


def test_a_status_only_pass_leaves_the_scaler_polling() -> None:
    plan = plan_pool(pool_inputs(TEAM, apply=False, scaler=ScalerView(replicas=3)))
    assert plan.track is None
    assert not plan.untrack
    assert plan.children is None
    paused = plan_pool(pool_inputs(TEAM, app=app_body(spec={"paused": True}), scaler=ScalerView()))
    assert paused.untrack


def test_an_unbound_pool_names_the_secrets_it_may_own() -> None:
    plan = plan_pool(pool_inputs(TEAM, labels={}))
    assert plan.known_secrets == ("shop-emails-connection", "shop-emails-keda")


def test_the_children_carry_the_owner_reference() -> None:
    plan = plan_pool(pool_inputs(TEAM, connections=CROSS, scaler=ScalerView()))
    assert plan.children is not None
    for child in plan.children:
        (ref,) = child["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"]) == (
            "CeleryWorkerPool",
            "emails",
            "uid-team-a-emails",
        )


def test_plans_are_pure_functions_of_their_inputs() -> None:
    for case in CASES:
        inputs = case.plan()
        before = copy.deepcopy(dataclasses.asdict(inputs))
        first, second = PLANS[case.kind](inputs), PLANS[case.kind](inputs)
        assert first == second, case.id
        assert dataclasses.asdict(inputs) == before, f"{case.id}: the plan changed its inputs"
