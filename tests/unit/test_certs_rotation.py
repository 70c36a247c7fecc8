"""Rotation decisions with a fake clock, no cluster: when certificates renew, what the CA
Secret becomes, what the webhook configurations trust, and that what is issued really
verifies (cryptography's path validation, and a TLS handshake over loopback)."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import ipaddress
import logging
import socket
import ssl
import stat
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509 import verification as xv

from celery_operator.certs import pki, rotation
from celery_operator.certs.dev import issue_dev_certs, write_atomic
from celery_operator.certs.manager import CertManager, redact
from celery_operator.certs.rotation import CAAction, CAState
from celery_operator.k8s import client, secrets
from celery_operator.k8s.client import ApiError

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
YEAR = dt.timedelta(days=365)
SANS = ["celery-operator-webhook", "celery-operator-webhook.ns.svc", "127.0.0.1"]


def ca_data(state: CAState) -> dict[str, str]:
    """A Secret's `data` as the apiserver returns it (absent keys left out)."""
    return {k: v for k, v in state.to_secret_data().items() if v is not None}


def bundle_certs(state: CAState, now: dt.datetime) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(state.bundle(now))


def verify_server(leaf: pki.KeyPair, bundle: bytes, now: dt.datetime, host: str) -> None:
    """RFC 5280 path validation of a serving certificate against a PEM bundle."""
    store = xv.Store(x509.load_pem_x509_certificates(bundle))
    name: x509.DNSName | x509.IPAddress
    try:
        name = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        name = x509.DNSName(host)
    verifier = xv.PolicyBuilder().store(store).time(now).build_server_verifier(name)
    verifier.verify(leaf.cert, [])


# ---- timing ------------------------------------------------------------------------------
def test_needs_renewal_exactly_at_two_thirds() -> None:
    pair = pki.new_ca("ca", dt.timedelta(days=30), now=T0)
    # pki backdates notBefore by 5 minutes: 2/3 of (30 days + 5 min) after T0 - 5 min.
    expected = T0 - dt.timedelta(minutes=5) + (dt.timedelta(days=30, minutes=5)) * 2 / 3
    assert expected == T0 + dt.timedelta(days=20) - dt.timedelta(seconds=100)
    assert rotation.renewal_time(pair.cert) == expected
    assert rotation.needs_renewal(pair, expected)
    assert not rotation.needs_renewal(pair, expected - dt.timedelta(microseconds=1))
    assert not rotation.needs_renewal(pair, T0)
    assert rotation.needs_renewal(pair, T0 + dt.timedelta(days=31))  # expired: certainly


def test_needs_renewal_other_fraction() -> None:
    pair = pki.new_ca("ca", dt.timedelta(days=10) - dt.timedelta(minutes=5), now=T0)
    start = T0 - dt.timedelta(minutes=5)
    assert not rotation.needs_renewal(pair, start + dt.timedelta(days=5, seconds=-1), 0.5)
    assert rotation.needs_renewal(pair, start + dt.timedelta(days=5), 0.5)


# ---- the CA lifecycle --------------------------------------------------------------------
def test_ca_lifecycle_create_keep_rotate_overlap_drop() -> None:
    def step(
        data: Mapping[str, str] | None, now: dt.datetime
    ) -> tuple[CAAction, CAState, dict[str, str]]:
        action, state = rotation.next_ca_state(data, now, validity=YEAR, common_name="ca")
        return action, state, ca_data(state)

    action, first, data = step(None, T0)
    assert action is CAAction.CREATE
    assert first.previous is None
    assert set(data) == {"tls.crt", "tls.key"}
    assert bundle_certs(first, T0) == [first.current.cert]

    rotate_at = rotation.renewal_time(first.current.cert)
    assert rotate_at == T0 + YEAR * 2 / 3 - dt.timedelta(minutes=5) / 3
    for t in (T0, T0 + YEAR / 2, rotate_at - dt.timedelta(seconds=1)):
        assert rotation.decide_ca(data, t) is CAAction.KEEP
        assert step(data, t)[1].current.cert_pem == first.current.cert_pem

    action, second, data = step(data, rotate_at)
    assert action is CAAction.ROTATE
    assert second.current.cert_pem != first.current.cert_pem
    assert second.previous_cert_pem == first.current.cert_pem
    assert set(data) == {"tls.crt", "tls.key", "previous.crt"}
    # The previous CA's key is gone from the Secret.
    assert base64.b64encode(first.current.key_pem).decode() not in data.values()

    # Overlap: the bundle holds the new CA first, then the old one, until the old expires.
    old_expiry = first.current.not_after
    for t in (rotate_at, rotate_at + dt.timedelta(days=60), old_expiry - dt.timedelta(seconds=1)):
        assert rotation.decide_ca(data, t) is CAAction.KEEP
        assert bundle_certs(second, t) == [second.current.cert, first.current.cert]

    # Expired previous: out of the bundle at once, dropped from the Secret by the decision.
    assert bundle_certs(second, old_expiry) == [second.current.cert]
    assert rotation.decide_ca(data, old_expiry) is CAAction.DROP_PREVIOUS
    action, third, data = step(data, old_expiry)
    assert action is CAAction.DROP_PREVIOUS
    assert third.current.cert_pem == second.current.cert_pem
    assert third.previous is None
    assert third.to_secret_data()["previous.crt"] is None  # a merge patch deletes the key
    assert set(data) == {"tls.crt", "tls.key"}
    assert rotation.decide_ca(data, old_expiry + dt.timedelta(days=1)) is CAAction.KEEP

    # And the next rotation, 2/3 into the second CA's life.
    action, fourth, _ = step(data, rotation.renewal_time(second.current.cert))
    assert action is CAAction.ROTATE
    assert fourth.previous_cert_pem == second.current.cert_pem


def test_rotating_an_expired_ca_keeps_no_previous() -> None:
    _, state = rotation.next_ca_state(None, T0, validity=YEAR, common_name="ca")
    later = state.current.not_after + dt.timedelta(days=3)  # the operator was down a long time
    action, rotated = rotation.next_ca_state(ca_data(state), later, validity=YEAR, common_name="ca")
    assert action is CAAction.ROTATE
    assert rotated.previous is None
    assert bundle_certs(rotated, later) == [rotated.current.cert]


def test_unusable_ca_secret_is_replaced() -> None:
    ca = pki.new_ca("ca", YEAR, now=T0)
    other = pki.new_ca("other", YEAR, now=T0)
    leaf = pki.issue_cert(ca, "leaf", YEAR, now=T0)

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    for data in (
        {},
        {"tls.crt": b64(ca.cert_pem)},
        {"tls.crt": "not base64!", "tls.key": b64(ca.key_pem)},
        {"tls.crt": b64(b"garbage"), "tls.key": b64(ca.key_pem)},
        {"tls.crt": b64(ca.cert_pem), "tls.key": b64(other.key_pem)},  # mismatched key
        {"tls.crt": b64(leaf.cert_pem), "tls.key": b64(leaf.key_pem)},  # not a CA
    ):
        assert rotation.decide_ca(data, T0) is CAAction.REPLACE, data
        action, state = rotation.next_ca_state(data, T0, validity=YEAR, common_name="ca")
        assert action is CAAction.REPLACE
        assert rotation.key_matches(state.current)
        assert state.previous is None
    # An unreadable previous certificate is dropped, the current CA kept.
    data = {"tls.crt": b64(ca.cert_pem), "tls.key": b64(ca.key_pem), "previous.crt": b64(b"x")}
    assert rotation.decide_ca(data, T0) is CAAction.DROP_PREVIOUS
    assert rotation.next_ca_state(data, T0, validity=YEAR, common_name="ca")[1].current == ca


def test_ca_state_round_trips_and_never_shows_its_key() -> None:
    _, first = rotation.next_ca_state(None, T0, validity=YEAR, common_name="ca")
    _, second = rotation.next_ca_state(
        ca_data(first), rotation.renewal_time(first.current.cert), validity=YEAR, common_name="ca"
    )
    parsed = CAState.from_secret_data(ca_data(second))
    assert parsed == second
    assert [p.cert_pem for p in parsed.pairs()] == [
        second.current.cert_pem,
        first.current.cert_pem,
    ]
    assert parsed.pairs()[1].key_pem == b""
    text = repr(parsed)
    assert "serial=" in text
    assert "PRIVATE KEY" not in text
    assert base64.b64encode(second.current.key_pem).decode()[:40] not in text


# ---- the serving certificate -------------------------------------------------------------
def test_serving_cert_reasons() -> None:
    ca = pki.new_ca("ca", YEAR, now=T0)
    assert rotation.serving_cert_reason(None, ca, SANS, T0) == "no serving certificate"
    leaf = pki.issue_cert(ca, SANS[0], dt.timedelta(days=30), sans=SANS, now=T0)
    assert rotation.serving_cert_reason(leaf, ca, SANS, T0) is None
    # SANs compared as sets, IPs in canonical form.
    assert rotation.serving_cert_reason(leaf, ca, [*reversed(SANS)], T0) is None
    assert rotation.serving_cert_reason(leaf, ca, [*SANS, "extra.example"], T0) is not None
    # Renewal at 2/3 of its own validity.
    due = rotation.renewal_time(leaf.cert)
    assert rotation.serving_cert_reason(leaf, ca, SANS, due - dt.timedelta(seconds=1)) is None
    assert rotation.serving_cert_reason(leaf, ca, SANS, due) == "67% of its validity elapsed"
    assert rotation.serving_cert_reason(leaf, ca, SANS, leaf.not_after) == "it expired"
    # A key that is not the certificate's, garbage.
    other = pki.issue_cert(ca, SANS[0], dt.timedelta(days=30), sans=SANS, now=T0)
    mixed = pki.KeyPair(leaf.cert_pem, other.key_pem)
    assert "does not match" in (rotation.serving_cert_reason(mixed, ca, SANS, T0) or "")
    garbage = pki.KeyPair(b"junk", b"junk")
    assert "unreadable" in (rotation.serving_cert_reason(garbage, ca, SANS, T0) or "")


def test_serving_cert_reissued_when_ca_changes_and_verifies_against_bundle() -> None:
    _, first = rotation.next_ca_state(None, T0, validity=YEAR, common_name="ca")
    old_leaf = pki.issue_cert(first.current, SANS[0], dt.timedelta(days=30), sans=SANS, now=T0)
    verify_server(old_leaf, first.bundle(T0), T0, "celery-operator-webhook.ns.svc")
    verify_server(old_leaf, first.bundle(T0), T0, "127.0.0.1")

    t = rotation.renewal_time(first.current.cert)
    # A serving certificate renewed shortly before the rotation is not due on its own...
    old_leaf = pki.issue_cert(
        first.current, SANS[0], dt.timedelta(days=30), sans=SANS, now=t - dt.timedelta(days=1)
    )
    _, second = rotation.next_ca_state(ca_data(first), t, validity=YEAR, common_name="ca")
    assert not rotation.needs_renewal(old_leaf, t)
    # ...but it is re-issued: it is not signed by the current CA any more.
    reason = rotation.serving_cert_reason(old_leaf, second.current, SANS, t)
    assert reason == "it is not signed by the current CA"
    new_leaf = pki.issue_cert(second.current, SANS[0], dt.timedelta(days=30), sans=SANS, now=t)
    assert rotation.serving_cert_reason(new_leaf, second.current, SANS, t) is None
    assert rotation.signed_by(new_leaf.cert, second.current.cert)
    assert not rotation.signed_by(new_leaf.cert, first.current.cert)

    # During the overlap, the apiserver (trusting the bundle) accepts either.
    bundle = second.bundle(t)
    verify_server(old_leaf, bundle, t, "celery-operator-webhook")
    verify_server(new_leaf, bundle, t, "celery-operator-webhook")
    assert rotation.chains_to_any(old_leaf.cert, second.trusted(t), t)
    # Not with the new CA alone, nor a certificate for another name.
    with pytest.raises(xv.VerificationError):
        verify_server(old_leaf, second.current.cert_pem, t, "celery-operator-webhook")
    with pytest.raises(xv.VerificationError):
        verify_server(new_leaf, bundle, t, "elsewhere.example")


# ---- files and dev certificates ----------------------------------------------------------
def test_write_atomic_modes_and_replacement(tmp_path: Path) -> None:
    key = tmp_path / "sub" / "tls.key"
    write_atomic(key, b"one", 0o600)
    assert key.read_bytes() == b"one"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    write_atomic(key, b"two", 0o600)
    assert key.read_bytes() == b"two"
    assert [p.name for p in key.parent.iterdir()] == ["tls.key"]  # no temp file left


def _handshake(ca: Path, cert: Path, key: Path, host: str) -> str:
    """A TLS handshake over loopback; returns what the server read."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(ca))
    received: list[bytes] = []
    errors: list[BaseException] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    received.append(tls.recv(100))
                    tls.sendall(b"pong")
            except BaseException as e:  # surfaced in the test thread
                errors.append(e)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                client_ctx.wrap_socket(raw, server_hostname=host) as tls,
            ):
                tls.sendall(b"ping")
                assert tls.recv(100) == b"pong"
        finally:
            thread.join(5)
    assert not errors, errors
    return received[0].decode()


def test_dev_certs_handshake_over_loopback(tmp_path: Path) -> None:
    ca, cert, key = issue_dev_certs(tmp_path / "dev", ["localhost", "webhook.local"], ["127.0.0.1"])
    assert (ca.name, cert.name, key.name) == ("ca.crt", "tls.crt", "tls.key")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert _handshake(ca, cert, key, "localhost") == "ping"
    assert _handshake(ca, cert, key, "127.0.0.1") == "ping"
    # A client trusting another CA refuses.
    other_ca, _, _ = issue_dev_certs(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(other_ca, cert, key, "localhost")


# ---- CertManager against an in-memory API ------------------------------------------------
class FakeApi:
    """Just enough of k8s.secrets / client for CertManager: resourceVersions, 409s."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self.rv = 0
        self.fail_next: list[ApiError] = []  # errors for the next reads, whatever they read
        self.fail_configs: list[ApiError] = []  # errors for the next webhook config reads
        self.writes = 0

    def _bump(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        return copy.deepcopy(obj)

    def _maybe_fail(self) -> None:
        if self.fail_next:
            raise self.fail_next.pop(0)

    def get_object(
        self, api_version: str, kind: str, name: str, namespace: str | None
    ) -> dict[str, Any] | None:
        self._maybe_fail()
        if kind != "Secret" and self.fail_configs:
            raise self.fail_configs.pop(0)
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj else None

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get_object("v1", "Secret", name, namespace)

    def create_secret(
        self, namespace: str, name: str, data: Mapping[str, str | None], **_: Any
    ) -> dict[str, Any] | None:
        if ("Secret", namespace, name) in self.objects:
            return None
        self.writes += 1
        obj = {"metadata": {"name": name}, "data": {k: v for k, v in data.items() if v}}
        self.objects["Secret", namespace, name] = obj
        return self._bump(obj)

    def merge_patch(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None,
        patch: Mapping[str, Any],
        *,
        resource_version: str,
        **_: Any,
    ) -> dict[str, Any] | None:
        obj = self.objects.get((kind, namespace, name))
        if obj is None or obj["metadata"]["resourceVersion"] != resource_version:
            return None
        self.writes += 1
        for k, v in patch.items():
            if isinstance(v, dict):
                target = obj.setdefault(k, {})
                for kk, vv in v.items():
                    if vv is None:
                        target.pop(kk, None)
                    else:
                        target[kk] = vv
            else:
                obj[k] = copy.deepcopy(v)
        return self._bump(obj)


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    for name in ("get_secret", "create_secret", "merge_patch"):
        monkeypatch.setattr(secrets, name, getattr(fake, name))
    monkeypatch.setattr(client, "get_object", fake.get_object)
    fake.objects["ValidatingWebhookConfiguration", None, "vwc"] = {
        "metadata": {"name": "vwc", "resourceVersion": "0"},
        "webhooks": [{"name": "a.example.com", "clientConfig": {"url": "https://x"}}],
    }
    return fake


def make_manager(tmp_path: Path, clock: Clock) -> CertManager:
    return CertManager(
        "ns",
        dns_names=SANS[:2],
        cert_dir=tmp_path / "certs",
        webhook_configurations=[("ValidatingWebhookConfiguration", "vwc")],
        clock=clock,
    )


def test_manager_rounds_with_fake_api(
    api: FakeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="celery_operator")
    clock = Clock(T0)
    m = make_manager(tmp_path, clock)
    assert m.tick()
    assert stat.S_IMODE(m.key_path.stat().st_mode) == 0o600
    writes = api.writes
    assert not m.tick()  # nothing due: no writes at all
    assert api.writes == writes
    [first] = m.ensure_ca()
    vwc = api.objects["ValidatingWebhookConfiguration", None, "vwc"]
    assert base64.b64decode(vwc["webhooks"][0]["clientConfig"]["caBundle"]) == first.cert_pem

    clock.now = rotation.renewal_time(first.cert)
    assert m.tick()
    current, previous = m.ensure_ca()
    assert previous.cert_pem == first.cert_pem
    bundle = base64.b64decode(vwc["webhooks"][0]["clientConfig"]["caBundle"])
    assert bundle == current.cert_pem + first.cert_pem
    leaf = pki.KeyPair(m.cert_path.read_bytes(), m.key_path.read_bytes())
    verify_server(leaf, bundle, clock.now, SANS[0])
    assert rotation.signed_by(leaf.cert, current.cert)

    # No private key, PEM or base64, ever reaches the log.
    assert "PRIVATE KEY" not in caplog.text
    for key in (first.key_pem, current.key_pem, leaf.key_pem):
        assert key.decode().splitlines()[1] not in caplog.text
        assert base64.b64encode(key).decode()[:40] not in caplog.text


def test_manager_keeps_serving_cert_while_bundle_cannot_be_injected(
    api: FakeApi, tmp_path: Path
) -> None:
    clock = Clock(T0)
    m = make_manager(tmp_path, clock)
    m.tick()
    [first] = m.ensure_ca()
    rotate_at = rotation.renewal_time(first.cert)
    clock.now = rotate_at - dt.timedelta(days=1)
    assert m.tick()  # a serving certificate renewed the day before the CA rotates
    before = m.cert_path.read_bytes()
    clock.now = rotate_at
    # The CA rotates, but the webhook configuration cannot be read: keep serving the
    # certificate the apiserver trusts, rather than one signed by a CA it does not know.
    api.fail_configs = [ApiError(0, "", ""), ApiError(403, "Forbidden", "no")]
    with pytest.raises(ApiError):
        m.tick()
    assert m.cert_path.read_bytes() == before
    assert len(m.ensure_ca()) == 2  # the rotation itself happened
    with pytest.raises(ApiError):
        m.tick()
    assert m.cert_path.read_bytes() == before
    assert m.tick()  # injection works again: now the serving certificate follows
    assert m.cert_path.read_bytes() != before


def test_run_survives_errors_and_reports_changes(api: FakeApi, tmp_path: Path) -> None:
    clock = Clock(T0)
    m = make_manager(tmp_path, clock)
    stop = threading.Event()
    changes: list[tuple[Path, Path]] = []
    reloaded = threading.Event()
    api.fail_next = [ApiError(503, "Unavailable", "etcd is sad")]
    calls = 0

    def on_change(cert: Path, key: Path) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ssl.SSLError("half-written files")  # retried next round
        changes.append((cert, key))
        reloaded.set()
        stop.set()

    thread = threading.Thread(target=m.run, args=(0.01, on_change, stop), daemon=True)
    thread.start()
    assert reloaded.wait(10)
    thread.join(10)
    assert not thread.is_alive()
    assert changes == [(m.cert_path, m.key_path)]
    assert calls == 2


def test_redact_removes_keys() -> None:
    key = pki.new_ca("ca", YEAR).key_pem
    text = f"error: {key.decode()} and {base64.b64encode(key).decode()} in 409 Conflict"
    out = redact(text)
    assert "PRIVATE KEY" not in out
    assert base64.b64encode(key).decode()[:64] not in out
    assert out == "error: [redacted private key]\n and [redacted] in 409 Conflict"
