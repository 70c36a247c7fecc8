"""Autoscalers of a CeleryWorkerPool: HorizontalPodAutoscaler and KEDA objects (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery_operator.api.celeryapp import CeleryApp
from celery_operator.api.celeryworkerpool import (
    AutoscalingSpec,
    CeleryWorkerPool,
    QueueLengthScaling,
)
from celery_operator.api.labels import fit
from celery_operator.brokerurl import (
    REDIS_PRIORITY_STEPS,
    BrokerURL,
    BrokerURLError,
    redis_queue_keys,
)
from celery_operator.render import common as c
from celery_operator.render.celeryworkerpool import worker_labels

# Without it an HPA scales down as soon as one sync sees less load: Celery load is bursty,
# so hold the highest recommendation of the last five minutes and step down gently.
DEFAULT_BEHAVIOR: dict[str, Any] = {
    "scaleDown": {
        "stabilizationWindowSeconds": 300,
        "selectPolicy": "Max",
        "policies": [
            {"type": "Percent", "value": 50, "periodSeconds": 60},
            {"type": "Pods", "value": 1, "periodSeconds": 60},
        ],
    }
}


def _resource_metrics(a: AutoscalingSpec) -> list[dict[str, Any]]:
    metrics = []
    for name, target in (("cpu", a.cpu), ("memory", a.memory)):
        if target is not None:
            metrics.append(
                {
                    "type": "Resource",
                    "resource": {
                        "name": name,
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": target.average_utilization,
                        },
                    },
                }
            )
    return metrics


def autoscaler_engine(pool: CeleryWorkerPool) -> str | None:
    """Which engine scales the pool: None (fixed replicas), 'hpa', 'keda' or 'builtin'."""
    a = pool.spec.autoscaling
    if a is None:
        return None
    if a.queue_length is not None:
        return a.queue_length.engine
    return "hpa"


def build_hpa(
    app: CeleryApp, pool: CeleryWorkerPool, owner: dict[str, Any] | None
) -> dict[str, Any] | None:
    """An autoscaling/v2 HPA on CPU/memory; None unless the pool scales with engine 'hpa'."""
    a = pool.spec.autoscaling
    if a is None or autoscaler_engine(pool) != "hpa":
        return None
    meta = pool.metadata
    name = c.worker_deployment_name(app.metadata["name"], meta["name"])
    return c.clone(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": c.metadata(name, meta["namespace"], worker_labels(app, pool), owner),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicas": a.min_replicas,
                "maxReplicas": a.max_replicas,
                "metrics": _resource_metrics(a),
                "behavior": a.behavior or DEFAULT_BEHAVIOR,
            },
        }
    )


# ---- KEDA -----------------------------------------------------------------------------
KEDA_API = "keda.sh/v1alpha1"


@dataclass(frozen=True)
class KedaObjects:
    """What engine keda needs: credentials in the pool's namespace (None with workload
    identity), the TriggerAuthentication that points at them, and the ScaledObject."""

    secret: dict[str, Any] | None
    trigger_authentication: dict[str, Any]
    scaled_object: dict[str, Any]


def keda_secret_name_of(app_name: str, pool_name: str) -> str:
    return fit(f"{c.worker_deployment_name(app_name, pool_name)}-keda", 63)


def keda_secret_name(app: CeleryApp, pool: CeleryWorkerPool) -> str:
    return keda_secret_name_of(app.metadata["name"], pool.metadata["name"])


def sqs_queue_name(queue: str) -> str:
    """The SQS queue name kombu uses for a Celery queue (kombu's entity_name)."""
    fifo = queue.endswith(".fifo")
    base = queue[: -len(".fifo")] if fifo else queue
    base = base.replace(".", "-")
    base = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in base)
    return f"{base}.fifo" if fifo else base


def _keda_credentials(broker: BrokerURL, ql: QueueLengthScaling) -> dict[str, str]:
    """TriggerAuthentication parameter -> secret value, per broker family."""
    if broker.family == "redis":
        creds = {"address": broker.address()}
        if broker.username:
            creds["username"] = broker.username
        if broker.password:
            creds["password"] = broker.password
        return creds
    if broker.family == "amqp":
        return {"host": broker.amqp_url()}
    if broker.family == "sqs":
        if ql.sqs is not None and ql.sqs.identity_owner == "workload":
            return {}
        return {"awsAccessKeyID": broker.username, "awsSecretAccessKey": broker.password}
    raise BrokerURLError(f"KEDA cannot read queue lengths from a {broker.scheme}:// broker")


def _queue_triggers(
    queues: list[str], ql: QueueLengthScaling, broker: BrokerURL, auth: str
) -> list[dict[str, Any]]:
    target, activation = str(ql.target_per_replica), str(ql.activation)
    ref = {"name": auth}
    triggers: list[dict[str, Any]] = []
    for i, queue in enumerate(queues):
        if broker.family == "redis":
            for step, key in zip(REDIS_PRIORITY_STEPS, redis_queue_keys(queue), strict=True):
                meta = {
                    "listName": key,
                    "listLength": target,
                    "activationListLength": activation,
                    "databaseIndex": str(broker.redis_db),
                }
                if broker.tls:
                    meta["enableTLS"] = "true"
                triggers.append(
                    {
                        "type": "redis",
                        "name": f"q{i}p{step}",
                        "metadata": meta,
                        "authenticationRef": dict(ref),
                    }
                )
        elif broker.family == "amqp":
            meta = {
                "protocol": "amqp",
                "queueName": queue,
                "mode": "QueueLength",
                "value": target,
                "activationValue": activation,
            }
            triggers.append(
                {
                    "type": "rabbitmq",
                    "name": f"q{i}",
                    "metadata": meta,
                    "authenticationRef": dict(ref),
                }
            )
        elif broker.family == "sqs":
            if ql.sqs is None:
                raise BrokerURLError(
                    "autoscaling.queueLength.sqs (region, queueUrlPrefix) is required for an "
                    "sqs:// broker with engine keda"
                )
            meta = {
                "queueURL": f"{ql.sqs.queue_url_prefix}{sqs_queue_name(queue)}",
                "queueLength": target,
                "activationQueueLength": activation,
                "awsRegion": ql.sqs.region,
            }
            triggers.append(
                {
                    "type": "aws-sqs-queue",
                    "name": f"q{i}",
                    "metadata": meta,
                    "authenticationRef": dict(ref),
                }
            )
        else:
            raise BrokerURLError(f"KEDA cannot read queue lengths from a {broker.scheme}:// broker")
    return triggers


def build_keda_objects(
    app: CeleryApp, pool: CeleryWorkerPool, broker: BrokerURL, owner: dict[str, Any] | None
) -> KedaObjects | None:
    """ScaledObject + TriggerAuthentication (+ Secret); None unless engine is keda.

    Raises BrokerURLError for a broker KEDA cannot read (the validators reject it first).
    """
    a = pool.spec.autoscaling
    if a is None or a.queue_length is None or a.queue_length.engine != "keda":
        return None
    ql = a.queue_length
    meta = pool.metadata
    ns = meta["namespace"]
    name = c.worker_deployment_name(app.metadata["name"], meta["name"])
    labels = worker_labels(app, pool)
    secret_name = keda_secret_name(app, pool)

    creds = _keda_credentials(broker, ql)
    secret = None
    auth_spec: dict[str, Any]
    if creds:
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": c.metadata(secret_name, ns, labels, owner),
            "type": "Opaque",
            "data": {k: c.b64(v) for k, v in sorted(creds.items())},
        }
        auth_spec = {
            "secretTargetRef": [
                {"parameter": k, "name": secret_name, "key": k} for k in sorted(creds)
            ]
        }
    else:
        auth_spec = {"podIdentity": {"provider": "aws", "identityOwner": "workload"}}
    auth = {
        "apiVersion": KEDA_API,
        "kind": "TriggerAuthentication",
        "metadata": c.metadata(name, ns, labels, owner),
        "spec": auth_spec,
    }

    triggers = _queue_triggers(pool.spec.queues, ql, broker, name)
    advanced: dict[str, Any] = {
        "restoreToOriginalReplicaCount": False,
        "horizontalPodAutoscalerConfig": {"behavior": a.behavior or DEFAULT_BEHAVIOR},
    }
    if len(triggers) > 1:
        # KEDA takes the max over triggers; the backlog is the sum over all lists.
        advanced["scalingModifiers"] = {
            "formula": " + ".join(t["name"] for t in triggers),
            "target": str(ql.target_per_replica),
            "activationTarget": str(ql.activation),
            "metricType": "AverageValue",
        }
    for resource, target in (("cpu", a.cpu), ("memory", a.memory)):
        if target is not None:
            triggers.append(
                {
                    "type": resource,
                    "name": resource,
                    "metricType": "Utilization",
                    "metadata": {"value": str(target.average_utilization)},
                }
            )
    scaled_object = {
        "apiVersion": KEDA_API,
        "kind": "ScaledObject",
        "metadata": c.metadata(name, ns, labels, owner),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "pollingInterval": ql.polling_interval_seconds,
            "cooldownPeriod": ql.cooldown_seconds,
            "minReplicaCount": a.min_replicas,
            "maxReplicaCount": a.max_replicas,
            "advanced": advanced,
            "triggers": triggers,
        },
    }
    return KedaObjects(c.clone(secret) if secret else None, c.clone(auth), c.clone(scaled_object))
