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
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    Env,
    api_requests,
    control_plane_cpu,
    cpu_delta,
    cpu_seconds,
    environment,
    machine,
    operator,
    save,
    summary,
    wait,
)
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


def delete_namespaces(env: Env, names: list[str]) -> None:
    """Deletes namespaces and waits until they (and so everything in them) are gone."""
    for ns in names:
        env.kubectl("delete", "namespace", ns, "--wait=false")
    wanted = set(names)
    wait(
        lambda: (
            not wanted & {x["metadata"]["name"] for x in client.list_objects("v1", "Namespace")}
        ),
        900,
        every=0.5,
    )


def is_ready(obj: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions", [])
    )


def converged(app: dict[str, Any]) -> bool:
    """Ready, and Ready because of both pools and the Flower: an app whose pools the
    operator has not seen yet is Ready too (it has nothing to run), which is not the end."""
    status = app.get("status") or {}
    return (
        is_ready(app)
        and (status.get("pools") or {}).get("ready") == 2
        and bool((status.get("flower") or {}).get("ready"))
    )


def ready_apps(prefix: str) -> int:
    items = client.list_objects(GROUP, "CeleryApp")
    return sum(1 for a in items if a["metadata"]["namespace"].startswith(prefix) and converged(a))


def ready_deployments(prefix: str) -> int:
    items = client.list_objects("apps/v1", "Deployment")
    return sum(
        1
        for d in items
        if d["metadata"]["namespace"].startswith(prefix)
        and (d.get("status") or {}).get("readyReplicas", 0) >= d["spec"].get("replicas", 1)
    )


def proc_stats(pid: int) -> tuple[float, float, float]:
    """(RSS MiB, peak RSS MiB, CPU seconds) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()

    def kib(field: str) -> int:
        return int(next(ln for ln in status.splitlines() if ln.startswith(field)).split()[1])

    return kib("VmRSS") / 1024, kib("VmHWM") / 1024, cpu_seconds(pid)


def floor_run(env: Env, n: int, concurrency: int, tag: str) -> tuple[float, dict[str, float]]:
    """The children directly, no operator running: (seconds, CPU seconds by process)."""
    ns = namespaces(env, f"floor{tag}", n)
    objs = [c for i in range(n) for c in children(crs(ns[i // PER_NAMESPACE], i))]
    cpu0 = control_plane_cpu()
    started = time.perf_counter()
    create_all(objs, concurrency)
    wait(lambda: ready_deployments(f"floor{tag}-") >= 3 * n, 3600, every=0.5)
    took = time.perf_counter() - started
    cpu = cpu_delta(cpu0, control_plane_cpu())
    # The floor's objects must be gone (garbage collection is real work for the apiserver
    # and the controller-manager) before the operator's run is timed on the same machine.
    delete_namespaces(env, ns)
    return took, cpu


def operator_run(env: Env, n: int, concurrency: int, tag: str, extras: bool) -> dict[str, Any]:
    """The custom resources, with the operator running, until every app has converged.
    With `extras`: then 30 s idle, then an update of every pool, measured too."""
    ns = namespaces(env, f"conv{tag}", n)
    objs = [o for i in range(n) for o in crs(ns[i // PER_NAMESPACE], i)]
    out: dict[str, Any] = {}
    with operator(env, "--workers=16") as proc:
        cpu0 = control_plane_cpu()
        op0 = cpu_seconds(proc.pid)
        started = time.perf_counter()
        create_all(objs, concurrency)
        wait(lambda: ready_apps(f"conv{tag}-") >= n, 3600, every=0.5)
        out["operator_s"] = time.perf_counter() - started
        out["cpu_s_by_process"] = {
            **cpu_delta(cpu0, control_plane_cpu()),
            "operator": cpu_seconds(proc.pid) - op0,
        }
        out["api_requests_to_converge"] = api_requests(proc)
        if extras:
            out.update(idle_and_update(proc, objs, concurrency, tag))
    delete_namespaces(env, ns)
    return out


def idle_and_update(
    proc: subprocess.Popen[bytes], objs: list[dict[str, Any]], concurrency: int, tag: str
) -> dict[str, Any]:
    rss_converged, _, cpu0 = proc_stats(proc.pid)
    idle_t0 = time.perf_counter()
    time.sleep(30)  # idle is a duration: measure what 30 s of managing costs
    rss_idle, _, cpu1 = proc_stats(proc.pid)
    idle_cpu = (cpu1 - cpu0) / (time.perf_counter() - idle_t0)
    # Update every pool: a new concurrency rolls every worker Deployment.
    pools = [o for o in objs if o["kind"] == "CeleryWorkerPool"]
    for p in pools:
        p["spec"]["concurrency"] = 3
    started = time.perf_counter()
    create_all(pools, concurrency)

    def rolled() -> bool:
        items = client.list_objects(GROUP, "CeleryWorkerPool")
        mine = [p for p in items if p["metadata"]["namespace"].startswith(f"conv{tag}-")]
        return all(
            (p.get("status") or {}).get("observedGeneration") == p["metadata"]["generation"]
            and is_ready(p)
            for p in mine
        )

    wait(rolled, 3600, every=0.5)
    update = time.perf_counter() - started
    rss_update, rss_peak, cpu_u1 = proc_stats(proc.pid)
    return {
        "update_all_pools_s": update,
        "rss_mib_after_converge": rss_converged,
        "rss_mib_idle": rss_idle,
        "rss_mib_after_update": rss_update,
        "rss_mib_peak": rss_peak,
        "cpu_cores_idle": idle_cpu,
        "cpu_s_update": cpu_u1 - cpu1,
    }


def run_one(env: Env, n: int, concurrency: int, trials: int) -> dict[str, Any]:
    """`trials` pairs of (floor, operator) runs, interleaved so that both see the same
    machine; the last operator run also measures idle and an update of every pool."""
    pairs = []
    for t in range(trials):
        floor, floor_cpu = floor_run(env, n, concurrency, f"{n}t{t}")
        ours = operator_run(env, n, concurrency, f"{n}t{t}", extras=t == trials - 1)
        pairs.append({"floor_s": floor, "floor_cpu_s_by_process": floor_cpu, **ours})
        print(
            f"N={n} trial {t + 1}/{trials}: floor {floor:.1f} s, operator {ours['operator_s']:.1f} s",
            flush=True,
        )
    last = pairs[-1]
    return {
        "apps": n,
        "custom_resources": 4 * n,
        "children": 6 * n,
        "trials": trials,
        "floor": summary([p["floor_s"] for p in pairs]),
        "operator": summary([p["operator_s"] for p in pairs]),
        "ratio": summary([p["operator_s"] / p["floor_s"] for p in pairs]),
        **{k: v for k, v in last.items() if k not in ("floor_s", "operator_s")},
        "per_trial": [{"floor_s": p["floor_s"], "operator_s": p["operator_s"]} for p in pairs],
    }


def run(apps: list[int], concurrency: int, trials: dict[int, int]) -> dict[str, Any]:
    results = []
    with environment() as env:
        client.configure(str(env.kubeconfig), pool_size=max(32, concurrency * 2))
        for n in apps:
            r = run_one(env, n, concurrency, trials.get(n, 1))
            print(r, flush=True)
            results.append(r)
    data = {
        "benchmark": "convergence: N apps with a Flower and two pools each -> all Ready",
        "machine": machine(),
        "concurrency": concurrency,
        "results": results,
        "command": (
            f"python -m bench.convergence --apps {' '.join(map(str, apps))} "
            f"--trials {' '.join(str(trials.get(n, 1)) for n in apps)} --concurrency {concurrency}"
        ),
    }
    save("convergence", data)
    return data


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--apps", type=int, nargs="+", default=[100, 300])
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument(
        "--trials",
        type=int,
        nargs="+",
        default=[3],
        help="runs of each N, one number for all or one per N (e.g. 3 3 1)",
    )
    a = p.parse_args()
    trials = a.trials * len(a.apps) if len(a.trials) == 1 else a.trials
    if len(trials) != len(a.apps):
        p.error("--trials takes one number, or one per --apps value")
    run(a.apps, a.concurrency, dict(zip(a.apps, trials, strict=True)))


if __name__ == "__main__":
    main()
