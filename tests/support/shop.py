"""The example app on the real node, as the product suites use it: the chart installed
from the image built here (release `real`), and the shop app with its pools, Flower and
beat against a real Redis; a producer of its tasks and ledgers that count them."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from testenv.realnode import GATEWAY

from tests.support.brokers import RedisServer
from tests.support.cluster import Cluster, run_cli, wait_for
from tests.support.ledger import Ledger, Tally
from tests.support.podwatch import PodWatch
from tests.support.realnode import PLACEMENT, image

# Not the e2e suites' names (celery-operator in celery-operator-system, which they create
# without Helm): a release of its own, as a second installation would be.
RELEASE = "real"
FULLNAME = "real-celery-operator"
OPERATOR_NS = "celery-operator-real"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
FLOWER_USER, FLOWER_PASSWORD = "admin", secrets.token_hex(8)
# The "long" pool: tasks of TASK_SECONDS fit in its soft shutdown, which fits in its grace.
TASK_SECONDS = 10
SOFT_SHUTDOWN = 20
GRACE = 40
PROBE_PERIOD = 5  # the "default" pool's liveness probe, short for the outage tests


def helm(cluster: Cluster, *args: str, input: str | None = None, timeout: float = 300) -> str:
    assert cluster.helm_bin is not None, "helm not found: run `make testenv`"
    r = run_cli(cluster.helm_bin, cluster.kubeconfig, *args, input=input, timeout=timeout)
    assert r.code == 0, f"helm {' '.join(args)}: {r.stderr}"
    return r.stdout


@dataclass
class Shop:
    """The example app, running on the real node, and a producer of its tasks."""

    cluster: Cluster
    namespace: str
    redis: RedisServer
    producer: Celery
    ledgers: list[Ledger] = field(default_factory=list)

    def ledger(self) -> Ledger:
        client = self.redis.client(db=1)
        client.delete("shop:events")
        ledger = Ledger(client)
        self.ledgers.append(ledger)
        return ledger

    def send(self, ledger: Ledger, task: str, args: list[Any], queue: str) -> str:
        result = self.producer.send_task(task, args=args, queue=queue)
        ledger.sent.append(result.id)
        return str(result.id)

    def pods(self, pool: str) -> list[dict[str, Any]]:
        out = self.cluster.kubectl(
            "get",
            "pods",
            "-n",
            self.namespace,
            "-l",
            f"celeryproject.org/pool={pool}",
            "-o",
            "json",
        )
        return [p for p in json.loads(out)["items"] if not p["metadata"].get("deletionTimestamp")]

    def wait_pool(self, pool: str, timeout: int = 120) -> None:
        self.cluster.wait(
            "--for=condition=Ready",
            f"celeryworkerpool/{pool}",
            "-n",
            self.namespace,
            timeout=timeout,
        )
        self.cluster.wait(
            "--for=condition=Ready",
            "pod",
            "-l",
            f"celeryproject.org/pool={pool}",
            "-n",
            self.namespace,
            timeout=timeout,
        )


def pool_of_shop(ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "celeryproject.org/v1alpha1",
        "kind": "CeleryWorkerPool",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"appRef": {"name": "shop"}, **spec},
    }


def app_objects(ns: str, redis: RedisServer) -> list[dict[str, Any]]:
    def pool(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return pool_of_shop(ns, name, spec)

    def secret(name: str, key: str, value: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": ns},
            "stringData": {key: value},
        }

    small = {"requests": {"cpu": "20m", "memory": "96Mi"}, "limits": {"memory": "384Mi"}}
    return [
        secret("shop-broker", "url", redis.url_for(GATEWAY, db=0)),
        secret("shop-backend", "url", redis.url_for(GATEWAY, db=1)),
        secret("shop-flower-auth", "auth", f"{FLOWER_USER}:{FLOWER_PASSWORD}"),
        {
            "apiVersion": "celeryproject.org/v1alpha1",
            "kind": "CeleryApp",
            "metadata": {"name": "shop", "namespace": ns},
            "spec": {
                "image": image("example-app"),
                "imagePullPolicy": "Never",
                "app": "shop.worker:app",
                "broker": {"url": {"secretKeyRef": {"name": "shop-broker", "key": "url"}}},
                "resultBackend": {"url": {"secretKeyRef": {"name": "shop-backend", "key": "url"}}},
                "env": [{"name": "SHOP_BEAT_INTERVAL", "value": "2"}],
                "podDefaults": PLACEMENT,
                "beat": {"enabled": True},
            },
        },
        pool(
            "default",
            {
                "queues": ["celery"],
                "replicas": 2,
                "concurrency": 2,
                "resources": small,
                "probes": {
                    "liveness": {
                        "periodSeconds": PROBE_PERIOD,
                        "timeoutSeconds": 5,
                        "failureThreshold": 3,
                    }
                },
            },
        ),
        pool(
            "long",
            {
                "queues": ["long"],
                "replicas": 2,
                "concurrency": 1,
                "prefetchMultiplier": 1,
                "resources": small,
                "shutdown": {
                    "softShutdownTimeout": SOFT_SHUTDOWN,
                    "terminationGracePeriodSeconds": GRACE,
                },
            },
        ),
        pool(
            "oldest",
            {
                "queues": ["oldest"],
                "replicas": 1,
                "concurrency": 1,
                "prefetchMultiplier": 1,
                "image": image("example-app-oldest-celery"),
                "resources": small,
                "shutdown": {
                    "softShutdownTimeout": SOFT_SHUTDOWN,
                    "terminationGracePeriodSeconds": GRACE,
                },
            },
        ),
        {
            "apiVersion": "celeryproject.org/v1alpha1",
            "kind": "Flower",
            "metadata": {"name": "shop", "namespace": ns},
            "spec": {
                "appRef": {"name": "shop"},
                "basicAuth": {"secretRef": {"name": "shop-flower-auth", "key": "auth"}},
            },
        },
    ]


def report(what: str, tally: Tally) -> None:
    print(f"\n{what}: {tally}")


def assert_exactly_once(ledger: Ledger, timeout: float) -> Tally:
    wait_for("every task sent to finish", ledger.done, timeout=timeout)
    tally = ledger.tally()
    assert tally.exactly_once, str(tally)
    return tally


def assert_no_sigkill(watch: PodWatch, pods: list[str], timeout: float = 30) -> None:
    """Waits until each pod's container reported how it ended; all ended with exit code 0."""
    wait_for(
        f"the exit codes of {', '.join(pods)}",
        lambda: all(n in watch.terminations() for n in pods),
        timeout=timeout,
    )
    ends = watch.terminations()
    for name in pods:
        for t in ends[name]:
            assert t.get("exitCode") == 0, f"{name} ended {t}"


def start_long_tasks(shop: Shop, ledger: Ledger, queue: str, n: int, seconds: float) -> None:
    for i in range(n):
        shop.send(ledger, "shop.long", [seconds, f"{queue}-{i}"], queue)
    wait_for(f"{n} long tasks running", lambda: ledger.tally().started >= n, timeout=60)
