"""Scale-down never kills a busy worker: real Celery workers of the example app on the real
node, the operator in its pod listening to their heartbeats through the app's Redis.

Whatever lowers the replicas (kubectl scale, an HPA, the built-in scaler), idle workers go
first; when every worker that would go is busy, the operator drains it before removing
it. Every test counts the tasks it sent, completed, duplicated and killed.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from testenv.realnode import RealNode

from tests.support.cluster import Cluster, wait_for
from tests.support.ledger import Ledger
from tests.support.podwatch import PodWatch
from tests.support.shop import (
    GRACE,
    OPERATOR_NS,
    SOFT_SHUTDOWN,
    Shop,
    assert_exactly_once,
    assert_no_sigkill,
    pool_of_shop,
    report,
    start_long_tasks,
)

pytestmark = pytest.mark.timeout(600)

COST = "controller.kubernetes.io/pod-deletion-cost"
SMALL = {"requests": {"cpu": "20m", "memory": "96Mi"}, "limits": {"memory": "384Mi"}}
LONG = 25  # seconds: longer than any scale-down here takes without a drain


def spec(queue: str, **extra: Any) -> dict[str, Any]:
    return {
        "queues": [queue],
        "concurrency": 1,
        "prefetchMultiplier": 1,
        "resources": SMALL,
        "shutdown": {"softShutdownTimeout": SOFT_SHUTDOWN, "terminationGracePeriodSeconds": GRACE},
        **extra,
    }


@pytest.fixture
def pool(cluster: Cluster, shop: Shop, request: pytest.FixtureRequest) -> Iterator[str]:
    """A pool of the shop app named after the test (its queue too); deleted afterwards."""
    name = "b-" + request.node.name.removeprefix("test_").replace("_", "-")[:40].strip("-")
    yield name
    cluster.run("delete", "celeryworkerpool", name, "-n", shop.namespace, "--wait=false")


def status(shop: Shop, pool: str) -> dict[str, Any]:
    return dict(shop.cluster.get("cwp", pool, shop.namespace).get("status") or {})


def condition(shop: Shop, pool: str, type_: str) -> dict[str, Any]:
    return next((c for c in status(shop, pool).get("conditions") or [] if c["type"] == type_), {})


def names(shop: Shop, pool: str) -> set[str]:
    return {p["metadata"]["name"] for p in shop.pods(pool)}


def cost(shop: Shop, pod: str) -> str | None:
    p = shop.cluster.get("pod", pod, shop.namespace)
    return (p["metadata"].get("annotations") or {}).get(COST)


def start(shop: Shop, pool: str, replicas: int, **extra: Any) -> None:
    shop.cluster.apply(pool_of_shop(shop.namespace, pool, spec(pool, replicas=replicas, **extra)))
    wait_for(f"{replicas} {pool} workers", lambda: len(shop.pods(pool)) == replicas, timeout=90)
    shop.wait_pool(pool)
    expect(
        shop,
        pool,
        "the operator to hear the workers",
        lambda: (
            condition(shop, pool, "LoadObserved").get("status") == "True"
            and (status(shop, pool).get("workers") or {}).get("online") == replicas
        ),
        timeout=60,
    )


def expect(shop: Shop, pool: str, what: str, check: Any, timeout: float) -> Any:
    """wait_for, and on a timeout what the pool's status and the operator's log say."""
    try:
        return wait_for(what, check, timeout=timeout)
    except AssertionError as e:
        logs = shop.cluster.kubectl(
            "logs", "-n", OPERATOR_NS, "-l", "app.kubernetes.io/component=operator", "--tail=40"
        )
        pods = {
            p["metadata"]["name"]: p["metadata"].get("annotations") or {} for p in shop.pods(pool)
        }
        raise AssertionError(
            f"{e}\nstatus: {json.dumps(status(shop, pool))}\npods: {pods}\n{logs}"
        ) from None


def pod_of(ledger: Ledger, task: str) -> str:
    return ledger.hosts_of(task)[0].split("@", 1)[1]


def youngest(shop: Shop, pool: str, n: int) -> str:
    """Scales the pool up by one and returns the new pod: the one the ReplicaSet removes
    first when nothing else tells them apart (it has been ready for the shortest time)."""
    before = names(shop, pool)
    shop.cluster.kubectl("scale", "cwp", pool, "-n", shop.namespace, f"--replicas={n}")
    new = wait_for("the new worker", lambda: (names(shop, pool) - before) or None, timeout=60)
    shop.wait_pool(pool)
    wait_for(
        "the operator to hear it",
        lambda: (status(shop, pool).get("workers") or {}).get("online") == n,
        timeout=60,
    )
    return str(next(iter(new)))


def pin_long_task(shop: Shop, ledger: Ledger, pool: str, pod: str, seconds: float) -> str:
    """A long task on that pod's worker only: it alone consumes a queue of its own."""
    queue = f"{pool}-only"
    node = f"{pool}.{shop.namespace}@{pod}"

    # A worker pod is Ready as soon as its container runs (workers have no readiness
    # probe), and the operator hears its worker-online before the worker listens for
    # remote control: a broadcast sent in between reaches no one. add_consumer is
    # idempotent ("already consuming"): ask until the worker answers.
    def answered() -> list[dict[str, Any]] | None:
        control = shop.producer.control
        return control.add_consumer(queue, destination=[node], reply=True, timeout=2) or None

    replies = wait_for(f"{node} to answer add_consumer", answered, timeout=60)
    assert node in replies[0], replies
    task = shop.send(ledger, "shop.long", [seconds, "pinned"], queue)
    wait_for("the pinned task running", lambda: bool(ledger.hosts_of(task)), timeout=30)
    assert pod_of(ledger, task) == pod
    wait_for("its deletion cost to say busy", lambda: cost(shop, pod) == "100", timeout=30)
    return task


def busy_on(shop: Shop, ledger: Ledger, pool: str, n: int, seconds: float = LONG) -> list[str]:
    """Starts `n` long tasks; returns the pods running them once their costs say busy."""
    first = len(ledger.sent)
    start_long_tasks(shop, ledger, pool, n, seconds)
    pods = [pod_of(ledger, t) for t in ledger.sent[first:]]
    wait_for(
        "the busy workers' deletion cost",
        lambda: all(cost(shop, p) == "100" for p in pods),
        timeout=30,
    )
    return pods


def builtin_engine(target: int, cooldown: int, most: int = 3) -> dict[str, Any]:
    """autoscaling with the built-in engine, polling every second."""
    return {
        "minReplicas": 1,
        "maxReplicas": most,
        "queueLength": {
            "targetPerReplica": target,
            "engine": "builtin",
            "pollingIntervalSeconds": 1,
            "cooldownSeconds": cooldown,
        },
    }


def scale(shop: Shop, pool: str, n: int) -> None:
    shop.cluster.kubectl("scale", "cwp", pool, "-n", shop.namespace, f"--replicas={n}")


# ---- idle workers go first, whatever lowers the replicas ------------------------------------------
def test_kubectl_scale_removes_the_idle_workers(cluster: Cluster, shop: Shop, pool: str) -> None:
    start(shop, pool, 2)
    busy = youngest(shop, pool, 3)  # without its cost, the first one to go
    ledger = shop.ledger()
    pin_long_task(shop, ledger, pool, busy, LONG)
    with PodWatch(cluster, shop.namespace, f"celeryproject.org/pool={pool}") as watch:
        idle = names(shop, pool) - {busy}
        scale(shop, pool, 1)
        wait_for("the idle workers gone", lambda: names(shop, pool) == {busy}, timeout=GRACE)
        # They went while the task still ran: no drain was needed.
        assert ledger.tally().completed == 0
        tally = assert_exactly_once(ledger, timeout=LONG + 30)
        assert names(shop, pool) == {busy}
        assert_no_sigkill(watch, sorted(idle))
    report("kubectl scale 3 -> 1, one busy", tally)


def test_an_hpa_scale_down_removes_the_idle_workers(
    cluster: Cluster, shop: Shop, pool: str
) -> None:
    """The HPA writes the Deployment's replicas itself (the operator hands them over): only
    the deletion costs protect the busy worker. maxReplicas below the current replicas makes
    the HPA scale down without metrics."""
    start(shop, pool, 2)
    busy = youngest(shop, pool, 3)
    ledger = shop.ledger()
    pin_long_task(shop, ledger, pool, busy, LONG)
    hpa = {"minReplicas": 1, "maxReplicas": 1, "cpu": {"averageUtilization": 80}}
    cluster.kubectl(
        "patch", "cwp", pool, "-n", shop.namespace, "--type=merge",
        "-p", json.dumps({"spec": {"autoscaling": hpa}}),
    )  # fmt: skip
    wait_for("the HPA to remove the idle workers", lambda: names(shop, pool) == {busy}, timeout=90)
    tally = assert_exactly_once(ledger, timeout=LONG + 30)
    report("HPA 3 -> 1, one busy", tally)


def test_the_builtin_scaler_removes_the_idle_workers_once_the_queue_drains(
    cluster: Cluster, shop: Shop, pool: str
) -> None:
    # A long cooldown holds the three workers while the long task is pinned: the short
    # tasks may finish before it runs (a loaded machine), and a scale-down then would take
    # the youngest worker before its cost says busy. The short cooldown comes after.
    builtin = builtin_engine(target=1, cooldown=600)
    start(shop, pool, 1, autoscaling=builtin)
    ledger = shop.ledger()
    for i in range(3):
        shop.send(ledger, "shop.long", [5, f"short-{i}"], pool)
    wait_for("3 workers for 3 tasks", lambda: len(shop.pods(pool)) == 3, timeout=90)
    shop.wait_pool(pool)
    wait_for(
        "the operator to hear all three",
        lambda: (status(shop, pool).get("workers") or {}).get("online") == 3,
        timeout=60,
    )
    busy = max(shop.pods(pool), key=lambda p: p["metadata"]["creationTimestamp"])
    busy_name = busy["metadata"]["name"]
    # The youngest worker (the first to go without its cost) runs the long task; the
    # short ones finish and the queue is empty: the load is 1, so 1 replica.
    pin_long_task(shop, ledger, pool, busy_name, LONG + 15)
    assert len(shop.pods(pool)) == 3, "the cooldown held the workers"
    builtin["queueLength"]["cooldownSeconds"] = 5
    cluster.kubectl(
        "patch", "cwp", pool, "-n", shop.namespace, "--type=merge",
        "-p", json.dumps({"spec": {"autoscaling": builtin}}),
    )  # fmt: skip
    expect(
        shop,
        pool,
        "the scale-down to the busy worker",
        lambda: names(shop, pool) == {busy_name} and status(shop, pool).get("replicas") == 1,
        timeout=LONG + 10,
    )
    assert ledger.tally().completed == 3, "the long task still runs"
    tally = assert_exactly_once(ledger, timeout=LONG + 40)
    report("builtin 3 -> 1 after the queue drained, one busy", tally)


# ---- every worker busy: a drain ----------------------------------------------------------------
def test_when_every_worker_is_busy_one_drains_before_it_goes(
    cluster: Cluster, shop: Shop, pool: str
) -> None:
    start(shop, pool, 3)
    ledger = shop.ledger()
    busy = busy_on(shop, ledger, pool, 3)
    with PodWatch(cluster, shop.namespace, f"celeryproject.org/pool={pool}") as watch:
        scale(shop, pool, 2)
        cond = wait_for(
            "Reconciling=Draining",
            lambda: (c := condition(shop, pool, "Reconciling")).get("reason") == "Draining" and c,
            timeout=30,
        )
        victim = next(p for p in busy if p in cond["message"])
        # The victim takes nothing new: two more tasks go to the others once they are free.
        extra = [shop.send(ledger, "shop.long", [2, f"after-{i}"], pool) for i in range(2)]
        assert len(names(shop, pool)) == 3, "the replicas wait for the drain"
        wait_for(
            "the drained worker gone", lambda: victim not in names(shop, pool), timeout=LONG + 30
        )
        tally = assert_exactly_once(ledger, timeout=LONG + 60)
        assert all(pod_of(ledger, t) != victim for t in extra), "a drained worker took a task"
        assert_no_sigkill(watch, [victim])
    assert len(names(shop, pool)) == 2
    report("scale 3 -> 2, all busy: drained", tally)


def test_a_drain_ends_at_its_timeout_and_the_shutdown_takes_over(
    cluster: Cluster, shop: Shop, pool: str
) -> None:
    """docs/autoscaling.md: after drainTimeoutSeconds the pod is removed anyway, and its
    running task gets the graceful shutdown (softShutdownTimeout), which it fits in."""
    start(shop, pool, 2, scaleDown={"drainTimeoutSeconds": 3})
    ledger = shop.ledger()
    busy = busy_on(shop, ledger, pool, 2, seconds=15)  # well inside the soft shutdown
    with PodWatch(cluster, shop.namespace, f"celeryproject.org/pool={pool}") as watch:
        scale(shop, pool, 1)
        wait_for("one worker left", lambda: len(names(shop, pool)) == 1, timeout=30)
        gone = next(p for p in busy if p not in names(shop, pool))
        # Removed before its task could finish (LONG seconds): the drain timed out.
        assert ledger.tally().completed == 0
        tally = assert_exactly_once(ledger, timeout=LONG + GRACE)
        assert_no_sigkill(watch, [gone], timeout=GRACE)
    report("drain timeout 3 s < task: soft shutdown finished it", tally)


# ---- the built-in scaler sees the whole load ------------------------------------------------------
def test_six_running_tasks_and_none_waiting_do_not_scale_in(
    cluster: Cluster, shop: Shop, pool: str
) -> None:
    builtin = builtin_engine(target=2, cooldown=3)
    start(shop, pool, 3, autoscaling={**builtin, "minReplicas": 3}, concurrency=2)
    ledger = shop.ledger()
    start_long_tasks(shop, ledger, pool, 6, LONG)
    cluster.kubectl(
        "patch", "cwp", pool, "-n", shop.namespace, "--type=merge",
        "-p", json.dumps({"spec": {"autoscaling": builtin}}),
    )  # fmt: skip
    wait_for(
        "the scaler to see 6 running and none waiting",
        lambda: (
            (a := status(shop, pool).get("autoscaler") or {}).get("activeTasks") == 6
            and a.get("queueLength") == 0
        ),
        timeout=30,
    )
    seen = status(shop, pool)["autoscaler"].get("lastScaleTime")
    # Observed for more than two cooldowns (a poll a second): (0 + 6) / 2 keeps all 3.
    with pytest.raises(AssertionError, match="timed out"):
        wait_for("a scale-in", lambda: status(shop, pool)["replicas"] < 3, timeout=8)
    assert status(shop, pool)["autoscaler"].get("lastScaleTime") == seen
    tally = assert_exactly_once(ledger, timeout=LONG + 30)
    report("0 waiting, 6 running: stayed at 3", tally)


def test_a_prefixed_redis_app_scales_on_its_real_backlog(
    cluster: Cluster, shop: Shop, pool: str
) -> None:
    """The app keeps its queues under a key prefix with its own priority steps; the
    CeleryApp says so (spec.broker.transportOptions) and the scaler counts them."""
    options = {"global_keyprefix": "prefixed:", "priority_steps": [0, 4, 9]}
    app = json.loads(cluster.kubectl("get", "capp", "shop", "-n", shop.namespace, "-o", "json"))
    prefixed = {
        "apiVersion": "celeryproject.org/v1alpha1",
        "kind": "CeleryApp",
        "metadata": {"name": "prefixed", "namespace": shop.namespace},
        "spec": {
            **{k: v for k, v in app["spec"].items() if k not in ("beat", "broker")},
            "broker": {**app["spec"]["broker"], "transportOptions": options},
            "beat": {"enabled": False},
            "env": [{"name": "SHOP_BROKER_TRANSPORT_OPTIONS", "value": json.dumps(options)}],
        },
    }
    cluster.apply(prefixed)
    builtin = {
        "minReplicas": 1,
        "maxReplicas": 4,
        "queueLength": {"targetPerReplica": 2, "engine": "builtin", "pollingIntervalSeconds": 1},
    }
    body = pool_of_shop(shop.namespace, pool, spec(pool, autoscaling=builtin))
    body["spec"]["appRef"] = {"name": "prefixed"}
    try:
        cluster.apply(body)
        shop.wait_pool(pool)
        producer = Celery("prefixed", broker=shop.redis.url_for("127.0.0.1", 0))
        producer.conf.broker_transport_options = options
        ledger = shop.ledger()
        try:
            for i in range(8):
                result = producer.send_task(
                    "shop.long", args=[8, f"p-{i}"], queue=pool, priority=i % 10
                )
                ledger.sent.append(result.id)
            wait_for("4 workers for 8 tasks", lambda: len(shop.pods(pool)) == 4, timeout=90)
            # The status follows the scale a settling moment later (CHILD_STATUS_DELAY): it
            # says what the scaler counted under the prefix when it chose 4.
            wait_for(
                "the status to show the backlog counted under the prefix",
                lambda: (
                    (a := status(shop, pool).get("autoscaler") or {}).get("desiredReplicas") == 4
                    and a.get("queueLength", 0) > 0
                ),
                timeout=30,
            )
            tally = assert_exactly_once(ledger, timeout=120)
        finally:
            producer.close()
    finally:
        cluster.run("delete", "capp", "prefixed", "-n", shop.namespace, "--wait=false")
    report("global_keyprefix + priority steps: scaled 1 -> 4", tally)


# ---- a worker that stops answering is never idle ----------------------------------------------------
def test_a_stopped_worker_is_never_taken_for_idle(
    cluster: Cluster, shop: Shop, pool: str, real_node: RealNode
) -> None:
    # No liveness probe: it would restart the stopped worker, which is not what is tested.
    start(shop, pool, 1, probes={"liveness": {"enabled": False}})
    stopped = youngest(shop, pool, 2)  # without its cost, the first one to go
    pod = shop.cluster.get("pod", stopped, shop.namespace)
    pid = real_node.container_pid(pod["status"]["containerStatuses"][0]["containerID"])
    os.kill(pid, signal.SIGSTOP)  # heartbeats stop, as with a hang
    try:
        wait_for(
            "the stopped worker counted unknown, with a busy cost",
            lambda: (
                (status(shop, pool).get("workers") or {}).get("unknown") == 1
                and cost(shop, stopped) == "100"
            ),
            timeout=30,
        )
        scale(shop, pool, 1)
        wait_for("the idle worker gone", lambda: names(shop, pool) == {stopped}, timeout=GRACE)
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(
        "the worker heard again",
        lambda: (status(shop, pool).get("workers") or {}).get("online") == 1,
        timeout=30,
    )
