"""Autoscalers of a CeleryWorkerPool: HorizontalPodAutoscaler and KEDA objects (pure)."""

from __future__ import annotations

import copy
from typing import Any

from celery_operator.api.celeryapp import CeleryApp
from celery_operator.api.celeryworkerpool import AutoscalingSpec, CeleryWorkerPool
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
    return copy.deepcopy(
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
