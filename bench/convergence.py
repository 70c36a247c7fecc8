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
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.harness import (
    ROOT,
    Env,
    Watcher,
    api_requests,
    control_plane_cpu,
    cpu_delta,
    cpu_seconds,
    environment,
    machine,
    operator,
    save,
    summary,
    thread_cpu,
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
    """Server-side apply under the field manager "bench", as a user's kubectl or GitOps tool
    would: the operator's own manager entries are then only on what the operator wrote."""

    def one(o: dict[str, Any]) -> dict[str, Any]:
        return client.apply_object(o, field_manager="bench")

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, objs))


def namespaces(env: Env, prefix: str, n: int) -> list[str]:
    names = [f"{prefix}-{k}" for k in range(math.ceil(n / PER_NAMESPACE))]
    env.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in names])
    return names


CR_KINDS = (
    "celeryapps.celeryproject.org,celeryworkerpools.celeryproject.org,flowers.celeryproject.org"
)


def delete_namespaces(env: Env, names: list[str]) -> None:
    """Deletes namespaces and waits until they (and so everything in them) are gone.

    The custom resources are deleted by name of kind first, and again while a namespace
    stays: on this loaded control plane the namespace controller has been seen to report
    "All content successfully removed" with the custom resources (and so, through their
    owner references, their children) still there, and to wait without end."""

    def remaining() -> set[str]:
        return set(names) & {x["metadata"]["name"] for x in client.list_objects("v1", "Namespace")}

    for ns in names:
        env.kubectl("delete", CR_KINDS, "--all", "-n", ns, "--wait=false")
        env.kubectl("delete", "namespace", ns, "--wait=false")
    deadline = time.monotonic() + 900
    while left := remaining():
        if time.monotonic() > deadline:
            raise TimeoutError(f"namespaces {sorted(left)} not gone within 900s")
        with contextlib.suppress(Exception):
            wait(lambda: not remaining(), 30, every=0.5)
            return
        for ns in left:  # stuck: delete the custom resources again
            env.run("delete", CR_KINDS, "--all", "-n", ns, "--wait=false")


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


def deployment_ready(d: dict[str, Any]) -> bool:
    return (d.get("status") or {}).get("readyReplicas", 0) >= d["spec"].get("replicas", 1)


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
    watch = Watcher("apps/v1", "Deployment", deployment_ready, f"floor{tag}-")
    cpu0 = control_plane_cpu()
    started = time.perf_counter()
    create_all(objs, concurrency)
    watch.wait_for(3 * n, 3600)
    took = time.perf_counter() - started
    cpu = cpu_delta(cpu0, control_plane_cpu())
    watch.stop()
    # The floor's objects must be gone (garbage collection is real work for the apiserver
    # and the controller-manager) before the operator's run is timed on the same machine.
    delete_namespaces(env, ns)
    return took, cpu


def operator_run(
    env: Env, n: int, concurrency: int, tag: str, extras: bool, src: str | None, args: list[str]
) -> dict[str, Any]:
    """The custom resources, with the operator (from `src`, else this checkout) running,
    until every app has converged. With `extras`: then 30 s idle, then an update of every
    pool, measured too."""
    ns = namespaces(env, f"conv{tag}", n)
    objs = [o for i in range(n) for o in crs(ns[i // PER_NAMESPACE], i)]
    out: dict[str, Any] = {}
    with operator(env, "--workers=16", *args, src=src) as proc:
        watch = Watcher(GROUP, "CeleryApp", converged, f"conv{tag}-")
        cpu0 = control_plane_cpu()
        op0 = cpu_seconds(proc.pid)
        threads0 = thread_cpu(proc)
        started = time.perf_counter()
        create_all(objs, concurrency)
        watch.wait_for(n, 3600)
        out["operator_s"] = time.perf_counter() - started
        watch.stop()
        out["cpu_s_by_process"] = {
            **cpu_delta(cpu0, control_plane_cpu()),
            "operator": cpu_seconds(proc.pid) - op0,
        }
        out["operator_cpu_s_by_thread"] = cpu_delta(threads0, thread_cpu(proc))
        out["api_requests_to_converge"] = api_requests(proc)
        out["rss_mib_converged"] = proc_stats(proc.pid)[0]
        if os.environ.get("BENCH_HEAP_SIGNAL"):  # a heap census by a hook (docs/performance.md)
            os.kill(proc.pid, signal.SIGUSR1)
            time.sleep(float(os.environ["BENCH_HEAP_SIGNAL"]))
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

    def rolled(p: dict[str, Any]) -> bool:
        return (p.get("status") or {}).get("observedGeneration") == p["metadata"][
            "generation"
        ] and is_ready(p)

    watch = Watcher(GROUP, "CeleryWorkerPool", rolled, f"conv{tag}-")
    watch.wait_for(len(pools), 3600)
    watch.stop()
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


def run_one(
    env: Env,
    n: int,
    concurrency: int,
    trials: int,
    before: str | None = None,
    extras: bool = True,
    args: list[str] | None = None,
    with_floor: bool = True,
) -> dict[str, Any]:
    """`trials` rounds of (floor, operator) runs, or (floor, before, operator) with a
    `before` source, interleaved so that all see the same machine; the last operator run
    also measures idle and an update of every pool (with `extras`). Without `with_floor`:
    the operator alone (its memory and requests at a size whose floor is not needed)."""
    rounds = []
    for t in range(trials):
        row: dict[str, Any] = {"floor_s": None, "floor_cpu_s_by_process": {}}
        if with_floor:
            floor, floor_cpu = floor_run(env, n, concurrency, f"{n}t{t}")
            row = {"floor_s": floor, "floor_cpu_s_by_process": floor_cpu}
        if before:
            row["before"] = operator_run(
                env, n, concurrency, f"{n}b{t}", False, before, list(args or [])
            )
        last = extras and t == trials - 1
        ours = operator_run(env, n, concurrency, f"{n}t{t}", last, None, list(args or []))
        row.update(ours)
        rounds.append(row)
        told = f", before {row['before']['operator_s']:.1f} s" if before else ""
        floor_s = f"{row['floor_s']:.1f} s" if with_floor else "not run"
        print(
            f"N={n} trial {t + 1}/{trials}: floor {floor_s}{told}, "
            f"operator {ours['operator_s']:.1f} s",
            flush=True,
        )
    out: dict[str, Any] = {
        "apps": n,
        "custom_resources": 4 * n,
        "children": 6 * n,
        "trials": trials,
        "floor": summary([r["floor_s"] for r in rounds]) if with_floor else None,
        **variant(rounds, lambda r: r),
        "per_trial": [
            {k: v for k, v in r.items() if k in ("floor_s", "operator_s")}
            | ({"before_s": r["before"]["operator_s"]} if before else {})
            for r in rounds
        ],
    }
    if before:
        out["before"] = variant(rounds, lambda r: r["before"])
    return out


def variant(rounds: list[dict[str, Any]], pick: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """One operator variant over the trials: medians of time, ratio, CPU, requests, RSS;
    the per-process and per-thread CPU of its last trial."""
    runs = [pick(r) for r in rounds]
    keys = sorted({k for x in runs for k in x["api_requests_to_converge"]})
    last = runs[-1]
    return {
        "operator": summary([x["operator_s"] for x in runs]),
        "ratio": (
            summary([x["operator_s"] / r["floor_s"] for x, r in zip(runs, rounds, strict=True)])
            if all(r["floor_s"] for r in rounds)
            else None
        ),
        "operator_cpu_s": summary([x["cpu_s_by_process"]["operator"] for x in runs]),
        "rss_mib_converged": summary([x["rss_mib_converged"] for x in runs]),
        "api_requests_median": {
            k: statistics.median(x["api_requests_to_converge"].get(k, 0.0) for x in runs)
            for k in keys
        },
        **{
            k: v
            for k, v in last.items()
            if k not in ("floor_s", "operator_s", "before", "rss_mib_converged")
        },
        "floor_cpu_s_by_process": rounds[-1]["floor_cpu_s_by_process"],
    }


def run(
    apps: list[int],
    concurrency: int,
    trials: dict[int, int],
    before: str | None = None,
    before_label: str = "",
    extras: bool | tuple[int, ...] = True,
    args: list[str] | None = None,
    operator_only: tuple[int, ...] = (),
) -> dict[str, Any]:
    """`extras`: for every size, none, or these sizes."""
    results = []
    with environment() as env:
        client.configure(str(env.kubeconfig), pool_size=max(32, concurrency * 2))
        for n in apps:
            alone = n in operator_only
            r = run_one(
                env,
                n,
                concurrency,
                trials.get(n, 1),
                None if alone else before,
                extras if isinstance(extras, bool) else n in extras,
                args,
                with_floor=not alone,
            )
            print(json.dumps(r), flush=True)
            results.append(r)
    opts = (
        (f" --before {before_label or before}" if before else "")
        + ("" if extras is True else " --no-extras" if extras is False else "")
        + ("" if isinstance(extras, bool) else "".join(f" --extras {n}" for n in extras))
        + "".join(f" --operator-only {n}" for n in operator_only)
    )
    data = {
        "benchmark": "convergence: N apps with a Flower and two pools each -> all Ready",
        "machine": machine(),
        "concurrency": concurrency,
        "before": before_label or before,
        "operator_args": list(args or []),
        "results": results,
        "command": (
            f"python -m bench.convergence --apps {' '.join(map(str, apps))} "
            f"--trials {' '.join(str(trials.get(n, 1)) for n in apps)} --concurrency {concurrency}"
            + opts
        ),
    }
    save("convergence", data)
    return data


@contextlib.contextmanager
def checkout(rev: str) -> Iterator[str]:
    """The src/ of commit `rev` of this repository, in a temporary git worktree."""
    path = Path(tempfile.mkdtemp(prefix="bench-before-"))
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev],
        check=True,
        capture_output=True,
    )
    try:
        yield str(path / "src")
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
            check=False,
            capture_output=True,
        )


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
    p.add_argument(
        "--before",
        default="",
        help="a commit of this repository: its operator runs too, in every trial, against the same floor",
    )
    p.add_argument("--no-extras", action="store_true", help="skip the idle and update phases")
    p.add_argument(
        "--extras",
        type=int,
        action="append",
        default=[],
        help="the idle and update phases only for this --apps value (repeatable)",
    )
    p.add_argument(
        "--operator-only",
        type=int,
        action="append",
        default=[],
        help="an --apps value run without floor (and without before): memory and requests",
    )
    p.add_argument(
        "--operator-arg",
        action="append",
        default=[],
        help="an extra flag for the operator (both variants), e.g. --operator-arg=--no-leader-elect",
    )
    a = p.parse_args()
    trials = a.trials * len(a.apps) if len(a.trials) == 1 else a.trials
    if len(trials) != len(a.apps):
        p.error("--trials takes one number, or one per --apps value")
    with contextlib.ExitStack() as stack:
        src = stack.enter_context(checkout(a.before)) if a.before else None
        run(
            a.apps,
            a.concurrency,
            dict(zip(a.apps, trials, strict=True)),
            src,
            a.before,
            tuple(a.extras) if a.extras else not a.no_extras,
            a.operator_arg,
            tuple(a.operator_only),
        )


if __name__ == "__main__":
    main()


SECTION = "## Convergence, memory and CPU"
CHILD_RESOURCES = (
    "deployments",
    "services",
    "poddisruptionbudgets",
    "horizontalpodautoscalers",
    "ingresses",
    "scaledobjects",
    "triggerauthentications",
    "secrets",
)


def per_app_set(reqs: dict[str, float], n: int) -> dict[str, float]:
    """The requests that follow the apps, per app-set (the informers' LISTs, one per
    watched kind at start, are in the GETs: a few in thousands); and those that follow the
    run's length or nothing (Events, the Lease, namespaces, watches), in total."""

    def total(pred: Any) -> float:
        return sum(v for k, v in reqs.items() if pred(*k.split(" ", 1)))

    def child(r: str) -> bool:
        return r in CHILD_RESOURCES

    return {
        "apply": total(lambda m, r: m == "PATCH" and child(r)) / n,
        "get": total(lambda m, r: m == "GET" and child(r)) / n,
        "delete": total(lambda m, r: m == "DELETE" and child(r)) / n,
        "status": total(lambda m, r: r.endswith("/status")) / n,
        "pods": total(lambda m, r: r == "pods" and m != "WATCH") / n,
        "events": total(lambda m, r: r == "events"),
        "lease": total(lambda m, r: r == "leases"),
        "watch": total(lambda m, r: m == "WATCH"),
    }


def _requests_row(label: str, n: int, reqs: dict[str, float]) -> str:
    p = per_app_set(reqs, n)
    app_set = p["apply"] + p["get"] + p["delete"] + p["status"] + p["pods"]
    return (
        f"| {n} | {label} | {p['apply']:.2f} | {p['get']:.2f} | {p['status']:.2f} | "
        f"**{app_set:.2f}** | {p['events']:.0f} | {p['lease']:.0f} | {p['watch']:.0f} |"
    )


def rss_growth(points: list[tuple[int, float]]) -> str:
    """RSS = a + b*N by least squares over the sizes run, and how far each size is from
    that line: is the growth linear, and how much does an app-set cost."""
    if len(points) < 2:
        return ""
    xs, ys = [float(n) for n, _ in points], [y for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    a = my - b * mx
    sizes = ", ".join(str(n) for n, _ in points)
    if len(points) == 2:  # a line through two points: nothing to say about linearity
        return f"RSS once converged: {a:.0f} MiB + {b * 1024:.1f} KiB per app-set (N={sizes})."
    off = ", ".join(f"N={n}: {y - (a + b * n):+.1f} MiB" for n, y in points)
    return (
        f"RSS once converged: {a:.0f} MiB + {b * 1024:.1f} KiB per app-set (least squares over "
        f"N={sizes}; each size off that line by {off})."
    )


def section(r: dict[str, Any], before: dict[str, Any] | None = None) -> list[str]:
    """The section of docs/benchmarks.md; `before`: a run of the same benchmark with the
    operator of an earlier commit (--before in the same run, or a separate run)."""
    prior: dict[int, dict[str, Any]] = {}
    label = r.get("before") or ""
    for x in r["results"]:
        if "before" in x:
            prior[x["apps"]] = {**x["before"], "floor": x["floor"], "own_floor": False}
    if before is not None:
        label = before.get("before") or before.get("label") or "before"
        for x in before["results"]:
            prior[x["apps"]] = {**x, "own_floor": True}
    lines = [
        SECTION,
        "",
        "N CeleryApps, each with a Flower and two worker pools (4N custom resources, 6N",
        "children, 3N pods on kwok), created with "
        f"{r['concurrency']} concurrent clients (server-side apply, field manager `bench`),",
        "until every app is Ready with both pools and its Flower ready (seen through a watch).",
        "Floor: the same children, rendered by the same builders, created directly with the",
        "same concurrency, until every Deployment is ready. Runs alternate and each starts once",
        "the previous run's namespaces are gone. Times are medians over the trials, with min-max.",
        "",
    ]
    if prior:
        lines += [
            f"Before: the operator at `{label}`, measured in the same session against its own",
            "floors ("
            + (
                "the same trials"
                if not any(p["own_floor"] for p in prior.values())
                else "a run of its own just before"
            )
            + ").",
            "",
        ]
    lines += [
        "| apps | trials | operator | floor | ratio | operator CPU | RSS converged |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(n: int, name: str, x: dict[str, Any]) -> str:
        o, f, q = x["operator"], x["floor"], x["ratio"]
        cpu, rss = x.get("operator_cpu_s"), x.get("rss_mib_converged")
        floor = f"{f['median']:.1f} s ({f['min']:.1f}-{f['max']:.1f})" if f else "not run"
        ratio = f"**{q['median']:.2f}x** ({q['min']:.2f}-{q['max']:.2f})" if q else "-"
        return (
            f"| {n} | {x.get('trials', o['n'])} {name} | "
            f"{o['median']:.1f} s ({o['min']:.1f}-{o['max']:.1f}) | {floor} | {ratio} | "
            + (f"{cpu['median']:.1f} s |" if cpu else "- |")
            + (f" {rss['median']:.0f} MiB |" if rss else " - |")
        )

    for x in r["results"]:
        n = x["apps"]
        if n in prior:
            lines.append(row(n, "before", prior[n]))
        lines.append(row(n, "after" if prior else "", x))
    growth = rss_growth([(x["apps"], x["rss_mib_converged"]["median"]) for x in r["results"]])
    if growth:
        lines += ["", growth]
    lines += [
        "",
        "The operator's API requests until convergence (medians over the trials). Per app-set:",
        "server-side applies of children, GETs of child kinds (the guards before a create,",
        "and one LIST per watched kind at start), status writes, pod writes; per run (they",
        "follow the run's length, not N): Events posted (at most 10/s after a burst of 50),",
        "the Lease (GET + PUT every 2 s), watches.",
        "",
        "| apps | operator | applies | GETs | status writes | **per app-set** | Events | Lease | watches |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["results"]:
        n = x["apps"]
        if n in prior:
            lines.append(
                _requests_row(
                    "before",
                    n,
                    prior[n].get("api_requests_median") or prior[n]["api_requests_to_converge"],
                )
            )
        lines.append(
            _requests_row(
                "after" if prior else "",
                n,
                x.get("api_requests_median") or x["api_requests_to_converge"],
            )
        )
    threads = [(x["apps"], x.get("operator_cpu_s_by_thread") or {}) for x in r["results"]]
    if any(t for _, t in threads):
        lines += [
            "",
            "Where the operator's CPU went until convergence (last trial, CPU seconds by thread;",
            "`celery_operator_thread_cpu_seconds_total`): the event loop (`MainThread`), the",
            "reconciles, the informers (`watch-*`), the Event poster, the Lease, the broker",
            "monitor (busy-worker protection and LoadObserved), the metrics-only scaler, the",
            "Secret poller.",
            "",
            "| apps | loop | reconciles | informers | Events | Lease | broker monitor | scaler | Secret poller | other |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for n, t in threads:

            def g(*names: str, t: dict[str, float] = t) -> float:
                return sum(v for k, v in t.items() if k in names)

            watch = sum(v for k, v in t.items() if k.startswith("watch-"))
            named = (
                g(
                    "MainThread",
                    "reconcile",
                    "events",
                    "lease",
                    "broker-monitor",
                    "scaler",
                    "secret-poller",
                )
                + watch
            )
            lines.append(
                f"| {n} | {g('MainThread'):.1f} | {g('reconcile'):.1f} | {watch:.1f} | {g('events'):.1f} | "
                f"{g('lease'):.2f} | {g('broker-monitor'):.1f} | {g('scaler'):.1f} | {g('secret-poller'):.2f} | "
                f"{sum(t.values()) - named:.1f} |"
            )
    extras = [x for x in r["results"] if "rss_mib_idle" in x]
    if extras:
        lines += [
            "",
            "The operator process while it manages the N apps (last trial): idle over 30 s, then",
            "while every pool's spec changes (each worker Deployment rolls) until every pool is",
            "Ready on its new generation. Peak RSS is the process's high-water mark over the run.",
            "",
            "| apps | RSS converged | RSS idle | RSS peak | CPU idle | update all pools | CPU for update |",
            "|---|---|---|---|---|---|---|",
        ]
        for x in extras:
            lines.append(
                f"| {x['apps']} | {x['rss_mib_after_converge']:.0f} MiB | {x['rss_mib_idle']:.0f} MiB | "
                f"{x['rss_mib_peak']:.0f} MiB | {x['cpu_cores_idle']:.3f} cores | "
                f"{x['update_all_pools_s']:.1f} s | {x['cpu_s_update']:.1f} s |"
            )
    lines += [
        "",
        "Where the machine's CPU went (last trial, CPU seconds; the machine has "
        f"{os.cpu_count()} cores and is busy throughout every run, so time follows total work):",
        "",
        "| apps | run | kube-apiserver | etcd | controller-manager | scheduler + kwok | operator | all |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cpu_row(n: int, name: str, cpu: dict[str, float]) -> str:
        return (
            f"| {n} | {name} | {cpu.get('kube-apiserver', 0):.1f} | {cpu.get('etcd', 0):.1f} | "
            f"{cpu.get('kube-controller-manager', 0):.1f} | "
            f"{cpu.get('kube-scheduler', 0) + cpu.get('kwok', 0):.1f} | {cpu.get('operator', 0):.1f} | "
            f"{sum(cpu.values()):.1f} |"
        )

    for x in r["results"]:
        n = x["apps"]
        if n in prior:
            p = prior[n]
            if p["own_floor"]:
                lines.append(cpu_row(n, "floor (before's run)", p["floor_cpu_s_by_process"]))
            lines.append(cpu_row(n, "operator before", p["cpu_s_by_process"]))
        if x["floor_cpu_s_by_process"]:
            lines.append(cpu_row(n, "floor", x["floor_cpu_s_by_process"]))
        lines.append(cpu_row(n, "operator" + (" after" if prior else ""), x["cpu_s_by_process"]))
    lines += ["", f"Reproduce: `{r['command']}`"]
    if before is not None:
        lines.append(f"Before: `{before['command']}` with the operator of `{label}`")
    return [*lines, ""]
