"""The Grafana dashboard's panels, on data from a real run (docs/img/dashboard.svg).

Not a benchmark: a picture of what the dashboard shows, drawn from the operator's own
/metrics scraped every 2 s while a real load runs. The control plane is testenv's (kwok
pods), the broker a real Redis, and the workers real `celery worker` processes on this
machine, one per worker pod, named after it (`--hostname=<pool>.<namespace>@<pod>`, as
the operator renders it): started when the pod appears, sent SIGTERM (Celery's warm
shutdown: the task in hand finishes) when it goes. The load: a burst of tasks, a steady
trickle, then nothing; pool `emails` scales with the built-in engine, pool `reports` has
fixed replicas and is measured only. Every task sent is counted in the workers' logs:
the run fails if one is lost or runs twice.

    python -m bench.dashboard [--seconds 240]      (make dashboard-picture)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from celery import Celery
from tests.integration import monitorapp
from tests.support.brokers import RedisServer
from tests.support.metrics import samples

from bench.harness import ROOT, environment, machine, operator, save, wait
from celery_operator.k8s import client

GROUP = "celeryproject.org/v1alpha1"
NS = "shop"
PICTURE = ROOT / "docs" / "img" / "dashboard.svg"
TASK_SECONDS = 2.0


def objects(url: str) -> list[dict[str, Any]]:
    def pool(name: str, **spec: Any) -> dict[str, Any]:
        return {
            "apiVersion": GROUP,
            "kind": "CeleryWorkerPool",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"appRef": {"name": "shop"}, "queues": [name], **spec},
        }

    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "shop-broker", "namespace": NS},
            "stringData": {"url": url},
        },
        {
            "apiVersion": GROUP,
            "kind": "CeleryApp",
            "metadata": {"name": "shop", "namespace": NS},
            "spec": {
                "image": "example/shop:1",
                "app": "shop.celery:app",
                "broker": {"url": {"secretKeyRef": {"name": "shop-broker", "key": "url"}}},
            },
        },
        pool(
            "emails",
            concurrency=2,
            autoscaling={
                "minReplicas": 1,
                "maxReplicas": 8,
                "queueLength": {
                    "engine": "builtin",
                    "targetPerReplica": 10,
                    "pollingIntervalSeconds": 2,
                    "cooldownSeconds": 30,
                },
            },
        ),
        pool("reports", replicas=2, concurrency=1),
    ]


class Workers:
    """One real `celery worker` per worker pod of the namespace, for as long as it exists."""

    def __init__(self, url: str, workdir: Path) -> None:
        self.url, self.workdir = url, workdir
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.stopped: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self._stop = threading.Event()

    def pods(self) -> dict[str, str]:
        pods = client.list_objects("v1", "Pod", NS, "app.kubernetes.io/component=worker")
        return {
            p["metadata"]["name"]: p["metadata"]["labels"]["celeryproject.org/pool"]
            for p in pods
            if not p["metadata"].get("deletionTimestamp")
        }

    def start(self, pod: str, pool: str) -> None:
        log = self.workdir / f"{pod}.log"
        self.logs.append(log)
        concurrency = "2" if pool == "emails" else "1"
        argv = [
            sys.executable, "-m", "celery", "-A", "tests.integration.monitorapp",
            "worker", f"--hostname={pool}.{NS}@{pod}", f"--queues={pool}",
            f"--concurrency={concurrency}", "--without-mingle", "--without-gossip",
            "--loglevel=INFO",
        ]  # fmt: skip
        with log.open("wb") as fh:
            self.running[pod] = subprocess.Popen(
                argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={"CELERY_BROKER_URL": self.url, "PATH": "/usr/bin:/bin"},
                start_new_session=True,
            )

    def follow(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(client.ApiError):
                pods = self.pods()
                for pod, pool in pods.items():
                    if pod not in self.running:
                        self.start(pod, pool)
                for pod in [p for p in self.running if p not in pods]:
                    proc = self.running.pop(pod)
                    proc.send_signal(signal.SIGTERM)  # warm shutdown, as the kubelet does
                    self.stopped.append(proc)
            self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()
        for proc in [*self.running.values(), *self.stopped]:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.running.values(), *self.stopped]:
            try:
                proc.wait(timeout=TASK_SECONDS + 20)
            except subprocess.TimeoutExpired:
                proc.kill()

    def counts(self, ids: set[str]) -> dict[str, int]:
        text = "".join(p.read_text(errors="replace") for p in self.logs)
        done = [i for i in ids if f"[{i}] succeeded" in text]
        twice = [i for i in ids if text.count(f"[{i}] received") > 1]
        return {"sent": len(ids), "completed": len(done), "duplicated": len(twice)}


@contextlib.contextmanager
def running(workers: Workers) -> Iterator[None]:
    t = threading.Thread(target=workers.follow, daemon=True)
    t.start()
    try:
        yield
    finally:
        workers.stop()
        t.join(timeout=10)


def scrape(port: int) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    kept = ("celery_operator_pool_", "celery_operator_scaler_scale", "celery_operator_ready")
    return [(n, dict(labels), v) for n, labels, v in samples(text) if n.startswith(kept)]


def run(seconds: float) -> dict[str, Any]:
    series: list[dict[str, Any]] = []
    ids: set[str] = set()
    with (
        environment() as env,
        RedisServer() as redis,
        tempfile.TemporaryDirectory(prefix="dashboard-") as tmp,
    ):
        client.configure(str(env.kubeconfig))
        env.apply(objects(redis.url))
        workers = Workers(redis.url, Path(tmp))
        sender = Celery("dashboard", broker=redis.url)
        with operator(env, "--celery-metrics-interval=2") as proc, running(workers):
            port = proc.metrics_port  # type: ignore[attr-defined]
            wait(lambda: len(workers.running) == 3, 120, every=1)
            started = time.monotonic()

            def send(queue: str, n: int) -> None:
                for _ in range(n):
                    ids.add(sender.send_task(monitorapp.SLEEP, (TASK_SECONDS,), queue=queue).id)

            plan = {10: ("emails", 160), 12: ("reports", 12)}  # a burst, at 10 s
            while (t := time.monotonic() - started) < seconds:
                if (burst := plan.pop(int(t), None)) is not None:
                    send(*burst)
                if 70 <= t < 130:  # a steady trickle: 3 tasks a second
                    send("emails", 6)
                series.append({"t": round(t, 1), "samples": scrape(port)})
                time.sleep(max(0.0, started + len(series) * 2.0 - time.monotonic()))
            wait(lambda: redis.client().llen("emails") == 0, 120, every=1)
        counts = workers.counts(ids)
    result = {
        "machine": machine(),
        "seconds": seconds,
        "tasks": counts,
        "series": series,
        "command": f"python -m bench.dashboard --seconds {seconds:g}",
    }
    save("dashboard", result)
    if counts["completed"] != counts["sent"] or counts["duplicated"]:
        raise SystemExit(f"tasks lost or duplicated: {counts}")
    return result


def value(point: dict[str, Any], name: str, agg: str = "sum", **match: str) -> float | None:
    found = [
        v for n, labels, v in point["samples"] if n == name and match.items() <= labels.items()
    ]
    if not found:
        return None
    return max(found) if agg == "max" else sum(found)


def draw(result: dict[str, Any], path: Path = PICTURE) -> None:
    import matplotlib

    matplotlib.use("svg")
    import matplotlib.pyplot as plt

    pts = result["series"]
    t = [p["t"] for p in pts]

    def line(ax: Any, label: str, name: str, **match: str) -> None:
        ax.plot(t, [value(p, name, **match) for p in pts], label=label, linewidth=1.6)

    panels: list[tuple[str, list[tuple[str, str, dict[str, str]]]]] = [
        (
            "Backlog per queue (waiting tasks)",
            [
                ("emails", "celery_operator_pool_waiting_tasks", {"queue": "emails"}),
                ("reports", "celery_operator_pool_waiting_tasks", {"queue": "reports"}),
            ],
        ),
        (
            "Workers of pool emails",
            [
                (
                    "desired",
                    "celery_operator_pool_replicas",
                    {"pool": "emails", "which": "desired"},
                ),
                ("ready", "celery_operator_pool_replicas", {"pool": "emails", "which": "ready"}),
                ("online", "celery_operator_pool_workers", {"pool": "emails", "state": "online"}),
                ("busy", "celery_operator_pool_workers", {"pool": "emails", "state": "busy"}),
            ],
        ),
        (
            "Tasks running (active tasks)",
            [
                ("emails", "celery_operator_pool_active_tasks", {"pool": "emails"}),
                ("reports", "celery_operator_pool_active_tasks", {"pool": "reports"}),
            ],
        ),
        (
            "Scaling decisions (built-in scaler, cumulative)",
            [
                ("up", "celery_operator_scaler_scale_events_total", {"direction": "up"}),
                ("down", "celery_operator_scaler_scale_events_total", {"direction": "down"}),
            ],
        ),
        (
            "Broker up / pools Ready",
            [
                ("broker up (emails)", "celery_operator_pool_broker_up", {"pool": "emails"}),
                ("Ready pools", "celery_operator_ready", {"kind": "CeleryWorkerPool"}),
            ],
        ),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.3 * len(panels)), sharex=True)
    for ax, (title, lines) in zip(axes, panels, strict=True):
        for label, name, match in lines:
            line(ax, label, name, **match)
        ax.set_title(title, loc="left", fontsize=10)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("seconds")
    tasks = result["tasks"]
    fig.suptitle(
        f"celery-operator dashboard panels, scraped from a real run: {tasks['sent']} tasks "
        f"sent, {tasks['completed']} completed, {tasks['duplicated']} duplicated",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Date": None})
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=240.0)
    p.add_argument("--draw-only", help="draw from a saved result (bench/results/*.json)")
    a = p.parse_args()
    result = json.loads(Path(a.draw_only).read_text()) if a.draw_only else run(a.seconds)
    draw(result)
    print(f"{PICTURE.relative_to(ROOT)}: {result['tasks']}")


if __name__ == "__main__":
    main()
