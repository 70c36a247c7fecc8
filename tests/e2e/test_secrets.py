"""Secrets on the real control plane, changed with kubectl as a user changes them: a team's
pool gets mirrors of its app's image pull Secrets (type and data kept) and its pods name
them; a rotated broker password, or a changed envFrom Secret, rolls the workers exactly
once (one Deployment generation, one new ReplicaSet), a key nobody reads rolls nothing,
and a restart of the operator rolls nothing (also beside a namespace being deleted).

The operator cannot watch Secrets: it polls the referenced ones. Here it polls every
POLL seconds, and the tests wait on its metrics (a poll that saw the change, then whole
rounds after it) instead of sleeping."""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.test_controllers import FLOWER, app, deep_merge, pool, wait_ready
from tests.e2e.test_failover import role
from tests.support.cluster import Cluster, wait_for
from tests.support.operator import OperatorProcess, new_workdir

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

POLL = 1
ATTACHED = {"celeryproject.org/attach-to-shop": "true"}
CHECKSUM = "celeryproject.org/secret-checksum"
DOCKER_JSON = "kubernetes.io/dockerconfigjson"


# ---- the operator, polling Secrets every POLL seconds ----------------------------------------
@pytest.fixture(scope="module")
def poller(cluster: Cluster, operator: OperatorProcess) -> Iterator[OperatorProcess]:
    """This module's operator (the session's stands aside, and comes back after)."""
    operator.stop()
    op = OperatorProcess(cluster, new_workdir(), f"--secret-poll-seconds={POLL}")
    try:
        start(op)
        yield op
    finally:
        op.stop()
        print(f"\n--- secret poller operator log tail ---\n{op.tail(40)}")
        operator.start()


def start(op: OperatorProcess) -> None:
    op.start()
    wait_for("the operator to lead", lambda: role(op) == "leader", 30)


def metric(op: OperatorProcess, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape('{' + labels + '}') if labels else ''} (\S+)$"
    m = re.search(pattern, op.metrics(), re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def rounds(op: OperatorProcess) -> float:
    return metric(op, "celery_operator_secret_poll_seconds_count")


def changes(op: OperatorProcess) -> float:
    return metric(op, "celery_operator_secret_polls_total", 'result="changed"')


def settle(op: OperatorProcess, n: int = 2) -> None:
    """`n` more whole rounds of the poller (and the reconciles the first one started have
    run by the end of the next: they take milliseconds, a round POLL seconds)."""
    target = rounds(op) + n
    wait_for(f"{n} rounds of the Secret poller", lambda: rounds(op) >= target, 30)


def noticed(op: OperatorProcess, before: float) -> None:
    """The poller saw a change made after `before` was read, and the owners ran."""
    wait_for("the Secret poller to see the change", lambda: changes(op) > before, 30)
    settle(op)


# ---- objects ---------------------------------------------------------------------------------
def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def secret(ns: str, name: str, type_: str = "Opaque", **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": type_,
        "data": {k: b64(v) for k, v in data.items()},
    }


def docker_config(registry: str, user: str) -> str:
    auth = b64(f"{user}:pw")
    return json.dumps({"auths": {registry: {"username": user, "password": "pw", "auth": auth}}})


def patch_secret(cluster: Cluster, ns: str, name: str, **data: str) -> None:
    body = json.dumps({"stringData": data})
    cluster.kubectl("patch", "secret", name, "-n", ns, "--type=merge", "-p", body)


@pytest.fixture
def team(cluster: Cluster) -> Iterator[str]:
    name = cluster.create_namespace("team", labels=ATTACHED)
    yield name
    cluster.run("delete", "namespace", name, "--wait=false")


# ---- what a rollout leaves behind --------------------------------------------------------------
def replicasets(cluster: Cluster, ns: str, deployment: str) -> set[str]:
    d = cluster.get("deployment", deployment, ns)
    out = json.loads(cluster.kubectl("get", "rs", "-n", ns, "-o", "json"))["items"]
    return {
        rs["metadata"]["name"]
        for rs in out
        if any(r.get("uid") == d["metadata"]["uid"] for r in rs["metadata"]["ownerReferences"])
    }


def state(cluster: Cluster, ns: str, deployment: str) -> tuple[int, str | None, set[str]]:
    """(generation, the pod template's Secret checksum, its ReplicaSets)."""
    d = cluster.get("deployment", deployment, ns)
    annotations = d["spec"]["template"]["metadata"].get("annotations") or {}
    return (
        d["metadata"]["generation"],
        annotations.get(CHECKSUM),
        replicasets(cluster, ns, deployment),
    )


def rolled_out(cluster: Cluster, ns: str, deployment: str) -> None:
    cluster.kubectl("rollout", "status", f"deployment/{deployment}", "-n", ns, "--timeout=60s")


def ready_reason(cluster: Cluster, kind: str, name: str, ns: str) -> tuple[str, str]:
    for c in cluster.get(kind, name, ns).get("status", {}).get("conditions") or []:
        if c["type"] == "Ready":
            return str(c["reason"]), str(c["message"])
    return "", ""


# ---- image pull Secrets ------------------------------------------------------------------------
def test_a_team_pool_gets_mirrors_of_the_apps_pull_secrets(
    cluster: Cluster, poller: OperatorProcess, namespace: str, team: str
) -> None:
    regcred = docker_config("registry.example.com", "shop")
    cluster.apply(
        [
            secret(namespace, "shop-broker", url="redis://:pw@redis:6379/0"),
            secret(namespace, "regcred", DOCKER_JSON, **{".dockerconfigjson": regcred}),
            app(
                namespace,
                beat={"enabled": False},
                imagePullSecrets=[{"name": "regcred"}, {"name": "late"}],
                workerPoolPolicy={"namespaceSelector": {"matchLabels": ATTACHED}},
            ),
            pool(team, "emails", app_ns=namespace, replicas=2),
        ]
    )
    # One of them does not exist: the pool says which, and runs anyway.
    wait_for(
        "the pool to say it cannot mirror the missing pull Secret",
        lambda: ready_reason(cluster, "cwp", "emails", team)[0] == "PullSecretUnreadable",
    )
    message = ready_reason(cluster, "cwp", "emails", team)[1]
    assert f"cannot mirror Secret {namespace}/late (it does not exist)" in message, message
    assert f"into namespace {team}" in message, message
    cluster.wait("--for=condition=Available", "deployment/shop-emails", "-n", team)

    mirror = cluster.get("secret", "shop-emails-pull-regcred", team)
    assert mirror["type"] == DOCKER_JSON
    assert unb64(mirror["data"][".dockerconfigjson"]) == regcred
    (owner,) = mirror["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"]) == ("CeleryWorkerPool", "emails")
    names = [{"name": "shop-emails-pull-regcred"}, {"name": "shop-emails-pull-late"}]
    generation, checksum, sets = state(cluster, team, "shop-emails")
    template = cluster.get("deployment", "shop-emails", team)["spec"]["template"]["spec"]
    assert template["imagePullSecrets"] == names
    pods = json.loads(
        cluster.kubectl(
            "get", "pods", "-n", team, "-l", "celeryproject.org/pool=emails", "-o", "json"
        )
    )["items"]
    assert pods
    assert all(p["spec"]["imagePullSecrets"] == names for p in pods)

    # It appears (another type): mirrored as it is, Ready again, and no pod rolled for it.
    late = docker_config("ghcr.io", "late")
    cluster.apply(secret(namespace, "late", "kubernetes.io/dockercfg", **{".dockercfg": late}))
    wait_ready(cluster, "celeryworkerpool", "emails", team)
    mirror = cluster.get("secret", "shop-emails-pull-late", team)
    assert mirror["type"] == "kubernetes.io/dockercfg"
    assert unb64(mirror["data"][".dockercfg"]) == late
    # A pull Secret's new data reaches its mirror, and rolls nothing either.
    rotated = docker_config("registry.example.com", "rotated")
    patch_secret(cluster, namespace, "regcred", **{".dockerconfigjson": rotated})
    wait_for(
        "the mirror to follow the rotated pull Secret",
        lambda: (
            unb64(
                cluster.get("secret", "shop-emails-pull-regcred", team)["data"][".dockerconfigjson"]
            )
            == rotated
        ),
    )
    settle(poller)
    assert state(cluster, team, "shop-emails") == (generation, checksum, sets)


# ---- rotation rolls the pods that read a Secret at start, once ---------------------------------
def test_a_rotated_secret_rolls_the_pods_that_read_it_once(
    cluster: Cluster, poller: OperatorProcess, namespace: str, team: str
) -> None:
    cluster.apply(
        [
            secret(namespace, "shop-broker", url="redis://:old@redis:6379/0", note="unread"),
            secret(team, "team-env", FEATURE="a"),
            app(namespace, workerPoolPolicy={"namespaceSelector": {"matchLabels": ATTACHED}}),
            pool(
                team,
                "emails",
                app_ns=namespace,
                replicas=2,
                envFrom=[{"secretRef": {"name": "team-env"}}],
            ),
        ]
    )
    wait_ready(cluster, "celeryworkerpool", "emails", team)
    wait_ready(cluster, "celeryapp", "shop", namespace)
    worker = state(cluster, team, "shop-emails")
    beat = state(cluster, namespace, "shop-beat")
    assert worker[1] is not None
    assert beat[1] is not None
    assert len(worker[2]) == 1

    # A key of the broker Secret that no pod reads: nothing rolls.
    seen = changes(poller)
    patch_secret(cluster, namespace, "shop-broker", note="still unread")
    noticed(poller, seen)
    assert state(cluster, team, "shop-emails") == worker
    assert state(cluster, namespace, "shop-beat") == beat

    # The password: the mirror and the workers' template in one write, one new ReplicaSet.
    new_url = "redis://:new@redis:6379/0"
    seen = changes(poller)
    patch_secret(cluster, namespace, "shop-broker", url=new_url)
    wait_for(
        "the workers to roll",
        lambda: (
            cluster.get("deployment", "shop-emails", team)["metadata"]["generation"] > worker[0]
        ),
    )
    mirror = cluster.get("secret", "shop-emails-connection", team)
    assert unb64(mirror["data"]["broker-url"]) == new_url
    rolled_out(cluster, team, "shop-emails")
    rolled_out(cluster, namespace, "shop-beat")
    noticed(poller, seen)
    rotated = state(cluster, team, "shop-emails")
    assert rotated[0] == worker[0] + 1, "one new pod template, written once"
    assert rotated[1] != worker[1]
    assert len(rotated[2] - worker[2]) == 1, "one new ReplicaSet"
    after_beat = state(cluster, namespace, "shop-beat")  # beat reads the broker URL too
    assert (after_beat[0], len(after_beat[2] - beat[2])) == (beat[0] + 1, 1)

    # An envFrom Secret of the pool (all of its keys count): once more, once.
    seen = changes(poller)
    patch_secret(cluster, team, "team-env", FEATURE="b")
    wait_for(
        "the workers to roll for their envFrom Secret",
        lambda: (
            cluster.get("deployment", "shop-emails", team)["metadata"]["generation"] > rotated[0]
        ),
    )
    rolled_out(cluster, team, "shop-emails")
    noticed(poller, seen)
    final = state(cluster, team, "shop-emails")
    assert final[0] == rotated[0] + 1
    assert len(final[2] - rotated[2]) == 1
    assert state(cluster, namespace, "shop-beat") == after_beat  # beat does not read it
    assert ready_reason(cluster, "cwp", "emails", team)[0] == "Available"


def test_a_restart_of_the_operator_rolls_nothing(
    cluster: Cluster, poller: OperatorProcess, namespace: str, team: str
) -> None:
    flower = deep_merge(FLOWER, {"metadata": {"name": "shop", "namespace": namespace}})
    cluster.apply(
        [
            secret(namespace, "shop-broker", url="redis://:pw@redis:6379/0"),
            secret(namespace, "shop-flower-auth", auth="admin:pw"),
            secret(namespace, "regcred", DOCKER_JSON, **{".dockerconfigjson": "{}"}),
            secret(team, "team-env", FEATURE="a"),
            app(
                namespace,
                imagePullSecrets=[{"name": "regcred"}],
                workerPoolPolicy={"namespaceSelector": {"matchLabels": ATTACHED}},
            ),
            pool(team, "emails", app_ns=namespace, envFrom=[{"secretRef": {"name": "team-env"}}]),
            pool(namespace, "default"),
            flower,
        ]
    )
    for kind, name, ns in (
        ("celeryworkerpool", "emails", team),
        ("celeryworkerpool", "default", namespace),
        ("flower", "shop", namespace),
        ("celeryapp", "shop", namespace),
    ):
        wait_ready(cluster, kind, name, ns)
    deployments = [
        (team, "shop-emails"),
        (namespace, "shop-default"),
        (namespace, "shop-beat"),
        (namespace, "shop-flower"),
    ]
    before = {d: state(cluster, *d) for d in deployments}
    assert all(s[1] is not None for s in before.values()), before

    cp = cluster.control_plane
    assert cp is not None, "this test freezes the local control plane's kube-controller-manager"
    poller.stop()
    # As an earlier test leaves one on a busy cluster: a namespace being deleted whose
    # content is still there (the namespace controller frozen). Its pool's reconcile ends
    # "gone" (nothing may be created there), so the restarted operator is not waited on for
    # it; it must not count as an error either.
    with cp.paused("kube-controller-manager"):
        doomed = cluster.create_namespace("doomed", labels=ATTACHED)
        cluster.apply(pool(doomed, "emails", app_ns=namespace))
        cluster.run("delete", "namespace", doomed, "--wait=false")
        start(poller)
        active = {
            ns["metadata"]["name"]
            for ns in json.loads(cluster.kubectl("get", "namespaces", "-o", "json"))["items"]
            if ns.get("status", {}).get("phase") == "Active"
        }
        assert doomed not in active
        listed = cluster.kubectl("get", "celeryapps,celeryworkerpools,flowers", "-A", "-o", "json")
        kinds = {"CeleryApp": "app", "CeleryWorkerPool": "pool", "Flower": "flower"}
        totals = Counter(
            kinds[o["kind"]]
            for o in json.loads(listed)["items"]
            if o["metadata"]["namespace"] in active
        )
        assert set(totals) == set(kinds.values()), totals
        wait_for(
            "the restarted operator to reconcile every app, pool and Flower",
            lambda: all(
                metric(poller, "celery_operator_reconciles_total", f'kind="{kind}",result="ok"')
                >= n
                for kind, n in totals.items()
            ),
            # The first pass takes seconds: well before the full resync (60 s in the tests'
            # operator), whose reconciles would make up the count of a pass that missed one.
            45,
        )
        wait_for(
            "the pool in the namespace being deleted to be let go",
            lambda: metric(poller, "celery_operator_reconciles_total", 'kind="pool",result="gone"'),
            60,
        )
    settle(poller)
    assert {d: state(cluster, *d) for d in deployments} == before
    assert not poller.errors(), poller.errors()
