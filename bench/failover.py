"""Leader failover: two operators (a leader and a standby, leader election on a Lease) over
N converged apps; the leader is SIGKILLed (a node dies) or SIGTERMed (a rollout, a drain),
and a pool's replicas are changed at that moment.

- failover: SIGKILL -> the change applied (the Deployment's spec.replicas) by the new
  leader: its first reconcile. Floor: the lease duration, which no failover after a crash
  can beat (a standby may take a Lease only once it stood still that long).
- takeover: SIGKILL -> the standby says it leads (/healthz).
- handover: SIGTERM -> the change applied (the leader releases the Lease as it exits).
- healthy: the same change with the leader alive (the reconcile itself).

    python -m bench.failover [--trials 5] [--apps 50]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import time
import urllib.request
from typing import Any

from bench.harness import environment, machine, operator, save, summary, wait
from celery_operator.k8s import client

GROUP = "celeryproject.org/v1alpha1"
NS = "bench-failover"
LEASE = 15.0


def objects(n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
    ]
    for i in range(n):
        out += [
            {
                "apiVersion": GROUP,
                "kind": "CeleryApp",
                "metadata": {"name": f"app{i}", "namespace": NS},
                "spec": {
                    "image": "a/b:1",
                    "app": "a:b",
                    "broker": {"url": {"value": "redis://r:6379/0"}},
                },
            },
            {
                "apiVersion": GROUP,
                "kind": "CeleryWorkerPool",
                "metadata": {"name": f"w{i}", "namespace": NS},
                "spec": {"appRef": {"name": f"app{i}"}, "replicas": 1},
            },
        ]
    return out


def role(proc: subprocess.Popen[bytes]) -> str:
    port = proc.liveness_port  # type: ignore[attr-defined]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return str(r.read().decode()).split()[1]
    except OSError:
        return "down"


def replicas() -> int:
    d = client.get_object("apps/v1", "Deployment", "app0-w0", NS) or {}
    return int((d.get("spec") or {}).get("replicas") or 0)


def change(to: int) -> None:
    client.patch_object(GROUP, "CeleryWorkerPool", "w0", NS, {"spec": {"replicas": to}})


def run(trials: int, apps: int) -> dict[str, Any]:
    failover: list[float] = []
    takeover: list[float] = []
    handover: list[float] = []
    healthy: list[float] = []
    args = ("--resync-seconds=3600", "--workers=8")
    with environment() as env:
        client.configure(str(env.kubeconfig))
        env.apply(objects(apps))
        with contextlib.ExitStack() as stack:
            procs = [stack.enter_context(operator(env, *args))]
            wait(lambda: role(procs[0]) == "leader", 60, every=0.1)
            procs.append(stack.enter_context(operator(env, *args)))
            for i in range(apps):
                env.wait("--for=condition=Ready", f"celeryapp/app{i}", "-n", NS, timeout=300)
            target = replicas()
            for trial in range(2 * trials):
                leader = next(p for p in procs if role(p) == "leader")
                standby = next(p for p in procs if p is not leader)
                # The reconcile alone, with the leader alive.
                target = 1 + target % 3
                start = time.perf_counter()
                change(target)
                wait(lambda t=target: replicas() == t, 60)  # type: ignore[misc]
                healthy.append(time.perf_counter() - start)
                # Then the leader goes: killed (odd trials: SIGTERM, a clean handover).
                kill = trial % 2 == 0
                target = 1 + target % 3
                start = time.perf_counter()
                leader.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
                change(target)
                if kill:
                    takeover.append(
                        wait(lambda s=standby: role(s) == "leader", 60, every=0.05)  # type: ignore[misc]
                    )
                wait(lambda t=target: replicas() == t, 120)  # type: ignore[misc]
                took = time.perf_counter() - start
                (failover if kill else handover).append(took)
                leader.wait(timeout=30)
                procs.remove(leader)
                procs.append(stack.enter_context(operator(env, *args)))  # back as a standby
    result = {
        "machine": machine(),
        "apps": apps,
        "lease_seconds": LEASE,
        "failover": summary(failover),
        "takeover": summary(takeover),
        "handover": summary(handover),
        "healthy": summary(healthy),
        "failover_ratio": summary(failover)["median"] / LEASE,
        "command": f"python -m bench.failover --trials {trials} --apps {apps}",
    }
    save("failover", result)
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--apps", type=int, default=50)
    a = p.parse_args()
    r = run(a.trials, a.apps)
    print(json.dumps({k: v for k, v in r.items() if k != "machine"}, indent=1))


if __name__ == "__main__":
    main()
