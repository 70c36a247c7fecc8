"""CertManager against the real control plane: the CA Secret under racing replicas, caBundle
injection into a real webhook configuration, rotation with a fake clock, and the apiserver
itself trusting serving certificates of either CA during a rotation."""

from __future__ import annotations

import base64
import datetime as dt
import json
import ssl
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509 import verification as xv

from celery_operator.certs import rotation
from celery_operator.certs.manager import CA_INJECTOR, CertManager
from celery_operator.certs.pki import KeyPair
from celery_operator.k8s import client, secrets
from tests.support.admission import ReviewHandler
from tests.support.cluster import Cluster, wait_for

pytestmark = pytest.mark.cluster

SECRET = "celery-operator-webhook-ca"
VWC = "ValidatingWebhookConfiguration"
T0 = dt.datetime.now(dt.UTC).replace(microsecond=0)


@pytest.fixture(scope="module", autouse=True)
def k8s_client(cluster: Cluster) -> None:
    client.configure(str(cluster.kubeconfig))


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def manager(
    namespace: str,
    cert_dir: Path,
    clock: Callable[[], dt.datetime],
    configs: list[tuple[str, str]] | None = None,
    **kw: Any,
) -> CertManager:
    return CertManager(
        namespace,
        dns_names=rotation.service_dns_names("celery-operator-webhook", namespace),
        cert_dir=cert_dir,
        webhook_configurations=configs or [],
        clock=clock,
        **kw,
    )


def ca_secret(cluster: Cluster, namespace: str) -> dict[str, Any]:
    return cluster.get("secret", SECRET, namespace)


def decoded(secret: dict[str, Any]) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in secret["data"].items()}


def bundles(cluster: Cluster, name: str) -> list[bytes]:
    """The caBundle of every webhook of a ValidatingWebhookConfiguration, decoded."""
    obj = cluster.get("validatingwebhookconfiguration", name)
    return [base64.b64decode(w["clientConfig"].get("caBundle", "")) for w in obj["webhooks"]]


def serving(m: CertManager) -> KeyPair:
    return KeyPair(m.cert_path.read_bytes(), m.key_path.read_bytes())


def verify(leaf: KeyPair, bundle: bytes, now: dt.datetime, host: str) -> None:
    """RFC 5280 path validation of the serving certificate against a caBundle."""
    store = xv.Store(x509.load_pem_x509_certificates(bundle))
    verifier = xv.PolicyBuilder().store(store).time(now).build_server_verifier(x509.DNSName(host))
    verifier.verify(leaf.cert, [])


def gate_first_read(monkeypatch: pytest.MonkeyPatch, parties: int) -> None:
    """Makes each thread's first read of the CA Secret wait until all `parties` have read
    it: every replica decides on the same state, so their writes really collide."""
    barrier = threading.Barrier(parties, timeout=30)
    local = threading.local()
    real = secrets.get_secret

    def get_secret(namespace: str, name: str) -> dict[str, Any] | None:
        obj = real(namespace, name)
        if not getattr(local, "done", False):
            local.done = True
            barrier.wait()
        return obj

    monkeypatch.setattr(secrets, "get_secret", get_secret)


def record(monkeypatch: pytest.MonkeyPatch, fn_name: str) -> list[bool]:
    """Records, for each call of secrets.<fn_name>, whether the write won."""
    results: list[bool] = []
    real = getattr(secrets, fn_name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        results.append(out is not None)
        return out

    monkeypatch.setattr(secrets, fn_name, wrapper)
    return results


@pytest.fixture
def webhook_config(cluster: Cluster, namespace: str) -> Iterator[str]:
    """A ValidatingWebhookConfiguration that matches nothing real (a made-up resource of a
    made-up group), points at a URL nobody serves and ignores failures."""
    name = f"certs-test-{namespace}"

    def webhook(n: str) -> dict[str, Any]:
        return {
            "name": f"{n}.certs-test.celeryproject.org",
            "clientConfig": {"url": f"https://127.0.0.1:1/{n}"},
            "rules": [
                {
                    "apiGroups": ["certs-test.celeryproject.org"],
                    "apiVersions": ["v1"],
                    "operations": ["CREATE"],
                    "resources": ["widgets"],
                }
            ],
            "failurePolicy": "Ignore",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 1,
        }

    cluster.apply(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": VWC,
            "metadata": {"name": name},
            "webhooks": [webhook("one"), webhook("two")],
        }
    )
    try:
        yield name
    finally:
        cluster.run("delete", "validatingwebhookconfiguration", name, "--ignore-not-found")


# ---- races ---------------------------------------------------------------------------------
def test_ca_created_once_when_replicas_race(
    cluster: Cluster, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate_first_read(monkeypatch, 2)
    creates = record(monkeypatch, "create_secret")
    clock = Clock(T0)
    replicas = [manager(namespace, tmp_path / f"r{i}", clock) for i in range(2)]
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda m: m.ensure_ca(), replicas)
    # Both saw no Secret and both tried to create it: one won, the other read its CA.
    assert sorted(creates) == [False, True]
    assert len(a) == len(b) == 1
    assert a[0].cert_pem == b[0].cert_pem
    assert a[0].key_pem == b[0].key_pem
    secret = ca_secret(cluster, namespace)
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["labels"]["app.kubernetes.io/component"] == "webhook-ca"
    assert decoded(secret) == {"tls.crt": a[0].cert_pem, "tls.key": a[0].key_pem}


def test_ca_rotated_once_when_replicas_race(
    cluster: Cluster, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [first] = manager(namespace, tmp_path / "init", Clock(T0)).ensure_ca()
    gate_first_read(monkeypatch, 2)
    patches = record(monkeypatch, "merge_patch")
    due = Clock(rotation.renewal_time(first.cert))
    replicas = [manager(namespace, tmp_path / f"r{i}", due) for i in range(2)]
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda m: m.ensure_ca(), replicas)
    # Both decided to rotate from the same resourceVersion: one write won, the loser
    # re-read, found the rotation done, and kept it (no second rotation).
    assert sorted(patches) == [False, True]
    assert [p.cert_pem for p in a] == [p.cert_pem for p in b]
    assert a[0].cert_pem != first.cert_pem
    assert a[1].cert_pem == first.cert_pem
    data = decoded(ca_secret(cluster, namespace))
    assert data == {
        "tls.crt": a[0].cert_pem,
        "tls.key": a[0].key_pem,
        "previous.crt": first.cert_pem,
    }


def test_writes_based_on_a_stale_read_are_refused(cluster: Cluster, namespace: str) -> None:
    data = {"a": base64.b64encode(b"1").decode()}
    created = secrets.create_secret(namespace, "s", data)
    assert created is not None
    assert secrets.create_secret(namespace, "s", data) is None  # create-only
    rv = created["metadata"]["resourceVersion"]
    patched = secrets.merge_patch(
        "v1", "Secret", "s", namespace, {"data": {"a": None, "b": "Mg=="}}, resource_version=rv
    )
    assert patched is not None
    assert patched["data"] == {"b": "Mg=="}
    stale = secrets.merge_patch(
        "v1", "Secret", "s", namespace, {"data": {"c": "Mw=="}}, resource_version=rv
    )
    assert stale is None
    assert cluster.get("secret", "s", namespace)["data"] == {"b": "Mg=="}
    assert (
        secrets.merge_patch("v1", "Secret", "gone", namespace, {"data": {}}, resource_version=rv)
        is None
    )


# ---- injection and rotation ----------------------------------------------------------------
def test_bundle_injection_and_rotation_lifecycle(
    cluster: Cluster, namespace: str, webhook_config: str, tmp_path: Path
) -> None:
    clock = Clock(T0)
    m = manager(namespace, tmp_path / "certs", clock, [(VWC, webhook_config)])

    assert m.tick()  # first round: CA created, bundle injected, serving cert written
    [ca1] = m.ensure_ca()
    assert bundles(cluster, webhook_config) == [ca1.cert_pem, ca1.cert_pem]
    leaf1 = serving(m)
    verify(leaf1, ca1.cert_pem, clock.now, f"celery-operator-webhook.{namespace}.svc")
    assert rotation.cert_sans(leaf1.cert) >= {"127.0.0.1", f"celery-operator-webhook.{namespace}"}
    # Injected under its own field manager.
    live = json.loads(
        cluster.kubectl(
            "get",
            "validatingwebhookconfiguration",
            webhook_config,
            "-o",
            "json",
            "--show-managed-fields",
        )
    )
    assert CA_INJECTOR in {f["manager"] for f in live["metadata"]["managedFields"]}
    rv = live["metadata"]["resourceVersion"]

    # Nothing due: no file written, no write to the configuration.
    assert not m.tick()
    assert not m.inject_ca_bundle()
    assert serving(m) == leaf1
    assert (
        cluster.get("validatingwebhookconfiguration", webhook_config)["metadata"]["resourceVersion"]
        == rv
    )

    # 2/3 into the CA's validity: rotation. Old and new CA both in the bundle, the serving
    # certificate re-issued under the new CA.
    clock.now = rotation.renewal_time(ca1.cert)
    assert m.tick()
    ca2, previous = m.ensure_ca()
    assert ca2.cert_pem != ca1.cert_pem
    assert previous.cert_pem == ca1.cert_pem
    data = decoded(ca_secret(cluster, namespace))
    assert data == {"tls.crt": ca2.cert_pem, "tls.key": ca2.key_pem, "previous.crt": ca1.cert_pem}
    bundle = ca2.cert_pem + ca1.cert_pem
    assert bundles(cluster, webhook_config) == [bundle, bundle]
    leaf2 = serving(m)
    assert rotation.signed_by(leaf2.cert, ca2.cert)
    verify(leaf2, ca2.cert_pem, clock.now, "celery-operator-webhook")
    verify(leaf2, bundle, clock.now, "celery-operator-webhook")

    # A second replica joining during the overlap gets a certificate from the new CA.
    other = manager(namespace, tmp_path / "other", clock, [(VWC, webhook_config)])
    assert other.tick()
    assert rotation.signed_by(serving(other).cert, ca2.cert)

    # Past the old CA's expiry: dropped from the Secret and from the bundle.
    clock.now = ca1.not_after
    m.tick()
    assert [p.cert_pem for p in m.ensure_ca()] == [ca2.cert_pem]
    assert decoded(ca_secret(cluster, namespace)) == {
        "tls.crt": ca2.cert_pem,
        "tls.key": ca2.key_pem,
    }
    assert bundles(cluster, webhook_config) == [ca2.cert_pem, ca2.cert_pem]
    verify(serving(m), ca2.cert_pem, clock.now, "celery-operator-webhook")


def test_missing_webhook_configuration_is_skipped(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    m = manager(namespace, tmp_path, Clock(T0), [(VWC, f"absent-{namespace}")])
    assert m.tick()  # the serving certificate is still issued
    assert not m.inject_ca_bundle()


def test_run_loop_reports_new_files(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    m = manager(namespace, tmp_path, Clock(T0))
    stop = threading.Event()
    seen: list[tuple[Path, Path]] = []

    def on_change(cert: Path, key: Path) -> None:
        seen.append((cert, key))
        stop.set()

    thread = threading.Thread(target=m.run, args=(30.0, on_change, stop), daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    assert seen == [(m.cert_path, m.key_path)]


# ---- the apiserver trusts serving certificates of either CA during the overlap -----------
class _Handler(ReviewHandler):
    """Admits everything except ConfigMaps named "bad" (HTTP/1.0: a TLS handshake per call)."""

    calls = 0

    def deny(self, request: dict[str, Any]) -> str | None:
        type(self).calls += 1
        return "certs-test says no" if request["name"] == "bad" else None


def test_apiserver_trusts_either_ca_during_rotation(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    # Real time matters here (the apiserver checks validity): the first CA is made 40
    # minutes in the past with a one-hour validity, so it is due for rotation now.
    now = dt.datetime.now(dt.UTC)
    clock = Clock(now - dt.timedelta(minutes=40))
    name = f"certs-trust-{namespace}"
    m = manager(namespace, tmp_path, clock, [(VWC, name)], ca_validity=dt.timedelta(hours=1))
    m.tick()
    old_leaf = serving(m)
    [ca1] = m.ensure_ca()

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(m.cert_path, m.key_path)  # the old CA's serving cert
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = server_ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    cluster.kubectl("label", "namespace", namespace, "certs-test=on")
    cluster.apply(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": VWC,
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "trust.certs-test.celeryproject.org",
                    "clientConfig": {"url": f"https://127.0.0.1:{port}/validate"},
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["configmaps"],
                        }
                    ],
                    "namespaceSelector": {"matchLabels": {"certs-test": "on"}},
                    "failurePolicy": "Fail",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": 5,
                }
            ],
        }
    )
    probes = iter(range(10_000))

    def denied_by_webhook() -> bool:
        # Only a webhook the apiserver could reach (and trusted) can deny "bad" with our
        # message; while untrusted, every create fails with a TLS error instead.
        before = _Handler.calls
        r = cluster.run("create", "configmap", "bad", "-n", namespace)
        assert r.code != 0
        if "certs-test says no" not in r.stderr:
            return False
        probe = cluster.run("create", "configmap", f"probe-{next(probes)}", "-n", namespace)
        return probe.code == 0 and _Handler.calls >= before + 2

    try:
        # Rotate now: the configuration's first and only bundle is new CA + old CA.
        clock.now = now
        assert m.tick()
        ca2, previous = m.ensure_ca()
        assert previous.cert_pem == ca1.cert_pem
        assert bundles(cluster, name) == [ca2.cert_pem + ca1.cert_pem]
        new_leaf = serving(m)
        assert rotation.signed_by(new_leaf.cert, ca2.cert)

        # Still serving the old CA's certificate: trusted through the bundle.
        wait_for("the apiserver to trust the old CA's certificate", denied_by_webhook)

        # The new CA's certificate, loaded into the live context (as the server does).
        server_ctx.load_cert_chain(m.cert_path, m.key_path)
        pem = ssl.get_server_certificate(("127.0.0.1", port), timeout=5)
        assert x509.load_pem_x509_certificate(pem.encode()) == new_leaf.cert
        assert x509.load_pem_x509_certificate(pem.encode()) != old_leaf.cert
        wait_for("the apiserver to trust the new CA's certificate", denied_by_webhook)
    finally:
        cluster.run("delete", "validatingwebhookconfiguration", name, "--ignore-not-found")
        server.shutdown()
        server.server_close()
