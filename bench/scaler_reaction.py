"""Built-in scaler reaction time: a queue crosses the threshold -> the worker Deployment's
replicas are updated. Against a floor measured in the same run: the smallest loop that does
the same job (poll the same Redis list at the same interval, patch a plain Deployment).

    python -m bench.scaler_reaction [--trials N] [--interval S]
"""

from __future__ import annotations

import argparse
import math
import threading
import time
from typing import Any

from tests.support.brokers import RedisServer

from bench.harness import Env, environment, machine, operator, save, summary, wait
from celery_operator.k8s import client

TARGET = 10
CROSSING = 11  # ceil(11 / 10) = 2 replicas, from 1


def _ns(env: Env, name: str) -> None:
    env.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}])


def _replicas(ns: str, name: str) -> int:
    d = client.get_object("apps/v1", "Deployment", name, ns)
    return int(((d or {}).get("spec") or {}).get("replicas", -1))


def _trials(redis: Any, key: str, ns: str, deployment: str, trials: int) -> list[float]:
    out = []
    for _ in range(trials):
        redis.delete(key)
        wait(lambda: _replicas(ns, deployment) == 1, 60)
        started = time.perf_counter()
        redis.lpush(key, *["t"] * CROSSING)
        wait(lambda: _replicas(ns, deployment) == 2, 60, every=0.005)
        out.append(time.perf_counter() - started)
    redis.delete(key)
    return out


def floor_loop(
    redis: Any, key: str, ns: str, name: str, interval: float, stop: threading.Event
) -> None:
    """The minimal scaler: LLEN, ceil(n / target), PATCH replicas when it changes."""
    current = 1
    while not stop.wait(interval):
        wanted = max(1, min(10, math.ceil(redis.llen(key) / TARGET)))
        if wanted != current:
            client.patch_object("apps/v1", "Deployment", name, ns, {"spec": {"replicas": wanted}})
            current = wanted


def run(trials: int, interval: float) -> dict[str, Any]:
    with environment() as env, RedisServer() as redis_server:
        client.configure(str(env.kubeconfig))
        r = redis_server.client()
        # The operator's pool.
        _ns(env, "bench-scaler")
        app = {
            "apiVersion": "celeryproject.org/v1alpha1",
            "kind": "CeleryApp",
            "metadata": {"name": "bench", "namespace": "bench-scaler"},
            "spec": {
                "image": "example/app:1",
                "app": "app:app",
                "broker": {"url": {"value": redis_server.url}},
            },
        }
        pool = {
            "apiVersion": "celeryproject.org/v1alpha1",
            "kind": "CeleryWorkerPool",
            "metadata": {"name": "q", "namespace": "bench-scaler"},
            "spec": {
                "appRef": {"name": "bench"},
                "queues": ["q"],
                "autoscaling": {
                    "minReplicas": 1,
                    "maxReplicas": 10,
                    "queueLength": {
                        "targetPerReplica": TARGET,
                        "pollingIntervalSeconds": int(interval),
                        "cooldownSeconds": 0,
                    },
                },
            },
        }
        # The floor's plain Deployment.
        _ns(env, "bench-floor")
        plain = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "plain", "namespace": "bench-floor"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "plain"}},
                "template": {
                    "metadata": {"labels": {"app": "plain"}},
                    "spec": {"containers": [{"name": "c", "image": "example/app:1"}]},
                },
            },
        }
        env.apply([plain])
        stop = threading.Event()
        t = threading.Thread(
            target=floor_loop,
            args=(r, "floor", "bench-floor", "plain", interval, stop),
            daemon=True,
        )
        t.start()
        floor = _trials(r, "floor", "bench-floor", "plain", trials)
        stop.set()
        t.join()
        with operator(env):
            env.apply([app, pool])
            wait(lambda: _replicas("bench-scaler", "bench-q") == 1, 60)
            ours = _trials(r, "q", "bench-scaler", "bench-q", trials)
    result = {
        "benchmark": "builtin scaler reaction (queue crosses threshold -> Deployment replicas)",
        "machine": machine(),
        "polling_interval_s": interval,
        "operator": summary(ours),
        "floor": summary(floor),
        "ratio_median": summary(ours)["median"] / summary(floor)["median"],
        "command": f"python -m bench.scaler_reaction --trials {trials} --interval {interval:g}",
    }
    save("scaler_reaction", result)
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=15)
    p.add_argument("--interval", type=float, default=1.0)
    a = p.parse_args()
    res = run(a.trials, a.interval)
    o, f = res["operator"], res["floor"]
    print(
        f"operator: median {o['median']:.3f}s (p10 {o['p10']:.3f}, p90 {o['p90']:.3f}) n={o['n']}"
    )
    print(
        f"floor:    median {f['median']:.3f}s (p10 {f['p10']:.3f}, p90 {f['p90']:.3f}) n={f['n']}"
    )
    print(f"ratio (median): {res['ratio_median']:.2f}x")


if __name__ == "__main__":
    main()
