"""The autoscalers the operator writes objects for, reading real metrics (issue 18).

An HPA on CPU: metrics-server (testenv/metricsserver.py) reads the real kubelet's figures
of the real worker pods; worker pods that burn CPU (`shop.burn`) scale the pool up, and
idle ones scale it back down after the stabilization window (short here). Every task
sent is counted: none lost, none twice, none killed by the scale-down.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from testenv.metricsserver import MetricsServer

from tests.support.cluster import Cluster, wait_for
from tests.support.shop import Shop, assert_exactly_once, pool_of_shop, report

pytestmark = pytest.mark.timeout(900)


def hpa(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return dict(cluster.get("hpa", name, ns))


def test_an_hpa_on_cpu_scales_real_workers_up_and_back_down(
    cluster: Cluster, shop: Shop, metrics_server: MetricsServer
) -> None:
    ns = shop.namespace
    cluster.apply(
        pool_of_shop(
            ns,
            "cpu",
            {
                "queues": ["cpu"],
                "concurrency": 1,
                "prefetchMultiplier": 1,
                "resources": {
                    "requests": {"cpu": "50m", "memory": "96Mi"},
                    "limits": {"cpu": "200m", "memory": "384Mi"},
                },
                "autoscaling": {
                    "minReplicas": 1,
                    "maxReplicas": 3,
                    "cpu": {"averageUtilization": 50},
                    "behavior": {
                        "scaleUp": {"stabilizationWindowSeconds": 0},
                        "scaleDown": {
                            "stabilizationWindowSeconds": 20,
                            "policies": [{"type": "Pods", "value": 3, "periodSeconds": 15}],
                        },
                    },
                },
            },
        )
    )
    try:
        shop.wait_pool("cpu", timeout=180)
        name = cluster.get("cwp", "cpu", ns)["status"]["deployment"]
        wait_for(
            "the HPA to read the pods' CPU",
            lambda: (hpa(cluster, ns, name).get("status") or {}).get("currentMetrics"),
            timeout=120,
        )
        ledger = shop.ledger()
        for _i in range(6):
            shop.send(ledger, "shop.burn", [20], "cpu")
        wait_for(
            "the HPA to scale the pool up on CPU",
            lambda: int(cluster.get("deployment", name, ns)["spec"]["replicas"]) > 1,
            timeout=180,
        )
        up = hpa(cluster, ns, name)["status"]
        print(f"\nHPA on CPU: {json.dumps(up.get('currentMetrics'))} -> {up['desiredReplicas']}")
        tally = assert_exactly_once(ledger, timeout=300)
        wait_for(
            "idle workers scaled back down to 1",
            lambda: int(cluster.get("deployment", name, ns)["spec"]["replicas"]) == 1,
            timeout=240,
        )
        report("HPA on CPU, up and down", tally)
    finally:
        cluster.run("delete", "celeryworkerpool", "cpu", "-n", ns, "--wait=true")
