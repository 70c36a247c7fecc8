"""Convergence: N CeleryApps, each with a Flower and two pools, from the first create to
every app Ready; against the floor: the same child objects (rendered by the same builders)
created directly through the API with the same client concurrency, no operator, until
every Deployment is ready. Also the operator's RSS and CPU while it manages them, idle and
during an update of every pool.

    python -m bench.convergence --apps 100 300 [--concurrency 16]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import time
from pathlib import Path
from typing import Any

from bench.harness import Env, api_requests, environment, machine, operator, save, wait
from celery_operator.api.celeryapp import CeleryApp
from celery_operator.api.celeryworkerpool import CeleryWorkerPool
from celery_operator.api.flower import Flower
from celery_operator.k8s import client
from celery_operator.render import celeryworkerpool as render_pool
from celery_operator.render import flower as render_flower

PER_NAMESPACE = 100
GROUP = "celeryproject.org/v1alpha1"


def crs(ns: str, i: int) -> list[dict[str, Any]]:
    app = {
        "apiVersion": GROUP,
        "kind": "CeleryApp",
        "metadata": {"name": f"app{i}", "namespace": ns},
        "spec": {
            "image": "example/app:1.0.0",
            "app": "app.worker:app",
            "broker": {"url": {"value": "redis://redis:6379/0"}},
        },
    }
    pools = [
        {
            "apiVersion": GROUP,
            "kind": "CeleryWorkerPool",
            "metadata": {"name": f"app{i}-{q}", "namespace": ns},
            "spec": {"appRef": {"name": f"app{i}"}, "queues": [q]},
        }
        for q in ("default", "emails")
    ]
    flower = {
        "apiVersion": GROUP,
        "kind": "Flower",
        "metadata": {"name": f"app{i}", "namespace": ns},
        "spec": {"appRef": {"name": f"app{i}"}},
    }
    return [app, *pools, flower]


def children(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the operator would create for one app, without owners (the floor's objects)."""
    meta = {"uid": "00000000-0000-0000-0000-000000000000"}
    app = CeleryApp.model_validate({**objs[0], "metadata": {**objs[0]["metadata"], **meta}})
    out: list[dict[str, Any]] = []
    for p in objs[1:3]:
        pool = CeleryWorkerPool.model_validate({**p, "metadata": {**p["metadata"], **meta}})
        out.append(render_pool.build_worker_deployment(app, pool, None, replicas=1))
        pdb = render_pool.build_worker_pdb(app, pool, None)
        assert pdb is not None
        out.append(pdb)
    fl = Flower.model_validate({**objs[3], "metadata": {**objs[3]["metadata"], **meta}})
    out += [
        render_flower.build_flower_deployment(app, fl, None),
        render_flower.build_flower_service(app, fl, None),
    ]
    return out


def create_all(objs: list[dict[str, Any]], concurrency: int) -> None:
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client.apply_object, objs))


def namespaces(env: Env, prefix: str, n: int) -> list[str]:
    names = [f"{prefix}-{k}" for k in range(math.ceil(n / PER_NAMESPACE))]
    env.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in names])
    return names


def ready_apps() -> int:
    items = client.list_objects(GROUP, "CeleryApp")
    return sum(
        1
        for a in items
        if any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (a.get("status") or {}).get("conditions", [])
        )
    )


def ready_deployments(prefix: str) -> int:
    items = client.list_objects("apps/v1", "Deployment")
    return sum(
        1
        for d in items
        if d["metadata"]["namespace"].startswith(prefix)
        and (d.get("status") or {}).get("readyReplicas", 0) >= d["spec"].get("replicas", 1)
    )


def proc_stats(pid: int) -> tuple[float, float]:
    """(RSS MiB, CPU seconds) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    import os

    return rss_kb / 1024, ticks / os.sysconf("SC_CLK_TCK")


def run_one(env: Env, n: int, concurrency: int) -> dict[str, Any]:
    # Floor: the children directly, no operator running.
    floor_ns = namespaces(env, f"floor{n}", n)
    floor_objs = [c for i in range(n) for c in children(crs(floor_ns[i // PER_NAMESPACE], i))]
    started = time.perf_counter()
    create_all(floor_objs, concurrency)
    wait(lambda: ready_deployments(f"floor{n}-") >= 3 * n, 3600, every=0.5)
    floor = time.perf_counter() - started
    for ns in floor_ns:
        env.kubectl("delete", "namespace", ns, "--wait=false")

    op_ns = namespaces(env, f"conv{n}", n)
    objs = [o for i in range(n) for o in crs(op_ns[i // PER_NAMESPACE], i)]
    with operator(env, "--workers=16") as proc:
        started = time.perf_counter()
        create_all(objs, concurrency)
        wait(lambda: ready_apps() >= n, 3600, every=0.5)
        ours = time.perf_counter() - started
        calls = api_requests(proc)
        rss_busy, cpu_busy = proc_stats(proc.pid)
        idle_t0 = time.perf_counter()
        _, cpu0 = proc_stats(proc.pid)
        time.sleep(30)  # idle is a duration: measure what 30 s of managing costs
        rss_idle, cpu1 = proc_stats(proc.pid)
        idle_cpu = (cpu1 - cpu0) / (time.perf_counter() - idle_t0)
        # Update every pool: a new concurrency rolls every worker Deployment.
        pools = [o for o in objs if o["kind"] == "CeleryWorkerPool"]
        for p in pools:
            p["spec"]["concurrency"] = 3
        started = time.perf_counter()
        _, cpu_u0 = proc_stats(proc.pid)
        create_all(pools, concurrency)

        def rolled() -> bool:
            items = client.list_objects(GROUP, "CeleryWorkerPool")
            mine = [p for p in items if p["metadata"]["namespace"].startswith(f"conv{n}-")]
            return all(
                (p.get("status") or {}).get("observedGeneration") == p["metadata"]["generation"]
                for p in mine
            )

        wait(rolled, 3600, every=0.5)
        update = time.perf_counter() - started
        rss_update, cpu_u1 = proc_stats(proc.pid)
    for ns in op_ns:
        env.kubectl("delete", "namespace", ns, "--wait=false")
    return {
        "apps": n,
        "custom_resources": 4 * n,
        "children": 6 * n,
        "operator_s": ours,
        "floor_s": floor,
        "ratio": ours / floor,
        "update_all_pools_s": update,
        "rss_mib_after_converge": rss_busy,
        "rss_mib_idle": rss_idle,
        "rss_mib_after_update": rss_update,
        "cpu_s_converge": cpu_busy,
        "cpu_cores_idle": idle_cpu,
        "cpu_s_update": cpu_u1 - cpu_u0,
        "api_requests_to_converge": calls,
    }


def run(apps: list[int], concurrency: int) -> dict[str, Any]:
    results = []
    with environment() as env:
        client.configure(str(env.kubeconfig), pool_size=max(32, concurrency * 2))
        for n in apps:
            r = run_one(env, n, concurrency)
            print(r, flush=True)
            results.append(r)
    data = {
        "benchmark": "convergence: N apps with a Flower and two pools each -> all Ready",
        "machine": machine(),
        "concurrency": concurrency,
        "results": results,
        "command": f"python -m bench.convergence --apps {' '.join(map(str, apps))} --concurrency {concurrency}",
    }
    save("convergence", data)
    return data


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--apps", type=int, nargs="+", default=[100, 300])
    p.add_argument("--concurrency", type=int, default=16)
    a = p.parse_args()
    run(a.apps, a.concurrency)


if __name__ == "__main__":
    main()
