"""What busy-worker protection costs at 100 pools whose workers come and go busy.

100 CeleryWorkerPools of one app, 3 worker pods each on kwok; this process plays their 300
Celery workers against a real Redis: each sends a `worker-heartbeat` every 2 s (as Celery
does, on the app's event exchange) and runs "tasks" of 20-60 s with idle gaps of 12-40 s,
at random. Over a measured window:

- the operator's writes to worker pods (deletion costs) next to their floor: the
  idle <-> busy crossings the workers made (each needs one write, at the least);
- its status writes, and its CPU, next to a baseline run in the same benchmark: the same
  pools with `protectBusyWorkers: false` (no listening, no costs);
- its connections to the broker (Redis clients with the operator running minus without).

    python -m bench.busy_workers [--pools 100] [--window 120]
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.support.brokers import RedisServer

from bench.harness import api_requests, cpu_seconds, environment, machine, operator, save, wait
from celery_operator.k8s import client

GROUP = "celeryproject.org/v1alpha1"
NS = "bench-busy"
REPLICAS = 3
SETTLE = 10.0  # a worker counts busy this long after its last task (scaling/workers.py)


@dataclass
class Worker:
    node: str
    busy_until: float = 0.0
    idle_until: float = 0.0
    active: int = 0
    idle_since: float = float("-inf")
    settled_busy: bool = False


@dataclass
class Workers:
    """The simulated workers: heartbeats every 2 s, tasks at random, crossings counted."""

    url: str
    nodes: list[str]
    seed: int = 7
    crossings: int = 0
    counting: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        from kombu import Connection, Exchange, Producer

        rnd = random.Random(self.seed)
        now = time.monotonic()
        workers = [Worker(n, idle_until=now + rnd.uniform(0, 30)) for n in self.nodes]
        exchange = Exchange("celeryev", type="fanout", durable=False, auto_delete=True)
        with Connection(self.url) as conn:
            producer = Producer(conn.channel(), exchange=exchange, serializer="json")
            while not self._stop.is_set():
                now = time.monotonic()
                for w in workers:
                    self._step(w, now, rnd)
                    producer.publish(
                        {
                            "type": "worker-heartbeat",
                            "hostname": w.node,
                            "active": w.active,
                            "freq": 2.0,
                            "processed": 0,
                            "timestamp": time.time(),
                        },
                        routing_key="worker.heartbeat",
                    )
                self._stop.wait(2.0)

    def _step(self, w: Worker, now: float, rnd: random.Random) -> None:
        if w.active and now >= w.busy_until:
            w.active, w.idle_since = 0, now
            w.idle_until = now + rnd.uniform(12, 40)
        elif not w.active and now >= w.idle_until:
            w.active, w.busy_until = 1, now + rnd.uniform(20, 60)
        busy = w.active > 0 or now - w.idle_since < SETTLE
        if busy != w.settled_busy:
            w.settled_busy = busy
            if self.counting:
                self.crossings += 1

    def stop(self) -> None:
        self._stop.set()


def objects(pools: int, url: str, protect: bool) -> list[dict[str, Any]]:
    app = {
        "apiVersion": GROUP,
        "kind": "CeleryApp",
        "metadata": {"name": "shop", "namespace": NS},
        "spec": {"image": "example/app:1", "app": "app:app", "broker": {"url": {"value": url}}},
    }
    return [
        app,
        *(
            {
                "apiVersion": GROUP,
                "kind": "CeleryWorkerPool",
                "metadata": {"name": f"p{i}", "namespace": NS},
                "spec": {
                    "appRef": {"name": "shop"},
                    "queues": [f"q{i}"],
                    "replicas": REPLICAS,
                    "scaleDown": {"protectBusyWorkers": protect},
                },
            }
            for i in range(pools)
        ),
    ]


def worker_nodes() -> list[str]:
    pods = client.list_objects("v1", "Pod", NS, "app.kubernetes.io/component=worker")
    return [
        f"{p['metadata']['labels']['celeryproject.org/pool']}.{NS}@{p['metadata']['name']}"
        for p in pods
    ]


def redis_clients(server: RedisServer) -> int:
    return len(server.client().client_list())


def measure(
    env: Any, server: RedisServer, pools: int, window: float, protect: bool
) -> dict[str, Any]:
    env.apply(objects(pools, server.url, protect))
    base = redis_clients(server)
    with operator(env, "--workers=8") as proc:
        wait(lambda: len(worker_nodes()) == pools * REPLICAS, 180, every=1)
        workers = Workers(server.url, worker_nodes())
        sim = threading.Thread(target=workers.run, daemon=True)
        sim.start()
        try:
            time.sleep(30)  # warm-up: the first heartbeats, the first costs (a window, not a wait)
            before, cpu0 = api_requests(proc), cpu_seconds(proc.pid)
            workers.counting = True
            connections = redis_clients(server) - base - 1  # minus the simulator's own
            time.sleep(window)
            workers.counting = False
            after, cpu1 = api_requests(proc), cpu_seconds(proc.pid)
        finally:
            workers.stop()
            sim.join(timeout=10)
    per_min = 60.0 / window
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    return {
        "protect": protect,
        "pod_writes_per_min": delta.get("PATCH pods", 0.0) * per_min,
        "status_writes_per_min": delta.get("PATCH celeryworkerpools/status", 0.0) * per_min,
        "crossings_per_min": workers.crossings * per_min,
        "cpu_cores": (cpu1 - cpu0) / window,
        "broker_connections": connections,
        "requests": delta,
    }


def run(pools: int, window: float) -> dict[str, Any]:
    with environment() as env, RedisServer() as server:
        client.configure(str(env.kubeconfig))
        env.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}])
        protected = measure(env, server, pools, window, protect=True)
        baseline = measure(env, server, pools, window, protect=False)
    result = {
        "machine": machine(),
        "pools": pools,
        "workers": pools * REPLICAS,
        "window_s": window,
        "protected": protected,
        "baseline": baseline,
        "writes_per_crossing": protected["pod_writes_per_min"]
        / max(protected["crossings_per_min"], 1e-9),
        "cpu_ratio": protected["cpu_cores"] / max(baseline["cpu_cores"], 1e-9),
        "command": f"python -m bench.busy_workers --pools {pools} --window {window:g}",
    }
    save("busy_workers", result)
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pools", type=int, default=100)
    p.add_argument("--window", type=float, default=120.0)
    a = p.parse_args()
    r = run(a.pools, a.window)
    for k in ("protected", "baseline"):
        print(k, {x: v for x, v in r[k].items() if x != "requests"})
    print(f"writes per crossing {r['writes_per_crossing']:.2f}, CPU ratio {r['cpu_ratio']:.2f}")


if __name__ == "__main__":
    main()
