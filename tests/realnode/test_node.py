"""The real node is real: what kwok cannot do, done by a kubelet, containerd and runc.

Every pod here runs on node `real-0` from an image built on this machine, in a namespace
that enforces Pod Security "restricted".
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest
from celery import Celery
from testenv.realnode import NODE_NAME, RealNode

from tests.support.brokers import RedisServer
from tests.support.cluster import Cluster, wait_for
from tests.support.realnode import pod

pytestmark = pytest.mark.timeout(300)

# A process that reports SIGTERM and then ignores it (so only SIGKILL ends it).
IGNORES_TERM = """
import signal, time
signal.signal(signal.SIGTERM, lambda *_: print("got SIGTERM", flush=True))
print("ready", flush=True)
while True:
    time.sleep(0.1)
"""
# A process that exits as soon as it is told to (PID 1 has no default SIGTERM action).
EXITS_ON_TERM = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("ready", flush=True)
while True:
    time.sleep(0.1)
"""


def container_status(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    statuses = cluster.get("pod", name, ns).get("status", {}).get("containerStatuses") or [{}]
    return dict(statuses[0])


def wait_running(cluster: Cluster, ns: str, name: str, timeout: int = 90) -> None:
    cluster.wait("--for=condition=Ready", f"pod/{name}", "-n", ns, timeout=timeout)


def test_pod_runs_on_the_real_node_and_logs_come_back(cluster: Cluster, restricted_ns: str) -> None:
    cluster.apply(
        pod("hello", ["python", "-c", "print('hello from', __import__('os').uname().nodename)"]),
        "-n",
        restricted_ns,
    )
    cluster.wait("--for=jsonpath={.status.phase}=Succeeded", "pod/hello", "-n", restricted_ns)
    p = cluster.get("pod", "hello", restricted_ns)
    assert p["spec"]["nodeName"] == NODE_NAME
    assert p["status"]["podIP"].startswith("10.88.0.")
    assert cluster.kubectl("logs", "hello", "-n", restricted_ns).strip() == "hello from hello"


def test_exec_runs_in_the_container(cluster: Cluster, restricted_ns: str) -> None:
    cluster.apply(pod("ex", ["sleep", "3600"], restart="Always", grace=1), "-n", restricted_ns)
    wait_running(cluster, restricted_ns, "ex")
    out = cluster.kubectl("exec", "ex", "-n", restricted_ns, "--", "python", "-c", "print(6 * 7)")
    assert out.strip() == "42"
    # Restricted in practice: not root, no writable root filesystem, a writable /tmp.
    assert cluster.kubectl("exec", "ex", "-n", restricted_ns, "--", "id", "-u").strip() == "65532"
    r = cluster.run("exec", "ex", "-n", restricted_ns, "--", "touch", "/probe")
    assert r.code != 0
    assert "Read-only file system" in r.stderr
    cluster.kubectl("exec", "ex", "-n", restricted_ns, "--", "touch", "/tmp/probe")


def test_restricted_namespace_refuses_a_pod_that_runs_as_root(
    cluster: Cluster, restricted_ns: str
) -> None:
    bad = pod("root", ["sleep", "1"])
    bad["spec"]["containers"][0]["securityContext"] = {}
    r = cluster.run("apply", "-n", restricted_ns, "-f", "-", input=json.dumps(bad))
    assert r.code != 0
    assert 'violates PodSecurity "restricted:latest"' in r.stderr


def test_failing_exec_liveness_probe_restarts_the_container(
    cluster: Cluster, restricted_ns: str
) -> None:
    probe = {"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 1}
    cluster.apply(
        pod(
            "live", ["sleep", "3600"], restart="Always", grace=1, container={"livenessProbe": probe}
        ),
        "-n",
        restricted_ns,
    )
    status = wait_for(
        "restartCount >= 1",
        lambda: (
            (s := container_status(cluster, restricted_ns, "live")).get("restartCount", 0) >= 1
            and s
        ),
        timeout=90,
    )
    assert status["lastState"]["terminated"]["exitCode"] == 137  # killed, after the grace
    events = cluster.kubectl(
        "get", "events", "-n", restricted_ns, "--field-selector", "involvedObject.name=live"
    )
    assert "Liveness probe failed" in events


def _delete_and_time(cluster: Cluster, ns: str, name: str) -> tuple[float, str]:
    """Deletes the pod (waiting until it is gone); returns the seconds and its logs."""
    logs = subprocess.Popen(
        [
            str(cluster.kubectl_bin),
            f"--kubeconfig={cluster.kubeconfig}",
            "logs",
            "-f",
            name,
            "-n",
            ns,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for("the log stream to open", lambda: logs.poll() is None, timeout=10)
        start = time.monotonic()
        cluster.kubectl("delete", "pod", name, "-n", ns, "--wait=true", timeout=120)
        took = time.monotonic() - start
        out, _ = logs.communicate(timeout=30)
    finally:
        logs.kill()
    return took, out


def test_delete_sends_sigterm_and_kills_at_the_grace_period(
    cluster: Cluster, restricted_ns: str
) -> None:
    grace = 4
    cluster.apply(pod("stubborn", ["python", "-c", IGNORES_TERM], grace=grace), "-n", restricted_ns)
    cluster.apply(pod("polite", ["python", "-c", EXITS_ON_TERM], grace=60), "-n", restricted_ns)
    wait_running(cluster, restricted_ns, "stubborn")
    wait_running(cluster, restricted_ns, "polite")

    took, out = _delete_and_time(cluster, restricted_ns, "stubborn")
    assert "got SIGTERM" in out  # SIGTERM reached the container's process
    assert grace <= took < grace + 15  # ... which ignored it: killed at the grace period

    took_polite, _ = _delete_and_time(cluster, restricted_ns, "polite")
    assert took_polite < 15  # a process that exits on SIGTERM is not held for its 60 s


def test_memory_limit_is_enforced(cluster: Cluster, restricted_ns: str) -> None:
    hog = "b = b'x' * (512 * 2**20); import time; time.sleep(60)"
    limits = {"resources": {"limits": {"memory": "64Mi"}, "requests": {"memory": "64Mi"}}}
    cluster.apply(pod("hog", ["python", "-c", hog], container=limits), "-n", restricted_ns)
    status = wait_for(
        "the container to terminate",
        lambda: container_status(cluster, restricted_ns, "hog").get("state", {}).get("terminated"),
        timeout=90,
    )
    assert status["reason"] == "OOMKilled"
    assert status["exitCode"] == 137


def test_operator_image_runs(cluster: Cluster, restricted_ns: str) -> None:
    """The project's Dockerfile, built here, runs read-only and non-root."""
    cluster.apply(
        pod("op", ["celery-operator", "--help"], image_name="operator"), "-n", restricted_ns
    )
    cluster.wait("--for=jsonpath={.status.phase}=Succeeded", "pod/op", "-n", restricted_ns)
    assert "usage: celery-operator" in cluster.kubectl("logs", "op", "-n", restricted_ns)


def test_celery_worker_in_a_pod_executes_a_task(
    cluster: Cluster, restricted_ns: str, pod_redis: RedisServer, real_node: RealNode
) -> None:
    """The example app's worker, in a pod, takes a task the test sends through a real Redis."""
    with pod_redis.client() as r:
        r.flushall()
    env = {
        "CELERY_BROKER_URL": pod_redis.pod_url,
        "CELERY_RESULT_BACKEND": pod_redis.url_for(str(pod_redis.pod_host), db=1),
    }
    worker = ["celery", "--app=shop.worker:app", "worker", "--concurrency=1", "--loglevel=INFO"]
    cluster.apply(pod("worker", worker, env=env, restart="Always", grace=10), "-n", restricted_ns)

    app = Celery("shop", broker=pod_redis.url, backend=pod_redis.url_for("127.0.0.1", db=1))
    try:
        result = app.send_task("shop.add", args=(2, 3))
        assert result.get(timeout=120) == 5
        # It ran in the pod, not anywhere else.
        with pod_redis.client(db=1) as r:
            events = [json.loads(e) for e in r.lrange("shop:events", 0, -1)]
        assert [(e["task"], e["id"]) for e in events] == [("shop.add", result.id)]
        assert events[0]["host"].endswith("@worker")
    finally:
        app.close()
    logs = cluster.kubectl("logs", "worker", "-n", restricted_ns)
    assert f"Task shop.add[{result.id}] succeeded" in logs


# Reads the pod's routes and calls the apiserver the way in-cluster clients do.
IN_CLUSTER = """
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount/"
routes = [l.split()[1] for l in open("/proc/net/route").read().splitlines()[1:]]
ctx = ssl.create_default_context(cafile=sa + "ca.crt")
url = "https://%s:%s/api/v1/namespaces/%s/pods/%s" % (
    os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"],
    open(sa + "namespace").read(), os.environ["HOSTNAME"])
req = urllib.request.Request(url, headers={"Authorization": "Bearer " + open(sa + "token").read()})
try:
    status = urllib.request.urlopen(req, context=ctx, timeout=10).status
except urllib.error.HTTPError as e:
    status = e.code
print(json.dumps({"routes": routes, "status": status}))
"""


def test_pods_reach_the_apiserver_and_nothing_beyond_the_machine(
    cluster: Cluster, restricted_ns: str
) -> None:
    """In-cluster clients (the operator in a pod) reach the `kubernetes` Service; pods have
    routes to their bridge and the Service range only, no default route."""
    p = pod("incluster", ["python", "-c", IN_CLUSTER])
    p["spec"]["automountServiceAccountToken"] = True
    cluster.apply(p, "-n", restricted_ns)
    cluster.wait("--for=jsonpath={.status.phase}=Succeeded", "pod/incluster", "-n", restricted_ns)
    out = json.loads(cluster.kubectl("logs", "incluster", "-n", restricted_ns))
    # TLS to the apiserver through the Service worked, and its RBAC answered (the default
    # ServiceAccount may not read pods): 403, not a connection error.
    assert out["status"] == 403
    # /proc/net/route: destinations in little-endian hex; 00000000 would be a default route.
    assert sorted(out["routes"]) == ["0000580A", "0000600A"]  # 10.88.0.0/24, 10.96.0.0/16
