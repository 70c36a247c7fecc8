"""The local control plane is a real one: each test proves one Kubernetes behaviour the
operator depends on, against the real apiserver, controller manager, scheduler and kwok."""

from __future__ import annotations

import base64
import datetime as dt
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from celery_operator.certs import pki
from tests.support.admission import ReviewHandler
from tests.support.cluster import Cluster, wait_for

pytestmark = pytest.mark.cluster


def test_deployment_pods_become_ready(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl(
        "create", "deployment", "web", "-n", namespace, "--image=nginx:1.27", "--replicas=3"
    )
    cluster.wait(
        "--for=jsonpath={.status.readyReplicas}=3", "deployment/web", "-n", namespace, timeout=90
    )
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json"))["items"]
    assert len(pods) == 3
    assert {p["spec"]["nodeName"] for p in pods} <= {"kwok-node-0", "kwok-node-1"}


def test_garbage_collector_deletes_dependents(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("create", "configmap", "owner", "-n", namespace)
    uid = cluster.get("configmap", "owner", namespace)["metadata"]["uid"]
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "dependent",
                "namespace": namespace,
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
                ],
            },
        }
    )
    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    cluster.wait("--for=delete", "configmap/dependent", "-n", namespace, timeout=60)
    assert not cluster.exists("configmap", "dependent", namespace)


def test_pod_security_restricted_rejects_privileged_pod(cluster: Cluster) -> None:
    ns = cluster.create_namespace(
        "restricted", labels={"pod-security.kubernetes.io/enforce": "restricted"}
    )
    try:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "bad", "namespace": ns},
            "spec": {
                "containers": [
                    {"name": "c", "image": "busybox", "securityContext": {"privileged": True}}
                ]
            },
        }
        r = cluster.run("apply", "-f", "-", input=json.dumps(pod))
        assert r.code != 0
        assert 'violates PodSecurity "restricted:latest"' in r.stderr
        assert "privileged" in r.stderr
        assert not cluster.exists("pod", "bad", ns)
    finally:
        cluster.run("delete", "namespace", ns, "--wait=false")


def test_rbac_denies_serviceaccount_without_rights(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    who = f"--as=system:serviceaccount:{namespace}:nobody"
    assert cluster.run("auth", "can-i", "list", "pods", "-n", namespace, who).stdout.strip() == "no"
    r = cluster.run("get", "pods", "-n", namespace, who)
    assert r.code != 0
    assert "Forbidden" in r.stderr or "forbidden" in r.stderr
    # ...and the same ServiceAccount is allowed once a Role grants it: RBAC, not a blanket deny.
    cluster.kubectl("create", "role", "reader", "-n", namespace, "--verb=list", "--resource=pods")
    cluster.kubectl(
        "create",
        "rolebinding",
        "reader",
        "-n",
        namespace,
        "--role=reader",
        f"--serviceaccount={namespace}:nobody",
    )
    wait_for(
        "the RoleBinding to take effect",
        lambda: cluster.run("get", "pods", "-n", namespace, who).code == 0,
    )


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.testenv.example.com"},
    "spec": {
        "group": "testenv.example.com",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "min": {"type": "integer"},
                                    "max": {"type": "integer"},
                                },
                                "x-kubernetes-validations": [
                                    {
                                        "rule": "self.min <= self.max",
                                        "message": "min must be <= max",
                                    }
                                ],
                            }
                        },
                    }
                },
            }
        ],
    },
}


def test_crd_cel_rule_rejects_invalid_object(cluster: Cluster, namespace: str) -> None:
    cluster.apply(CRD)
    cluster.wait_established("widgets.testenv.example.com")

    def widget(name: str, lo: int, hi: int) -> dict[str, Any]:
        return {
            "apiVersion": "testenv.example.com/v1",
            "kind": "Widget",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"min": lo, "max": hi},
        }

    cluster.apply(widget("good", 1, 2))
    r = cluster.run("apply", "-f", "-", input=json.dumps(widget("bad", 3, 2)))
    assert r.code != 0
    assert "min must be <= max" in r.stderr
    assert not cluster.exists("widgets.testenv.example.com", "bad", namespace)


class _DenyHandler(ReviewHandler):
    """Denies every ConfigMap whose data has `forbidden: "true"`, with a fixed message."""

    calls: list[str] = []

    def deny(self, request: dict[str, Any]) -> str | None:
        type(self).calls.append(request["uid"])
        obj = request.get("object") or {}
        if (obj.get("data") or {}).get("forbidden") == "true":
            return "testenv-webhook says no to forbidden"
        return None


@pytest.fixture
def webhook_server(tmp_path: Path) -> Iterator[tuple[int, bytes]]:
    ca = pki.new_ca("testenv-webhook-ca", dt.timedelta(hours=1))
    leaf = pki.issue_cert(ca, "webhook", dt.timedelta(hours=1), sans=["127.0.0.1"])
    (tmp_path / "tls.crt").write_bytes(leaf.cert_pem)
    (tmp_path / "tls.key").write_bytes(leaf.key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DenyHandler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], ca.cert_pem
    finally:
        server.shutdown()
        server.server_close()


def test_validating_webhook_denial_reaches_client(
    cluster: Cluster, namespace: str, webhook_server: tuple[int, bytes]
) -> None:
    port, ca_pem = webhook_server
    cluster.kubectl("label", "namespace", namespace, "testenv-webhook=on")
    name = f"testenv-deny-{namespace}"
    cluster.apply(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "deny.testenv.example.com",
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{port}/validate",
                        "caBundle": base64.b64encode(ca_pem).decode(),
                    },
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": ["configmaps"],
                        }
                    ],
                    "namespaceSelector": {"matchLabels": {"testenv-webhook": "on"}},
                    "failurePolicy": "Fail",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": 5,
                }
            ],
        }
    )
    try:

        def create(name: str, forbidden: str) -> Any:
            return cluster.run(
                "create",
                "configmap",
                name,
                "-n",
                namespace,
                f"--from-literal=forbidden={forbidden}",
            )

        # The apiserver may take a moment to see the new configuration: wait until it calls us.
        probes = iter(range(10_000))

        def webhook_called() -> bool:
            before = len(_DenyHandler.calls)
            assert create(f"probe-{next(probes)}", "false").code == 0
            return len(_DenyHandler.calls) > before

        wait_for("the apiserver to call the webhook", webhook_called)
        r = create("bad", "true")
        assert r.code != 0
        assert "testenv-webhook says no to forbidden" in r.stderr
        assert 'admission webhook "deny.testenv.example.com" denied the request' in r.stderr
        assert not cluster.exists("configmap", "bad", namespace)
    finally:
        cluster.run("delete", "validatingwebhookconfiguration", name)
