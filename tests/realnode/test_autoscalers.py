"""The autoscalers the operator writes objects for, reading real metrics (issue 18).

CPU of real worker pods: metrics-server (testenv/metricsserver.py) reads the real kubelet's
figures; workers that burn CPU (`shop.burn`) scale the pool up, and idle ones scale it
back down after the stabilization window (short here). Through an HPA the operator writes
(`cpu` alone), and through KEDA (testenv/keda.py) with a queue trigger that never asks
for more than one worker beside the cpu trigger: KEDA's HPA takes the highest of the two.
Every task sent is counted: none lost, none twice, none killed by the scale-down.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from testenv.metricsserver import MetricsServer

from tests.support.cluster import Cluster, wait_for
from tests.support.shop import Shop, assert_exactly_once, pool_of_shop, report

pytestmark = pytest.mark.timeout(900)


@pytest.mark.parametrize("engine", ["hpa", "keda"])
def test_cpu_scales_real_workers_up_and_back_down(
    cluster: Cluster,
    shop: Shop,
    metrics_server: MetricsServer,
    request: pytest.FixtureRequest,
    engine: str,
) -> None:
    ns, pool = shop.namespace, f"cpu-{engine}"
    autoscaling: dict[str, Any] = {
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
    }
    if engine == "keda":
        request.getfixturevalue("keda")
        autoscaling["queueLength"] = {
            "engine": "keda",
            "targetPerReplica": 100,  # 6 tasks never ask for a second worker
            "pollingIntervalSeconds": 2,
            "cooldownSeconds": 10,
        }
    cluster.apply(
        pool_of_shop(
            ns,
            pool,
            {
                "queues": [pool],
                "concurrency": 1,
                "prefetchMultiplier": 1,
                "resources": {
                    "requests": {"cpu": "50m", "memory": "96Mi"},
                    "limits": {"cpu": "200m", "memory": "384Mi"},
                },
                "autoscaling": autoscaling,
            },
        )
    )
    try:
        shop.wait_pool(pool, timeout=180)
        name = cluster.get("cwp", pool, ns)["status"]["deployment"]
        hpa_name = name if engine == "hpa" else f"keda-hpa-{name}"
        metrics = 1 if engine == "hpa" else 2  # KEDA's: cpu and the queue's composite

        def hpa_status() -> dict[str, Any]:
            return dict(cluster.get("hpa", hpa_name, ns).get("status") or {})

        wait_for(
            f"the HPA to read its {metrics} metric(s)",
            lambda: len(hpa_status().get("currentMetrics") or []) == metrics,
            timeout=120,
        )
        ledger = shop.ledger()
        for _i in range(6):
            shop.send(ledger, "shop.burn", [20], pool)
        wait_for(
            "the HPA to scale the pool up on CPU",
            lambda: int(cluster.get("deployment", name, ns)["spec"]["replicas"]) > 1,
            timeout=180,
        )
        up = hpa_status()
        print(
            f"\n{engine} on CPU: {json.dumps(up.get('currentMetrics'))} -> {up['desiredReplicas']}"
        )
        tally = assert_exactly_once(ledger, timeout=300)
        wait_for(
            "idle workers scaled back down to 1",
            lambda: int(cluster.get("deployment", name, ns)["spec"]["replicas"]) == 1,
            timeout=240,
        )
        report(f"{engine} on CPU, up and down", tally)
    finally:
        cluster.run("delete", "celeryworkerpool", pool, "-n", ns, "--wait=true")
