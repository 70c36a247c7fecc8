"""The three controllers on the real control plane, driven with kubectl as a user would.

The operator runs as a subprocess under its shipped ServiceAccount and RBAC (a real token),
kwok plays the kubelet so Deployments really become ready.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.support.cluster import Cluster, wait_for
from tests.support.objects import deep_merge, example
from tests.support.operator import OperatorProcess

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

APP = example("celeryapp/examples/shop.yaml")
POOL = example("celeryworkerpool/examples/shop-default.yaml")
FLOWER = example("flower/examples/shop.yaml")


def secret(
    ns: str, name: str = "shop-broker", url: str = "redis://:pw@redis:6379/0"
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "stringData": {"url": url},
    }


def app(ns: str, name: str = "shop", **spec: Any) -> dict[str, Any]:
    obj = deep_merge(APP, {"metadata": {"name": name, "namespace": ns}, "spec": spec})
    obj["spec"].pop("resultBackend", None)
    obj["spec"]["beat"] = spec.get("beat", {"enabled": True})
    return obj


def pool(
    ns: str, name: str = "default", app_name: str = "shop", app_ns: str | None = None, **spec: Any
) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": app_name}
    if app_ns:
        ref["namespace"] = app_ns
    return deep_merge(
        POOL, {"metadata": {"name": name, "namespace": ns}, "spec": {"appRef": ref, **spec}}
    )


def wait_ready(cluster: Cluster, kind: str, name: str, ns: str, timeout: int = 60) -> None:
    cluster.wait("--for=condition=Ready", f"{kind}/{name}", "-n", ns, timeout=timeout)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return {}


def deployment(cluster: Cluster, name: str, ns: str) -> dict[str, Any] | None:
    return cluster.get("deployment", name, ns) if cluster.exists("deployment", name, ns) else None


def test_examples_in_any_order_become_ready(cluster: Cluster, operator: OperatorProcess) -> None:
    """The shipped examples, applied CR-first (pools before their app), all reach Ready."""
    cluster.kubectl("apply", "-f", "crds/celeryapp/examples/00-prerequisites.yaml")
    started = time.monotonic()
    for path in (
        "crds/celeryworkerpool/examples/",
        "crds/flower/examples/shop.yaml",
        "crds/celeryapp/examples/shop.yaml",
    ):
        cluster.kubectl("apply", "-f", path)
    wait_ready(cluster, "celeryapp", "shop", "shop")
    for ns, name in (("shop", "default"), ("shop", "reports"), ("team-a", "emails")):
        wait_ready(cluster, "celeryworkerpool", name, ns)
    wait_ready(cluster, "flower", "shop", "shop")
    elapsed = time.monotonic() - started
    print(f"\nexamples: kubectl apply -> all Ready in {elapsed:.1f}s")

    out = cluster.kubectl("get", "celery", "-n", "shop")
    header = out.splitlines()[0].split()
    assert header[:6] == ["NAME", "READY", "POOLS", "WORKERS", "FLOWER", "AGE"], out
    row = next(
        line.split()
        for line in out.splitlines()
        if line.startswith("celeryapp.celeryproject.org/shop")
    )
    assert row[1:5] == ["True", "3/3", "4/4", "shop"], out
    app_status = cluster.get("celeryapp", "shop", "shop")["status"]
    assert {(p["namespace"], p["name"]) for p in app_status["workerPools"]} == {
        ("shop", "default"),
        ("shop", "reports"),
        ("team-a", "emails"),
    }
    assert app_status["flower"] == {
        "name": "shop",
        "ready": True,
        "url": "http://shop-flower.shop.svc:5555",
    }
    assert app_status["beat"] == {"ready": True}
    # The team pool's workers read the operator's mirror of the broker Secret.
    env = cluster.get("deployment", "shop-emails", "team-a")["spec"]["template"]["spec"][
        "containers"
    ][0]["env"]
    broker = next(e for e in env if e["name"] == "CELERY_BROKER_URL")
    assert broker["valueFrom"]["secretKeyRef"] == {
        "name": "shop-emails-connection",
        "key": "broker-url",
    }
    assert cluster.exists("secret", "shop-emails-connection", "team-a")


def test_pool_changes_roll_out_and_scale(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    cluster.apply([secret(namespace), app(namespace), pool(namespace, replicas=2, concurrency=2)])
    wait_ready(cluster, "celeryworkerpool", "default", namespace)
    before = cluster.get("deployment", "shop-default", namespace)

    cluster.kubectl(
        "patch",
        "cwp",
        "default",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"concurrency":6}}',
    )

    def rolled() -> bool:
        d = cluster.get("deployment", "shop-default", namespace)
        args = d["spec"]["template"]["spec"]["containers"][0]["args"]
        return (
            "--concurrency=6" in args
            and d["metadata"]["generation"] > before["metadata"]["generation"]
        )

    wait_for("the Deployment template to carry the new concurrency", rolled)
    cluster.kubectl(
        "rollout", "status", "deployment/shop-default", "-n", namespace, "--timeout=60s"
    )
    rs = json.loads(
        cluster.kubectl(
            "get", "rs", "-n", namespace, "-l", "celeryproject.org/pool=default", "-o", "json"
        )
    )["items"]
    assert len(rs) == 2, "a rolling update leaves the old ReplicaSet scaled down beside the new one"

    cluster.kubectl("scale", "cwp/default", "-n", namespace, "--replicas=4")
    cluster.wait(
        "--for=jsonpath={.status.readyReplicas}=4", "deployment/shop-default", "-n", namespace
    )
    wait_for(
        "the pool's status to count 4 ready workers",
        lambda: cluster.get("cwp", "default", namespace)["status"]["readySummary"] == "4/4",
    )


def test_deleted_or_edited_child_is_restored(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    cluster.apply([secret(namespace), app(namespace), pool(namespace)])
    wait_ready(cluster, "celeryworkerpool", "default", namespace)
    old_uid = cluster.get("deployment", "shop-default", namespace)["metadata"]["uid"]

    cluster.kubectl("delete", "deployment", "shop-default", "-n", namespace)
    wait_for(
        "the deleted worker Deployment to come back",
        lambda: (
            (d := deployment(cluster, "shop-default", namespace)) is not None
            and d["metadata"]["uid"] != old_uid
        ),
        timeout=30,
    )
    # A hand edit of the template is reverted.
    cluster.kubectl("set", "image", "deployment/shop-default", "worker=evil:1", "-n", namespace)
    wait_for(
        "the hand-edited image to be restored",
        lambda: (
            cluster.get("deployment", "shop-default", namespace)["spec"]["template"]["spec"][
                "containers"
            ][0]["image"]
            == APP["spec"]["image"]
        ),
        timeout=30,
    )
    cluster.kubectl("delete", "pdb", "shop-default", "-n", namespace)
    wait_for(
        "the deleted PDB to come back",
        lambda: cluster.exists("pdb", "shop-default", namespace),
        timeout=30,
    )


def test_hand_edits_of_children_without_a_moving_generation_are_reverted(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    """Services (and HPAs, before a feature gate) never bump metadata.generation: drift is
    found by content, from the watch event, well before the operator's 60 s resync."""
    flower = deep_merge(FLOWER, {"metadata": {"name": "shop", "namespace": namespace}})
    flower["spec"].pop("basicAuth", None)
    cpu = {"maxReplicas": 3, "cpu": {"averageUtilization": 80}}
    cluster.apply([secret(namespace), app(namespace), pool(namespace, autoscaling=cpu), flower])
    wait_ready(cluster, "flower", "shop", namespace)
    wait_for("the HPA", lambda: cluster.exists("hpa", "shop-default", namespace))
    svc = cluster.get("service", "shop-flower", namespace)
    port = svc["spec"]["ports"][0]["port"]
    generation = svc["metadata"].get("generation")

    cluster.kubectl(
        "patch",
        "service",
        "shop-flower",
        "-n",
        namespace,
        "--type=json",
        "-p",
        '[{"op":"replace","path":"/spec/ports/0/port","value":8081}]',
    )
    edited = cluster.get("service", "shop-flower", namespace)
    assert edited["metadata"].get("generation") == generation  # nothing to detect it by
    wait_for(
        "the hand-edited Service port to be restored",
        lambda: (
            cluster.get("service", "shop-flower", namespace)["spec"]["ports"][0]["port"] == port
        ),
        timeout=30,
    )
    cluster.kubectl(
        "patch",
        "hpa",
        "shop-default",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"maxReplicas":50}}',
    )
    wait_for(
        "the hand-edited HPA maxReplicas to be restored",
        lambda: cluster.get("hpa", "shop-default", namespace)["spec"]["maxReplicas"] == 3,
        timeout=30,
    )


def test_a_name_taken_by_a_hand_made_object_is_never_taken_over(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    foreign = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "shop-default", "namespace": namespace, "labels": {"by": "hand"}},
        "spec": {"maxUnavailable": 3, "selector": {"matchLabels": {"by": "hand"}}},
    }
    cluster.apply(foreign)
    cluster.apply([secret(namespace), app(namespace), pool(namespace)])
    # The worker Deployment is applied before the PDB, so it runs; once it is ready, the
    # pool's status says so (readyReplicas) and still reports the conflict: a status-only
    # pass, which applies nothing, must not turn it into Ready.
    status = wait_for(
        "the pool's status to show its ready worker",
        lambda: (
            s
            if (s := cluster.get("celeryworkerpool", "default", namespace).get("status"))
            and s.get("readyReplicas") == POOL["spec"]["replicas"]
            else None
        ),
    )
    ready = condition({"status": status}, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ChildConflict"), ready
    assert "PodDisruptionBudget" in ready["message"], ready
    assert f"{namespace}/shop-default" in ready["message"], ready
    assert "rename or delete it" in ready["message"], ready
    pdb = cluster.get("pdb", "shop-default", namespace)
    assert pdb["spec"]["maxUnavailable"] == 3
    assert pdb["metadata"]["labels"] == {"by": "hand"}
    assert not pdb["metadata"].get("ownerReferences")
    managers = {m["manager"] for m in pdb["metadata"].get("managedFields") or []}
    assert "celery-operator" not in managers, managers


def test_a_hand_copy_of_a_child_is_not_adopted(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    """The operator creates children without reading them first (a non-forced apply): a
    name taken by an object that differs is refused by the apiserver, but a hand copy that
    holds every value the operator sets would be taken in silently. It is not: the copy,
    made before the pool, gets our fields back off and the pool says ChildConflict."""
    cluster.apply([secret(namespace), app(namespace), pool(namespace)])
    wait_ready(cluster, "celeryworkerpool", "default", namespace)
    pdb = cluster.get("pdb", "shop-default", namespace)
    cluster.kubectl("delete", "celeryworkerpool", "default", "-n", namespace, "--wait=true")
    wait_for(
        "the pool's children to be garbage-collected",
        lambda: (
            not cluster.exists("pdb", "shop-default", namespace)
            and not cluster.exists("deployment", "shop-default", namespace)
        ),
    )
    copy = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            k: v
            for k, v in pdb["metadata"].items()
            if k in ("name", "namespace", "labels", "annotations")
        },
        "spec": pdb["spec"],
    }
    cluster.apply(copy)
    made = cluster.get("pdb", "shop-default", namespace)["metadata"]["creationTimestamp"]
    # creationTimestamps have one-second steps: the pool comes strictly after the copy.
    wait_for("the next second", lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) > made)
    cluster.apply(pool(namespace))
    status = wait_for(
        "the pool to report the conflict",
        lambda: (
            s
            if (s := cluster.get("celeryworkerpool", "default", namespace).get("status"))
            and (condition({"status": s}, "Ready") or {}).get("reason") == "ChildConflict"
            else None
        ),
    )
    ready = condition({"status": status}, "Ready")
    assert "PodDisruptionBudget" in ready["message"], ready
    assert "rename or delete it" in ready["message"], ready
    live = cluster.get("pdb", "shop-default", namespace)
    assert not live["metadata"].get("ownerReferences"), live["metadata"]
    managers = {m["manager"] for m in live["metadata"].get("managedFields") or []}
    assert "celery-operator" not in managers, managers
    assert live["spec"] == pdb["spec"]


def test_deleted_mirror_secret_is_restored(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    """Secrets are not watched (no cluster-wide list/watch): any reconcile repairs them."""
    team = cluster.create_namespace("team", labels={"celeryproject.org/attach-to-shop": "true"})
    try:
        cluster.apply([secret(namespace), app(namespace), pool(team, "emails", app_ns=namespace)])
        wait_ready(cluster, "celeryworkerpool", "emails", team)
        cluster.kubectl("delete", "secret", "shop-emails-connection", "-n", team)
        # A spec change reconciles the pool at once (the periodic resync would too).
        cluster.kubectl(
            "patch", "cwp", "emails", "-n", team, "--type=merge", "-p", '{"spec":{"concurrency":3}}'
        )
        wait_for(
            "the mirror Secret to come back",
            lambda: cluster.exists("secret", "shop-emails-connection", team),
            timeout=30,
        )
    finally:
        cluster.run("delete", "namespace", team, "--wait=false")


def test_team_pools_bind_only_in_admitted_namespaces(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    admitted = cluster.create_namespace("team", labels={"celeryproject.org/attach-to-shop": "true"})
    refused = cluster.create_namespace("team")
    try:
        cluster.apply([secret(namespace), app(namespace)])
        cluster.apply(
            [pool(admitted, "emails", app_ns=namespace), pool(refused, "emails", app_ns=namespace)]
        )
        wait_ready(cluster, "celeryworkerpool", "emails", admitted)
        cluster.wait("--for=condition=Accepted=False", "cwp/emails", "-n", refused)
        c = condition(cluster.get("cwp", "emails", refused), "Accepted")
        assert c["reason"] == "NamespaceNotAllowed"
        assert f"does not admit pools from namespace {refused}" in c["message"]
        assert deployment(cluster, "shop-emails", refused) is None

        # Labelling the namespace admits it: the pool binds by itself.
        cluster.kubectl("label", "namespace", refused, "celeryproject.org/attach-to-shop=true")
        wait_ready(cluster, "celeryworkerpool", "emails", refused)
        wait_for(
            "the app to count both team pools",
            lambda: cluster.get("celeryapp", "shop", namespace)["status"]["pools"]["total"] == 2,
        )
    finally:
        for ns in (admitted, refused):
            cluster.run("delete", "namespace", ns, "--wait=false")


def test_pool_waits_for_its_app_and_stops_when_it_goes(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    cluster.apply(pool(namespace))
    cluster.wait("--for=condition=Accepted=False", "cwp/default", "-n", namespace)
    assert (
        condition(cluster.get("cwp", "default", namespace), "Accepted")["reason"] == "AppNotFound"
    )
    assert deployment(cluster, "shop-default", namespace) is None

    cluster.apply([secret(namespace), app(namespace)])
    wait_ready(cluster, "celeryworkerpool", "default", namespace)
    wait_ready(cluster, "celeryapp", "shop", namespace)

    cluster.kubectl("delete", "celeryapp", "shop", "-n", namespace)
    cluster.wait("--for=condition=Accepted=False", "cwp/default", "-n", namespace)
    assert (
        condition(cluster.get("cwp", "default", namespace), "Accepted")["reason"] == "AppNotFound"
    )
    cluster.wait("--for=delete", "deployment/shop-default", "-n", namespace)
    cluster.wait("--for=delete", "deployment/shop-beat", "-n", namespace)  # garbage-collected
    assert cluster.exists("cwp", "default", namespace), "pools belong to their teams and stay"


def test_deleting_a_pool_removes_its_children_and_its_app_entry(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    cluster.apply(
        [
            secret(namespace),
            app(namespace),
            pool(namespace, "default"),
            pool(
                namespace,
                "reports",
                queues=["reports"],
                autoscaling={"maxReplicas": 3, "cpu": {"averageUtilization": 80}},
            ),
        ]
    )
    wait_ready(cluster, "celeryworkerpool", "reports", namespace)
    wait_for(
        "2 pools in the app's status",
        lambda: cluster.get("celeryapp", "shop", namespace)["status"]["pools"]["total"] == 2,
    )
    assert cluster.exists("hpa", "shop-reports", namespace)

    cluster.kubectl("delete", "cwp", "reports", "-n", namespace)
    for kind in ("deployment", "hpa", "pdb"):
        cluster.wait("--for=delete", f"{kind}/shop-reports", "-n", namespace)
    wait_for(
        "the app's status to drop the pool",
        lambda: (
            [
                p["name"]
                for p in cluster.get("celeryapp", "shop", namespace)["status"]["workerPools"]
            ]
            == ["default"]
        ),
    )


def test_invalid_spec_past_admission_is_reported_and_creates_nothing(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    """A literal broker URL with a password is not something the CRD schema can reject;
    without the webhook it reaches the controller, which refuses it with the same message."""
    bad = app(namespace, broker={"url": {"value": "redis://:hunter2@redis:6379/0"}})
    bad["spec"]["broker"]["url"].pop("secretKeyRef", None)
    cluster.apply([bad, pool(namespace)])
    cluster.wait("--for=condition=Ready=False", "celeryapp/shop", "-n", namespace)
    c = condition(cluster.get("celeryapp", "shop", namespace), "Ready")
    assert c["reason"] == "InvalidSpec"
    assert c["message"].startswith(
        "spec.broker.url.value: a URL with a password must not be written in the spec"
    )
    assert "hunter2" not in json.dumps(cluster.get("celeryapp", "shop", namespace)["status"])
    assert deployment(cluster, "shop-beat", namespace) is None
    # Its pools render nothing from it either.
    cluster.wait(
        '--for=jsonpath={.status.conditions[?(@.type=="Ready")].reason}=AppInvalid',
        "cwp/default",
        "-n",
        namespace,
    )
    assert deployment(cluster, "shop-default", namespace) is None


def test_paused_app_keeps_children_as_they_are(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    cluster.apply([secret(namespace), app(namespace), pool(namespace)])
    wait_ready(cluster, "celeryworkerpool", "default", namespace)
    cluster.kubectl(
        "patch", "capp", "shop", "-n", namespace, "--type=merge", "-p", '{"spec":{"paused":true}}'
    )
    wait_for(
        "Reconciling=False reason Paused",
        lambda: (
            condition(cluster.get("celeryapp", "shop", namespace), "Reconciling").get("reason")
            == "Paused"
        ),
    )
    cluster.kubectl(
        "patch",
        "capp",
        "shop",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"image":"ghcr.io/example/shop:9.9.9"}}',
    )
    wait_for(
        "the pool to report the app paused",
        lambda: (
            condition(cluster.get("cwp", "default", namespace), "Reconciling").get("reason")
            == "Paused"
        ),
    )
    image = cluster.get("deployment", "shop-default", namespace)["spec"]["template"]["spec"][
        "containers"
    ][0]["image"]
    assert image == APP["spec"]["image"], "a paused app's children are not changed"

    cluster.kubectl(
        "patch", "capp", "shop", "-n", namespace, "--type=merge", "-p", '{"spec":{"paused":false}}'
    )
    wait_for(
        "the new image to roll out after unpausing",
        lambda: (
            cluster.get("deployment", "shop-default", namespace)["spec"]["template"]["spec"][
                "containers"
            ][0]["image"]
            == "ghcr.io/example/shop:9.9.9"
        ),
    )


def test_operator_log_is_clean(operator: OperatorProcess) -> None:
    """Runs after the tests above in this module: no reconcile raised."""
    assert operator.errors() == [], operator.tail(60)
