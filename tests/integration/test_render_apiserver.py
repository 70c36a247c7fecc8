"""Every object the builders render is accepted by the real apiserver (server-side dry run)
and stored as rendered, and the pods they describe are admitted under Pod Security
"restricted"."""

from __future__ import annotations

import json
from typing import Any

import pytest

from celery_operator.k8s.objects import contains
from tests.support.cluster import Cluster
from tests.unit.test_render_golden import CASES

pytestmark = pytest.mark.cluster


def _rendered() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, build in sorted(CASES.items()):
        result = build()
        objs = result if isinstance(result, list) else [result] if result is not None else []
        out.extend((f"{name}-{o['kind']}" if len(objs) > 1 else name, o) for o in objs)
    return out


@pytest.fixture(scope="module")
def restricted_ns(cluster: Cluster) -> str:
    ns = cluster.create_namespace(
        "restricted",
        labels={
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        },
    )
    cluster.kubectl("create", "serviceaccount", "shop-workers", "-n", ns)  # worker-options
    return ns


def _dry_run(cluster: Cluster, obj: dict[str, Any], ns: str) -> Any:
    obj = json.loads(json.dumps(obj))
    obj["metadata"]["namespace"] = ns
    obj["metadata"].pop("ownerReferences", None)  # owners do not exist in this namespace
    return cluster.run("create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(obj))


@pytest.mark.parametrize(("case", "obj"), _rendered(), ids=[n for n, _ in _rendered()])
def test_rendered_object_is_accepted(
    cluster: Cluster, keda_crds: None, restricted_ns: str, case: str, obj: dict[str, Any]
) -> None:
    """KEDA objects are checked by KEDA's real CRD schemas (installed by keda_crds)."""
    r = _dry_run(cluster, obj, restricted_ns)
    assert r.code == 0, f"{case}: {r.stderr}"
    assert "Warning" not in r.stderr, f"{case} draws warnings: {r.stderr}"
    accepted = json.loads(r.stdout)
    assert accepted["kind"] == obj["kind"]
    # What the server stores holds every field as rendered: drift detection by content
    # (k8s.objects.contains) sees no drift in a child nobody edited, whatever the server
    # defaulted, reordered or rewrote (quantities).
    sent = json.loads(json.dumps(obj))
    sent["metadata"]["namespace"] = restricted_ns
    sent["metadata"].pop("ownerReferences", None)
    assert contains(accepted, sent), f"{case}: the stored object differs from the rendered one"


@pytest.mark.parametrize(
    ("case", "obj"),
    [(n, o) for n, o in _rendered() if o["kind"] == "Deployment"],
    ids=[n for n, o in _rendered() if o["kind"] == "Deployment"],
)
def test_rendered_pods_meet_restricted(
    cluster: Cluster, restricted_ns: str, case: str, obj: dict[str, Any]
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe", "namespace": restricted_ns},
        "spec": obj["spec"]["template"]["spec"],
    }
    r = cluster.run("create", "--dry-run=server", "-f", "-", input=json.dumps(pod))
    assert r.code == 0, f"{case}: {r.stderr}"


def test_restricted_really_rejects_a_root_pod(cluster: Cluster, restricted_ns: str) -> None:
    """The check above can fail: the same namespace rejects a pod that runs as root."""
    _, deploy = next((n, o) for n, o in _rendered() if o["kind"] == "Deployment")
    spec = json.loads(json.dumps(deploy["spec"]["template"]["spec"]))
    spec["securityContext"] = {"runAsUser": 0}
    spec["containers"][0].pop("securityContext")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "root"}, "spec": spec}
    r = cluster.run(
        "create", "-n", restricted_ns, "--dry-run=server", "-f", "-", input=json.dumps(pod)
    )
    assert r.code != 0
    assert "restricted" in r.stderr


def test_restricted_rejects_a_users_sidecar_without_a_security_context(
    cluster: Cluster, restricted_ns: str
) -> None:
    """The operator leaves users' containers as written (docs/pods.md): the rendered pod with
    a sidecar meets "restricted" only because the sidecar sets its securityContext; without
    it, the same namespace refuses the pod and names the sidecar."""
    deploy = CASES["worker-pod-additions"]()
    spec = json.loads(json.dumps(deploy["spec"]["template"]["spec"]))
    sidecar = next(c for c in spec["initContainers"] if c.get("restartPolicy") == "Always")
    sidecar.pop("securityContext")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare"}, "spec": spec}
    r = cluster.run(
        "create", "-n", restricted_ns, "--dry-run=server", "-f", "-", input=json.dumps(pod)
    )
    assert r.code != 0
    assert 'violates PodSecurity "restricted:latest"' in r.stderr, r.stderr
    assert f'container "{sidecar["name"]}" must set securityContext.allowPrivilegeEscalation' in (
        r.stderr
    ), r.stderr
