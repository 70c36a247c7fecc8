"""Drift repair and status propagation, through watches.

- repair: a worker Deployment is deleted -> a new one exists (its floor: the same client
  re-creating it right after the delete returns, i.e. two API round trips);
- status: a worker Deployment's readyReplicas changes -> the app's status.workers says so
  (floor: one status PATCH of the app, the write the operator has to make at the least).

    python -m bench.drift_status [--trials 15]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.harness import environment, machine, operator, save, summary, wait
from celery_operator.k8s import client

GROUP = "celeryproject.org/v1alpha1"
NS = "bench-drift"


def deployment(name: str) -> dict[str, Any] | None:
    return client.get_object("apps/v1", "Deployment", name, NS)


def run(trials: int) -> dict[str, Any]:
    with environment() as env:
        client.configure(str(env.kubeconfig))
        env.apply(
            [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
                {
                    "apiVersion": GROUP,
                    "kind": "CeleryApp",
                    "metadata": {"name": "shop", "namespace": NS},
                    "spec": {
                        "image": "a/b:1",
                        "app": "a:b",
                        "broker": {"url": {"value": "redis://r:6379/0"}},
                    },
                },
                {
                    "apiVersion": GROUP,
                    "kind": "CeleryWorkerPool",
                    "metadata": {"name": "w", "namespace": NS},
                    "spec": {"appRef": {"name": "shop"}, "replicas": 1},
                },
            ]
        )
        repair: list[float] = []
        floor_repair: list[float] = []
        status: list[float] = []
        floor_status: list[float] = []
        with operator(env, "--workers=8"):
            wait(
                lambda: (deployment("shop-w") or {}).get("status", {}).get("readyReplicas") == 1, 60
            )
            for _ in range(trials):
                old = deployment("shop-w")
                assert old is not None
                t = time.perf_counter()
                client.delete_object("apps/v1", "Deployment", "shop-w", NS)
                wait(
                    lambda old=old: (
                        (d := deployment("shop-w")) is not None
                        and d["metadata"]["uid"] != old["metadata"]["uid"]
                    ),
                    30,
                    every=0.002,
                )
                repair.append(time.perf_counter() - t)
                wait(
                    lambda: (
                        (deployment("shop-w") or {}).get("status", {}).get("readyReplicas") == 1
                    ),
                    60,
                )
            for i in range(trials):
                n = 2 + i % 2  # alternate 2 <-> 3 replicas
                client.patch_object(GROUP, "CeleryWorkerPool", "w", NS, {"spec": {"replicas": n}})
                wait(
                    lambda n=n: (
                        (deployment("shop-w") or {}).get("status", {}).get("readyReplicas") == n
                    ),
                    60,
                    every=0.002,
                )
                t = time.perf_counter()

                def app_says(n: int = n) -> bool:
                    app = client.get_object(GROUP, "CeleryApp", "shop", NS) or {}
                    return (
                        int(
                            ((app.get("status") or {}).get("workers") or {}).get(
                                "readyReplicas", -1
                            )
                        )
                        == n
                    )

                wait(app_says, 30, every=0.002)
                status.append(time.perf_counter() - t)
        # Floors, without the operator: the least the same work costs through the API.
        plain = deployment("shop-w")
        assert plain is not None
        for _ in range(trials):
            t = time.perf_counter()
            client.delete_object("apps/v1", "Deployment", "shop-w", NS)
            manifest = {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "shop-w", "namespace": NS},
                "spec": plain["spec"],
            }
            manifest["spec"] = {
                k: v
                for k, v in plain["spec"].items()
                if k in ("replicas", "selector", "template", "strategy")
            }
            client.apply_object(manifest)
            floor_repair.append(time.perf_counter() - t)
            t = time.perf_counter()
            client.patch_status(GROUP, "CeleryApp", "shop", NS, {"workers": {"readyReplicas": 1}})
            floor_status.append(time.perf_counter() - t)
    result = {
        "benchmark": "drift repair and status propagation",
        "machine": machine(),
        "repair": summary(repair),
        "repair_floor": summary(floor_repair),
        "repair_ratio": summary(repair)["median"] / summary(floor_repair)["median"],
        "status": summary(status),
        "status_floor": summary(floor_status),
        "status_ratio": summary(status)["median"] / summary(floor_status)["median"],
        "command": f"python -m bench.drift_status --trials {trials}",
    }
    save("drift_status", result)
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=15)
    r = run(p.parse_args().trials)
    for k in ("repair", "repair_floor", "status", "status_floor"):
        print(
            f"{k}: median {r[k]['median'] * 1000:.1f} ms (p10 {r[k]['p10'] * 1000:.1f}, p90 {r[k]['p90'] * 1000:.1f})"
        )
    print(f"ratios: repair {r['repair_ratio']:.1f}x, status {r['status_ratio']:.1f}x")


if __name__ == "__main__":
    main()
