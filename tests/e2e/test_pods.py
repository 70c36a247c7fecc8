"""What users add to pods, on the real control plane: a pool with a sidecar, an init
container and mounted ConfigMaps gets a worker Deployment (and pods, admitted under Pod
Security "restricted") that has them; a sidecar the namespace's Pod Security level refuses
shows in the pool's Ready, and so does one the apiserver refuses outright; a bad spec is
refused at admission with its field paths; and
`kubectl get cwp -o wide` shows the engine, desired and busy columns."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.e2e.test_controllers import app, condition, pool, secret, wait_ready
from tests.support.cluster import Cluster, wait_for
from tests.support.operator import OperatorProcess, WebhookProcess
from tests.support.webhook import serving_webhook

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

RESTRICTED_NS = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
RESTRICTED = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
PROXY = {
    "name": "proxy",
    "image": "registry.example.com/db-proxy:1.0",
    "args": ["--port=5432"],
    "volumeMounts": [{"name": "shop-ca", "mountPath": "/etc/ssl/shop", "readOnly": True}],
    "securityContext": RESTRICTED,
}
INIT = {
    "name": "wait-for-db",
    "image": "registry.example.com/busybox:1.37",
    "command": ["sh", "-c", "true"],
    "securityContext": RESTRICTED,
}
ADDITIONS = {
    "volumes": [{"name": "worker-config", "configMap": {"name": "worker-config"}}],
    "volumeMounts": [{"name": "worker-config", "mountPath": "/etc/worker", "readOnly": True}],
    "initContainers": [INIT],
    "sidecars": [PROXY],
}
APP_CA = {
    "podDefaults": {
        "volumes": [{"name": "shop-ca", "configMap": {"name": "shop-ca"}}],
        "volumeMounts": [{"name": "shop-ca", "mountPath": "/etc/ssl/shop", "readOnly": True}],
    }
}


def config_maps(ns: str) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns},
            "data": {"settings.py": "x = 1\n"},
        }
        for name in ("shop-ca", "worker-config")
    ]


@pytest.fixture
def restricted(cluster: Cluster) -> Iterator[str]:
    ns = cluster.create_namespace("restricted", labels=RESTRICTED_NS)
    yield ns
    cluster.run("delete", "namespace", ns, "--wait=false")


def table_row(out: str) -> dict[str, str]:
    """The first row of a kubectl table, by column: cells are cut at the header's column
    starts (an empty cell is blank, not <none>)."""
    header, row = out.splitlines()[:2]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    bounds = [*starts[1:], None]
    return {header[a:b].strip(): row[a:b].strip() for a, b in zip(starts, bounds, strict=True)}


def template(cluster: Cluster, ns: str, name: str = "shop-default") -> dict[str, Any]:
    spec: dict[str, Any] = cluster.get("deployment", name, ns)["spec"]["template"]["spec"]
    return spec


def test_a_pool_with_a_sidecar_and_a_mounted_config_map(
    cluster: Cluster, operator: OperatorProcess, restricted: str
) -> None:
    ns = restricted
    cluster.apply([secret(ns), *config_maps(ns), app(ns, **APP_CA), pool(ns, **ADDITIONS)])
    wait_ready(cluster, "celeryworkerpool", "default", ns)

    spec = template(cluster, ns)
    init = {c["name"]: c for c in spec["initContainers"]}
    assert list(init) == ["wait-for-db", "proxy"]  # the init containers, then the sidecars
    assert init["proxy"]["restartPolicy"] == "Always"  # a native sidecar
    assert init["proxy"]["volumeMounts"] == PROXY["volumeMounts"]
    assert init["proxy"]["securityContext"] == RESTRICTED  # as written, nothing added
    assert "restartPolicy" not in init["wait-for-db"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert list(volumes) == ["tmp", "shop-ca", "worker-config"]
    assert volumes["worker-config"]["configMap"]["name"] == "worker-config"
    worker = spec["containers"][0]
    assert [c["name"] for c in spec["containers"]] == ["worker"]
    assert [(m["name"], m["mountPath"]) for m in worker["volumeMounts"]] == [
        ("tmp", "/tmp"),
        ("shop-ca", "/etc/ssl/shop"),
        ("worker-config", "/etc/worker"),
    ]

    # The pods themselves were admitted under "restricted", with the sidecar and mounts.
    pods = json.loads(
        cluster.kubectl(
            "get", "pods", "-n", ns, "-l", "celeryproject.org/pool=default", "-o", "json"
        )
    )["items"]
    assert len(pods) == 2
    for p in pods:
        assert [c["name"] for c in p["spec"]["initContainers"]] == ["wait-for-db", "proxy"]
        mounts = {m["name"] for m in p["spec"]["containers"][0]["volumeMounts"]}
        assert {"shop-ca", "worker-config"} <= mounts

    # kubectl get cwp -o wide: ENGINE, DESIRED and BUSY (empty cells print as blanks).
    out = cluster.kubectl("get", "cwp", "default", "-n", ns, "-o", "wide")
    cells = table_row(out)
    assert list(cells) == [
        "NAME",
        "APP",
        "QUEUES",
        "READY",
        "BUSY",
        "AUTOSCALING",
        "AGE",
        "ENGINE",
        "DESIRED",
        "ACCEPTED",
        "REASON",
    ], out
    assert cells["DESIRED"] == "2", out
    assert cells["ENGINE"] == "", out  # fixed replicas: no autoscaler
    assert cells["READY"] == "2/2", out

    # The app later takes a volume name the pool uses: the pool says so, its workers stay.
    cluster.kubectl(
        "patch",
        "capp",
        "shop",
        "-n",
        ns,
        "--type=json",
        "-p",
        json.dumps(
            [
                {
                    "op": "add",
                    "path": "/spec/podDefaults/volumes/-",
                    "value": {"name": "worker-config", "emptyDir": {}},
                }
            ]
        ),
    )

    def invalid() -> bool:
        ready = condition(cluster.get("celeryworkerpool", "default", ns), "Ready")
        return ready.get("reason") == "InvalidSpec"

    wait_for("the pool to report the collision", invalid, timeout=60)
    ready = condition(cluster.get("celeryworkerpool", "default", ns), "Ready")
    assert (
        "spec.volumes[0].name: volume name 'worker-config' is already used by the app's "
        "spec.podDefaults.volumes[1]" in ready["message"]
    )
    assert cluster.get("deployment", "shop-default", ns)["spec"]["replicas"] == 2


def test_a_sidecar_that_restricted_refuses_shows_in_ready(
    cluster: Cluster, operator: OperatorProcess, restricted: str
) -> None:
    """The operator leaves users' containers as written: one without the securityContext
    that "restricted" needs gets a valid Deployment whose pods the apiserver refuses, and
    the pool's Ready says why (reason FailedCreate, the apiserver's message)."""
    ns = restricted
    bare = {k: v for k, v in PROXY.items() if k not in ("securityContext", "volumeMounts")}
    cluster.apply([secret(ns), app(ns), pool(ns, sidecars=[bare])])

    def refused() -> bool:
        ready = condition(cluster.get("celeryworkerpool", "default", ns), "Ready")
        return ready.get("reason") == "FailedCreate"

    wait_for("the pool to report pods it cannot create", refused, timeout=90)
    message = condition(cluster.get("celeryworkerpool", "default", ns), "Ready")["message"]
    assert 'violates PodSecurity "restricted:latest"' in message, message
    assert 'container "proxy"' in message, message

    def app_names_it() -> bool:
        ready = condition(cluster.get("celeryapp", "shop", ns), "Ready")
        return (
            ready.get("status") == "False"
            and "pool " in ready.get("message", "")
            and ("FailedCreate: " in ready.get("message", ""))
        )

    wait_for("the app to name the pool's refused pods", app_names_it, timeout=60)

    # With the securityContext, the same pool runs.
    cluster.apply(pool(ns, sidecars=[{**bare, "securityContext": RESTRICTED}]))
    wait_ready(cluster, "celeryworkerpool", "default", ns, timeout=90)


def test_a_sidecar_the_apiserver_refuses_shows_in_ready(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    """What the CRD schema cannot check in a user's container (requests above limits):
    the apiserver refuses the Deployment (422), and the pool's Ready says so (ChildRejected)
    instead of a reconcile failing in the operator's log."""
    greedy = {**PROXY, "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}
    greedy.pop("volumeMounts")
    cluster.apply([secret(namespace), app(namespace), pool(namespace, sidecars=[greedy])])

    def rejected() -> bool:
        ready = condition(cluster.get("celeryworkerpool", "default", namespace), "Ready")
        return ready.get("reason") == "ChildRejected"

    wait_for("the pool to report the refused Deployment", rejected, timeout=60)
    message = condition(cluster.get("celeryworkerpool", "default", namespace), "Ready")["message"]
    assert "the apiserver refuses it: " in message, message
    assert "spec.template.spec.initContainers[0].resources.requests" in message, message
    assert "must be less than or equal to cpu limit" in message, message

    cluster.apply(pool(namespace, sidecars=[{**greedy, "resources": {"limits": {"cpu": "1"}}}]))
    wait_ready(cluster, "celeryworkerpool", "default", namespace, timeout=90)


@pytest.fixture(scope="module")
def webhook(
    cluster: Cluster, crds: list[str], operator: OperatorProcess
) -> Iterator[WebhookProcess]:
    yield from serving_webhook(cluster)


def test_bad_additions_are_refused_at_admission_with_field_paths(
    cluster: Cluster, webhook: WebhookProcess, namespace: str
) -> None:
    cluster.apply([secret(namespace), app(namespace, **APP_CA)])
    bad = pool(
        namespace,
        volumes=[{"name": "shop-ca", "secret": {"secretName": "shop-broker"}}],
        volumeMounts=[{"name": "settings", "mountPath": "/etc/settings"}],
        sidecars=[{**PROXY, "volumeMounts": [{"name": "certs", "mountPath": "/certs"}]}],
    )
    r = cluster.run("apply", "-f", "-", input=yaml.safe_dump(bad))
    assert r.code != 0, f"admitted: {r.stdout}"
    err = " ".join(r.stderr.split())
    print(f"\n{err}")
    assert 'admission webhook "vceleryworkerpool.celeryproject.org" denied the request' in err
    assert f"CeleryWorkerPool {namespace}/default is invalid: " in err
    for expected in (
        "spec.sidecars[0].volumeMounts[0].name: no volume 'certs' in the pod",
        "spec.volumes[0].name: volume name 'shop-ca' is already used by the app's "
        "spec.podDefaults.volumes[0]",
        "spec.volumeMounts[0].name: no volume 'settings' in the pod; a mount may name one of: "
        "tmp, shop-ca",
    ):
        assert expected in err, err
    assert not cluster.exists("celeryworkerpool", "default", namespace)

    # What the CRD alone can tell is refused by the apiserver before the webhook.
    r = cluster.run(
        "apply",
        "-f",
        "-",
        input=yaml.safe_dump(pool(namespace, sidecars=[{**PROXY, "name": "worker"}])),
    )
    assert r.code != 0
    assert "container name 'worker' is the operator's own container" in r.stderr

    # Fixed, the same pool is admitted.
    good = pool(
        namespace, volumes=[{"name": "config", "configMap": {"name": "c"}}], sidecars=[PROXY]
    )
    cluster.apply(good)
    assert cluster.exists("celeryworkerpool", "default", namespace)
