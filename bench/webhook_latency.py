"""Webhook latency: AdmissionReviews over TLS at several client concurrencies, against the
floor of the same server stack (same process, TLS and HTTP stack) answering a trivial
endpoint; and the latency the webhooks add to a `create` through the apiserver.

    python -m bench.webhook_latency [--requests 400]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.harness import Env, environment, machine, save, summary, wait
from celery_operator.certs.dev import issue_dev_certs
from celery_operator.k8s import client
from celery_operator.manifests.webhooks import build_webhook_configurations

GROUP = "celeryproject.org/v1alpha1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pool_review(ns: str) -> dict[str, Any]:
    pool = {
        "apiVersion": GROUP,
        "kind": "CeleryWorkerPool",
        "metadata": {"name": "bench", "namespace": ns},
        "spec": {"appRef": {"name": "shop", "namespace": ns}, "queues": ["celery"]},
    }
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {
                "group": "celeryproject.org",
                "version": "v1alpha1",
                "kind": "CeleryWorkerPool",
            },
            "operation": "CREATE",
            "namespace": ns,
            "name": "bench",
            "object": pool,
        },
    }


def load(
    url: str, body: dict[str, Any] | None, concurrency: int, requests: int, ca: Path
) -> list[float]:
    """Latencies (s) of `requests` requests from `concurrency` keep-alive clients."""
    per = requests // concurrency

    def worker() -> list[float]:
        out = []
        with httpx.Client(verify=str(ca), http2=False, timeout=10) as c:
            for _ in range(per):
                t = time.perf_counter()
                r = c.post(url, json=body) if body is not None else c.get(url)
                r.raise_for_status()
                out.append(time.perf_counter() - t)
        return out

    with concurrent.futures.ThreadPoolExecutor(concurrency) as ex:
        futures = [ex.submit(worker) for _ in range(concurrency)]
        return [x for f in futures for x in f.result()]


def create_latencies(env: Env, ns: str, n: int, prefix: str) -> list[float]:
    out = []
    for i in range(n):
        obj = {
            "apiVersion": GROUP,
            "kind": "Flower",
            "metadata": {"name": f"{prefix}{i}", "namespace": ns},
            "spec": {"appRef": {"name": f"{prefix}-app{i}"}},
        }
        t = time.perf_counter()
        client.apply_object(obj)
        out.append(time.perf_counter() - t)
    return out


def run(requests: int) -> dict[str, Any]:
    with environment() as env:
        client.configure(str(env.kubeconfig))
        ns = "bench-webhook"
        env.apply(
            [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
                {
                    "apiVersion": GROUP,
                    "kind": "CeleryApp",
                    "metadata": {"name": "shop", "namespace": ns},
                    "spec": {
                        "image": "a/b:1",
                        "app": "a:b",
                        "broker": {"url": {"value": "redis://r:6379/0"}},
                    },
                },
            ]
        )
        certs = Path(tempfile.mkdtemp(prefix="bench-webhook-"))
        ca, cert, key = issue_dev_certs(certs, ["localhost"], ["127.0.0.1"])
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery_operator.cli",
                "webhook",
                "--host=127.0.0.1",
                f"--port={port}",
                f"--tls-cert-file={cert}",
                f"--tls-key-file={key}",
                "--log-level=WARNING",
            ],
            env={**os.environ, "KUBECONFIG": str(env.kubeconfig)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"https://127.0.0.1:{port}"
            wait(
                lambda: httpx.get(f"{base}/healthz", verify=str(ca)).status_code == 200,
                30,
                every=0.2,
            )
            levels: dict[str, Any] = {}
            for c in (1, 4, 16):
                review = load(
                    f"{base}/validate/celeryworkerpools", pool_review(ns), c, requests, ca
                )
                floor = load(f"{base}/healthz", None, c, requests, ca)
                total_review = sum(review) / c
                levels[str(c)] = {
                    "review": summary(review)
                    | {"p99": sorted(review)[int(len(review) * 0.99) - 1]},
                    "floor": summary(floor) | {"p99": sorted(floor)[int(len(floor) * 0.99) - 1]},
                    "review_rps": len(review) / total_review,
                    "floor_rps": len(floor) / (sum(floor) / c),
                }
                print(
                    c,
                    json.dumps(
                        {
                            k: round(v["median"] * 1000, 2)
                            for k, v in levels[str(c)].items()
                            if isinstance(v, dict)
                        }
                    ),
                    flush=True,
                )
            # Added latency of a create through the apiserver, webhooks off then on.
            off = create_latencies(env, ns, 100, "off")
            configs = build_webhook_configurations("celery-operator-system", url_base=base)
            bundle = __import__("base64").b64encode(ca.read_bytes()).decode()
            for cfg in configs:
                for w in cfg["webhooks"]:
                    w["clientConfig"]["caBundle"] = bundle
            env.apply(configs)
            wait(
                lambda: (
                    "celeryproject.org/app"
                    in json.dumps(
                        client.apply_object(
                            {
                                "apiVersion": GROUP,
                                "kind": "Flower",
                                "metadata": {"name": "probe", "namespace": ns},
                                "spec": {"appRef": {"name": "shop"}},
                            }
                        )
                    )
                ),
                30,
                every=0.2,
            )
            on = create_latencies(env, ns, 100, "on")
            for cfg in configs:
                env.kubectl("delete", cfg["kind"].lower(), cfg["metadata"]["name"])
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    result = {
        "benchmark": "webhook: AdmissionReview latency over TLS, and added create latency",
        "machine": machine(),
        "requests_per_level": requests,
        "levels": levels,
        "create_webhooks_off": summary(off),
        "create_webhooks_on": summary(on),
        "added_create_latency_median_s": summary(on)["median"] - summary(off)["median"],
        "command": f"python -m bench.webhook_latency --requests {requests}",
    }
    save("webhook_latency", result)
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=400)
    run(p.parse_args().requests)


if __name__ == "__main__":
    main()
