"""The product in real pods: installed by its Helm chart from the image built here, running
the example Celery app (workers, beat, Flower) on the real node against a real Redis, and
keeping Celery's promise through rollouts, scale-down and a broker outage.

Nothing here runs on kwok or outside Kubernetes: the operator and both webhook replicas
are pods under the chart's ServiceAccounts and RBAC, in a namespace enforcing Pod Security
"restricted"; so are the app's pods. Every test that disturbs workers counts the tasks it
sent, completed, duplicated and killed (tests/support/ledger.py).
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from base64 import b64encode
from typing import Any

import pytest
from testenv.realnode import NODE_NAME, RealNode

from tests.support.cluster import Cluster, wait_for
from tests.support.podwatch import PodWatch
from tests.support.realnode import image
from tests.support.shop import (
    FLOWER_PASSWORD,
    FLOWER_USER,
    FULLNAME,
    GRACE,
    PROBE_PERIOD,
    RELEASE,
    SOFT_SHUTDOWN,
    TASK_SECONDS,
    Shop,
    assert_exactly_once,
    assert_no_sigkill,
    pool_of_shop,
    report,
    start_long_tasks,
)

pytestmark = pytest.mark.timeout(600)


# ---- installed like a user ------------------------------------------------------------------
def test_operator_and_webhook_run_in_cluster_under_the_chart(
    cluster: Cluster, installed: str
) -> None:
    pods = json.loads(cluster.kubectl("get", "pods", "-n", installed, "-o", "json"))["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running"]
    components = sorted(p["metadata"]["labels"]["app.kubernetes.io/component"] for p in running)
    assert components == ["operator", "operator", "webhook", "webhook"]
    # Two operators, one leading through the release's Lease (its holder names the pod).
    lease = cluster.get("lease", FULLNAME, installed)["spec"]
    operators = [
        p["metadata"]["name"]
        for p in running
        if p["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    ]
    leaders = [name for name in operators if lease["holderIdentity"].startswith(f"{name}_")]
    assert len(leaders) == 1, (lease, operators)
    for p in running:
        assert p["spec"]["nodeName"] == NODE_NAME
        c = p["spec"]["containers"][0]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert p["spec"]["serviceAccountName"].startswith(RELEASE)
        assert all(s["ready"] for s in p["status"]["containerStatuses"])
    # The apiserver calls the webhook through its Service (the chart's default), with the
    # certificates the webhook issued itself.
    vwc = json.loads(cluster.kubectl("get", "validatingwebhookconfigurations", "-o", "json"))
    ours = [w for c in vwc["items"] if c["metadata"]["name"] == FULLNAME for w in c["webhooks"]]
    assert ours
    assert all("service" in w["clientConfig"] and w["clientConfig"].get("caBundle") for w in ours)


def test_a_bad_spec_is_refused_by_the_webhook_in_its_pod(cluster: Cluster, shop: Shop) -> None:
    """Cross-object validation, which only the webhook can do: the app does not admit pools
    from this namespace (its workerPoolPolicy is the default: its own namespace only)."""
    other = cluster.create_namespace("team")
    try:
        pool = {
            "apiVersion": "celeryproject.org/v1alpha1",
            "kind": "CeleryWorkerPool",
            "metadata": {"name": "intruder", "namespace": other},
            "spec": {
                "appRef": {"name": "shop", "namespace": shop.namespace},
                "queues": ["celery"],
            },
        }
        r = cluster.run("apply", "-f", "-", input=json.dumps(pool))
        assert r.code != 0
        assert (
            'admission webhook "vceleryworkerpool.celeryproject.org" denied the request' in r.stderr
        )
        assert f"does not admit pools from namespace {other}" in r.stderr
    finally:
        cluster.run("delete", "namespace", other, "--wait=false")


# ---- a real Celery app end to end ------------------------------------------------------------
def flower_get(url: str, auth: tuple[str, str] | None) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def test_workers_beat_and_flower_run_the_app(cluster: Cluster, shop: Shop) -> None:
    ledger = shop.ledger()
    ids = [shop.send(ledger, "shop.add", [i, i], "celery") for i in range(10)]

    # Read from the result store itself (no pub/sub subscription of this long-lived client,
    # which a session's earlier tests may have left reconnecting); the ledger says what the
    # workers did if it times out.
    def stored(task: str) -> dict[str, Any] | None:
        meta = dict(shop.producer.backend.get_task_meta(task))
        return meta if meta.get("status") == "SUCCESS" else None

    try:
        metas = [wait_for(f"the result of {t}", lambda t=t: stored(t), timeout=60) for t in ids]
    except AssertionError as e:
        raise AssertionError(f"{e}; the workers' ledger: {ledger.tally()}") from None
    results = [m["result"] for m in metas]
    assert results == [2 * i for i in range(10)]
    hosts = {h for t in ids for h in ledger.hosts_of(t)}
    assert hosts
    assert all(h.startswith(f"default.{shop.namespace}@shop-default-") for h in hosts)

    # beat sends shop.tick every 2 s; the default pool's workers run it.
    def ticks() -> int:
        return sum(1 for e in ledger.events() if e["task"] == "shop.tick")

    wait_for("three beat ticks executed", lambda: ticks() >= 3, timeout=60)

    # Flower, through its Service (kube-proxy on the real node), behind basic auth.
    svc = cluster.get("service", "shop-flower", shop.namespace)
    base = f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}"
    assert flower_get(f"{base}/api/workers", None)[0] == 401
    assert flower_get(f"{base}/", None)[0] == 401
    assert flower_get(f"{base}/", (FLOWER_USER, FLOWER_PASSWORD))[0] == 200
    workers = wait_for(
        "Flower to list the workers",
        lambda: (
            (
                w := json.loads(
                    flower_get(f"{base}/api/workers?refresh=1", (FLOWER_USER, FLOWER_PASSWORD))[1]
                    or b"{}"
                )
            )
            and len([n for n in w if n.startswith("default.")]) == 2
            and w
        ),
        timeout=60,
    )
    pools = {n.split(".")[0] for n in workers}
    assert {"default", "long"} <= pools


# ---- nothing lost on rollout or scale-down -------------------------------------------------
def patch_env(cluster: Cluster, ns: str, pool: str, value: str) -> None:
    cluster.kubectl(
        "patch",
        "celeryworkerpool",
        pool,
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"env": [{"name": "ROLLOUT", "value": value}]}}),
    )


def test_rollout_finishes_every_running_task(cluster: Cluster, shop: Shop) -> None:
    ledger = shop.ledger()
    before = [p["metadata"]["name"] for p in shop.pods("long")]
    with PodWatch(cluster, shop.namespace, "celeryproject.org/pool=long") as watch:
        start_long_tasks(shop, ledger, "long", 2, TASK_SECONDS)
        patch_env(cluster, shop.namespace, "long", "1")
        # More work arrives during the rollout.
        for i in range(4):
            shop.send(ledger, "shop.long", [1, f"during-{i}"], "long")
        tally = assert_exactly_once(ledger, timeout=GRACE * 3)
        wait_for(
            "the old workers gone",
            lambda: not set(before) & {p["metadata"]["name"] for p in shop.pods("long")},
            timeout=GRACE * 2,
        )
        assert_no_sigkill(watch, before)
    report("rollout (Celery 5.5, soft shutdown)", tally)


def test_rollout_on_the_oldest_supported_celery(cluster: Cluster, shop: Shop) -> None:
    """Celery 5.4 has no soft shutdown: SIGQUIT would kill the task at once. The launcher
    keeps SIGTERM a warm shutdown there, so the task still finishes."""
    ledger = shop.ledger()
    before = [p["metadata"]["name"] for p in shop.pods("oldest")]
    with PodWatch(cluster, shop.namespace, "celeryproject.org/pool=oldest") as watch:
        start_long_tasks(shop, ledger, "oldest", 1, TASK_SECONDS)
        patch_env(cluster, shop.namespace, "oldest", "1")
        tally = assert_exactly_once(ledger, timeout=GRACE * 3)
        assert_no_sigkill(watch, before, timeout=GRACE * 2)
    logs = cluster.kubectl(
        "logs", "-n", shop.namespace, "-l", "celeryproject.org/pool=oldest", "--tail=-1"
    )
    assert "has no soft shutdown" in logs
    report("rollout (Celery 5.4, warm shutdown)", tally)


def test_scale_down_finishes_every_running_task(cluster: Cluster, shop: Shop) -> None:
    cluster.kubectl("scale", "celeryworkerpool", "long", "-n", shop.namespace, "--replicas=3")
    wait_for("3 long workers", lambda: len(shop.pods("long")) == 3, timeout=60)
    shop.wait_pool("long")
    ledger = shop.ledger()
    before = [p["metadata"]["name"] for p in shop.pods("long")]
    with PodWatch(cluster, shop.namespace, "celeryproject.org/pool=long") as watch:
        start_long_tasks(shop, ledger, "long", 3, TASK_SECONDS)
        cluster.kubectl("scale", "celeryworkerpool", "long", "-n", shop.namespace, "--replicas=1")
        tally = assert_exactly_once(ledger, timeout=GRACE * 3)
        wait_for("one long worker", lambda: len(shop.pods("long")) == 1, timeout=GRACE * 2)
        gone = [n for n in before if n not in {p["metadata"]["name"] for p in shop.pods("long")}]
        assert len(gone) == 2
        assert_no_sigkill(watch, gone)
    report("scale-down 3 -> 1", tally)
    cluster.kubectl("scale", "celeryworkerpool", "long", "-n", shop.namespace, "--replicas=2")


def test_a_task_longer_than_the_soft_shutdown_is_requeued_and_run_again(
    cluster: Cluster, shop: Shop
) -> None:
    """What docs/operations.md says: past softShutdownTimeout the worker stops the task;
    with task_acks_late (the example app sets it) the message returns to the queue and
    another worker runs the task again from the start. Nothing is lost; it runs twice."""
    shop.wait_pool("long")
    ledger = shop.ledger()
    task = shop.send(ledger, "shop.long", [SOFT_SHUTDOWN + 10, "too-long"], "long")
    wait_for("the task running", lambda: ledger.tally().started >= 1, timeout=60)
    first = ledger.hosts_of(task)[0]
    pod = first.split("@", 1)[1]
    cluster.kubectl("delete", "pod", pod, "-n", shop.namespace, "--wait=false")
    wait_for("the task to finish", ledger.done, timeout=GRACE + SOFT_SHUTDOWN + 60)
    events = [e for e in ledger.events() if e["id"] == task]
    starts = [e["host"] for e in events if e["event"] == "started"]
    finishes = [e["host"] for e in events if e["event"] == "finished"]
    assert len(starts) == 2, events
    assert starts[0] == first, events
    assert starts[1] != first, events
    assert finishes == [starts[1]], events
    report("task longer than softShutdownTimeout", ledger.tally())


def catches_sigterm(cluster: Cluster, ns: str, pod: str) -> bool:
    """Whether the container's PID 1 has a SIGTERM handler (bit 15 of SigCgt)."""
    status = cluster.kubectl("exec", pod, "-n", ns, "--", "cat", "/proc/1/status")
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (15 - 1)))


def test_a_worker_stopped_while_it_boots_goes_at_once(cluster: Cluster, shop: Shop) -> None:
    """SIGTERM during the app's import (before Celery's handlers exist) ends the worker:
    PID 1 would ignore it, and the pod would consume tasks until SIGKILLed at its grace."""
    cluster.apply(
        pool_of_shop(
            shop.namespace,
            "slowboot",
            {
                "queues": ["slowboot"],
                "replicas": 1,
                "env": [{"name": "SHOP_IMPORT_DELAY", "value": "30"}],
                "shutdown": {"terminationGracePeriodSeconds": 120},
            },
        )
    )
    try:
        pod = wait_for(
            "the slow worker's container running",
            lambda: next(
                (
                    p["metadata"]["name"]
                    for p in shop.pods("slowboot")
                    if (p["status"].get("containerStatuses") or [{}])[0]
                    .get("state", {})
                    .get("running")
                ),
                None,
            ),
            timeout=60,
        )
        # The window this test is about is the app's import (seconds, here 30). Before it,
        # the interpreter starts (tens of milliseconds; seconds on a loaded machine) with
        # no handler at all, and a SIGTERM then is dropped by the kernel (PID 1): wait
        # until PID 1 catches SIGTERM, which the launcher does on its first line.
        wait_for(
            "the launcher to catch SIGTERM",
            lambda: catches_sigterm(cluster, shop.namespace, pod),
            timeout=30,
        )
        started = time.monotonic()
        cluster.kubectl("delete", "pod", pod, "-n", shop.namespace, "--wait=true", timeout=150)
        took = time.monotonic() - started
        assert took < 15, f"a booting worker took {took:.0f}s to stop (its grace is 120 s)"
    finally:
        cluster.run("delete", "celeryworkerpool", "slowboot", "-n", shop.namespace)


# ---- failures a user will meet ---------------------------------------------------------------
def ready_condition(cluster: Cluster, kind: str, name: str, ns: str) -> dict[str, Any]:
    st = cluster.get(kind, name, ns).get("status") or {}
    return next((c for c in st.get("conditions") or [] if c["type"] == "Ready"), {})


@pytest.mark.parametrize(
    ("spec", "reason", "says"),
    [
        # Not on the node, and no registry to pull it from.
        (
            {"image": "localhost/celery-operator/no-such-image:1"},
            ("ErrImageNeverPull",),  # the app's imagePullPolicy: Never
            "no-such-image",
        ),
        # The app does not import (here: its package is not on the path): the worker
        # exits, again and again, and its last words are in the status.
        (
            {"env": [{"name": "PYTHONPATH", "value": "/nowhere"}]},
            ("CrashLoopBackOff",),
            "No module named 'shop'",
        ),
    ],
    ids=["image-missing", "app-does-not-import"],
)
def test_why_workers_do_not_run_is_in_the_pool_and_app_status(
    cluster: Cluster, shop: Shop, spec: dict[str, Any], reason: tuple[str, ...], says: str
) -> None:
    cluster.apply(
        pool_of_shop(
            shop.namespace,
            "broken",
            {
                "queues": ["broken"],
                "replicas": 1,
                "probes": {"liveness": {"enabled": False}},
                **spec,
            },
        )
    )
    try:
        cond = wait_for(
            f"the pool's Ready reason to be one of {reason}",
            lambda: (
                (c := ready_condition(cluster, "celeryworkerpool", "broken", shop.namespace)).get(
                    "reason"
                )
                in reason
                and says in c.get("message", "")
                and c
            ),
            timeout=120,
        )
        assert cond["status"] == "False"
        app = wait_for(
            "the app's Ready message to name the pool and why",
            lambda: (
                (c := ready_condition(cluster, "celeryapp", "shop", shop.namespace))
                and f"pool {shop.namespace}/broken (" in c.get("message", "")
                and says in c.get("message", "")
                and c
            ),
            timeout=60,
        )
        assert app["status"] == "False"
        print(f"\n{cond['reason']}: {cond['message']}")
    finally:
        cluster.run("delete", "celeryworkerpool", "broken", "-n", shop.namespace)


# ---- pods as users need them -----------------------------------------------------------------
SIDECAR_LOOP = (
    "import time\n"
    "while True:\n"
    "    print('sidecar sees:', open('/etc/extra/greeting.txt').read(), flush=True)\n"
    "    time.sleep(5)\n"
)


def test_a_native_sidecar_and_a_mounted_config_map_in_real_worker_pods(
    cluster: Cluster, shop: Shop
) -> None:
    """A pool with a ConfigMap volume mounted in its worker and in a native sidecar (an
    init container with restartPolicy Always), in a namespace enforcing "restricted": the
    pod runs, the sidecar runs beside the worker, both read the mounted file, and the
    worker runs tasks."""
    ns = shop.namespace
    greeting = "hello from a ConfigMap"
    restricted = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    sidecar = {
        "name": "reader",
        "image": image("example-app"),
        "imagePullPolicy": "Never",
        "command": ["python", "-c", SIDECAR_LOOP],
        "volumeMounts": [{"name": "extra", "mountPath": "/etc/extra", "readOnly": True}],
        "securityContext": restricted,
        "resources": {"requests": {"cpu": "5m", "memory": "32Mi"}, "limits": {"memory": "96Mi"}},
    }
    cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "worker-extra", "namespace": ns},
                "data": {"greeting.txt": greeting},
            },
            pool_of_shop(
                ns,
                "extras",
                {
                    "queues": ["extras"],
                    "replicas": 1,
                    "concurrency": 1,
                    "resources": {
                        "requests": {"cpu": "20m", "memory": "96Mi"},
                        "limits": {"memory": "384Mi"},
                    },
                    "volumes": [{"name": "extra", "configMap": {"name": "worker-extra"}}],
                    "volumeMounts": [{"name": "extra", "mountPath": "/etc/extra"}],
                    "sidecars": [sidecar],
                },
            ),
        ]
    )
    try:
        shop.wait_pool("extras", timeout=180)
        (pod,) = shop.pods("extras")
        name = pod["metadata"]["name"]
        assert pod["spec"]["nodeName"] == NODE_NAME
        (init,) = pod["status"]["initContainerStatuses"]
        assert init["name"] == "reader"
        assert (init["started"], init["ready"]) == (True, True), init  # beside the worker
        assert pod["spec"]["initContainers"][0]["restartPolicy"] == "Always"
        read = cluster.kubectl("exec", name, "-n", ns, "-c", "worker", "--", "cat",
                               "/etc/extra/greeting.txt")  # fmt: skip
        assert read.strip() == greeting
        wait_for(
            "the sidecar to read the mounted file",
            lambda: (
                f"sidecar sees: {greeting}"
                in cluster.kubectl("logs", name, "-n", ns, "-c", "reader")
            ),
            timeout=30,
        )
        ledger = shop.ledger()
        for i in range(3):
            shop.send(ledger, "shop.long", [0.2, f"extras-{i}"], "extras")
        report("a pool with a sidecar and a ConfigMap", assert_exactly_once(ledger, timeout=60))
    finally:
        cluster.run("delete", "celeryworkerpool", "extras", "-n", ns, "--wait=true")
        cluster.run("delete", "configmap", "worker-extra", "-n", ns)


# ---- probes in practice -------------------------------------------------------------------
def restarts(shop: Shop) -> dict[str, int]:
    out = json.loads(shop.cluster.kubectl("get", "pods", "-n", shop.namespace, "-o", "json"))
    return {
        p["metadata"]["name"]: sum(
            c.get("restartCount", 0) for c in p["status"].get("containerStatuses") or []
        )
        for p in out["items"]
        if not p["metadata"].get("deletionTimestamp")
    }


def test_broker_outage_restarts_nothing(cluster: Cluster, shop: Shop) -> None:
    shop.wait_pool("default")
    before = restarts(shop)
    shop.redis.stop()
    try:
        time.sleep(PROBE_PERIOD * 5)  # the outage itself: longer than 3 liveness periods
    finally:
        shop.redis.start()
    assert restarts(shop) == before  # workers, beat and Flower all rode it out
    ledger = shop.ledger()
    task = shop.send(ledger, "shop.add", [20, 22], "celery")
    assert shop.producer.AsyncResult(task).get(timeout=90) == 42


def test_a_hung_worker_is_restarted(cluster: Cluster, shop: Shop, real_node: RealNode) -> None:
    shop.wait_pool("default")
    # A pod of its own: the kubelet's event recorder drops events of an object that sent
    # many (its spam filter: 25, then one per 5 minutes), and a pod that has lived through
    # the session has spent them on MissingClusterDNS warnings (the real node has no
    # cluster DNS), so its Unhealthy event would never be seen.
    old = shop.pods("default")[0]["metadata"]["name"]
    cluster.kubectl("delete", "pod", old, "-n", shop.namespace, "--wait=true", timeout=120)
    shop.wait_pool("default")
    target = max(shop.pods("default"), key=lambda p: p["metadata"]["creationTimestamp"])
    pod = target["metadata"]["name"]
    assert pod != old
    # The worker's main process stops answering, as a hang would: SIGSTOP from the node
    # (the container's own PID 1 ignores signals sent from inside its PID namespace).
    os.kill(
        real_node.container_pid(target["status"]["containerStatuses"][0]["containerID"]),
        signal.SIGSTOP,
    )
    wait_for(
        "the kubelet to restart the hung worker",
        lambda: restarts(shop).get(pod, 0) >= 1,
        timeout=PROBE_PERIOD * 3 + 60,
    )
    events = cluster.kubectl(
        "get", "events", "-n", shop.namespace, "--field-selector", f"involvedObject.name={pod}"
    )
    assert "did not answer a ping" in events, events
