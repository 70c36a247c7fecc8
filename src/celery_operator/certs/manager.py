"""The operator's own certificate authority for its admission webhook.

One CA, shared by every replica through a Secret (layout: see `rotation`), signs each
replica's own serving certificate (its key never leaves the replica's filesystem). The CA
certificates are injected as caBundle into the webhook configurations. Every round (`tick`):

1. `ensure_ca`: create the CA Secret if missing (create-only: of racing replicas one wins,
   the others read its CA), rotate the CA at 2/3 of its validity, drop the previous CA once
   expired; every write carries the resourceVersion it was decided on, so two replicas never
   both rotate (the loser re-reads and finds the rotation done).
2. `inject_ca_bundle`: current + previous CA into every webhook of the configurations.
3. `ensure_serving_cert`: re-issue the serving certificate when due, when the CA changed,
   when the SANs changed. Done after the injection, so the apiserver trusts a new CA before
   a serving certificate signed by it is served.

Private keys are never logged: only serial numbers and expiry dates.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import re
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from celery_operator.certs import rotation
from celery_operator.certs.dev import write_atomic
from celery_operator.certs.pki import KeyPair, issue_cert
from celery_operator.certs.rotation import CAAction, CAState
from celery_operator.k8s import client, secrets

log = logging.getLogger("celery_operator.certs")

DEFAULT_SECRET_NAME = "celery-operator-webhook-ca"
CA_COMMON_NAME = "celery-operator-webhook-ca"
CA_INJECTOR = "celery-operator-ca-injector"
WEBHOOK_API_VERSION = "admissionregistration.k8s.io/v1"
WEBHOOK_KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
SECRET_LABELS = {
    "app.kubernetes.io/name": "celery-operator",
    "app.kubernetes.io/component": "webhook-ca",
    "app.kubernetes.io/managed-by": "celery-operator",
}
MAX_ATTEMPTS = 5  # optimistic-concurrency retries before giving up until the next round


class CertError(RuntimeError):
    """A certificate round could not complete (retried at the next round)."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


_PEM_KEY = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S
)
_LONG_B64 = re.compile(r"[A-Za-z0-9+/]{64,}={0,2}")


def redact(text: str) -> str:
    """Removes PEM private keys and long base64 runs (a Secret's values) from a message."""
    return _LONG_B64.sub("[redacted]", _PEM_KEY.sub("[redacted private key]", text))


class CertManager:
    """One replica's view of the webhook PKI. `ensure_ca` is the point where the shared CA
    is read (and created or rotated); `inject_ca_bundle` and `ensure_serving_cert` use the
    CA it last saw (reading it first if there is none). `tick` does all three, in the order
    that keeps the apiserver trusting what is served. Methods are thread-safe."""

    def __init__(
        self,
        namespace: str,
        secret_name: str = DEFAULT_SECRET_NAME,
        *,
        dns_names: Sequence[str],
        cert_dir: Path,
        ip_sans: Sequence[str] = ("127.0.0.1",),
        ca_validity: dt.timedelta = dt.timedelta(days=365),
        cert_validity: dt.timedelta = dt.timedelta(days=30),
        webhook_configurations: Sequence[tuple[str, str]] = (),
        clock: Callable[[], dt.datetime] = _utcnow,
        renew_fraction: float = rotation.RENEW_FRACTION,
    ) -> None:
        for kind, name in webhook_configurations:
            if kind not in WEBHOOK_KINDS:
                raise ValueError(f"{kind}/{name}: kind must be one of {', '.join(WEBHOOK_KINDS)}")
        if not dns_names and not ip_sans:
            raise ValueError("the serving certificate needs at least one DNS name or IP")
        self.namespace = namespace
        self.secret_name = secret_name
        self.dns_names = list(dns_names)
        self.ip_sans = list(ip_sans)
        self.ca_validity = ca_validity
        self.cert_validity = cert_validity
        self.webhook_configurations = list(webhook_configurations)
        self.cert_dir = Path(cert_dir)
        self.clock = clock
        self.renew_fraction = renew_fraction
        self._lock = threading.RLock()
        self._ca: CAState | None = None
        self._written_serial: int | None = None  # the serving cert last written by us
        self._missing_configs: set[tuple[str, str]] = set()

    # ---- paths ----------------------------------------------------------------------
    @property
    def cert_path(self) -> Path:
        return self.cert_dir / "tls.crt"

    @property
    def key_path(self) -> Path:
        return self.cert_dir / "tls.key"

    @property
    def sans(self) -> list[str]:
        return [*self.dns_names, *self.ip_sans]

    @property
    def ca_state(self) -> CAState | None:
        """The CA state last read or written (None before the first `ensure_ca`)."""
        return self._ca

    # ---- the CA ---------------------------------------------------------------------
    def ensure_ca(self) -> list[KeyPair]:
        """Loads, creates or rotates the shared CA. Returns [current, previous?]; the
        previous CA's key is discarded at rotation, so its KeyPair has key_pem b""."""
        with self._lock:
            return self._sync_ca().pairs()

    def _sync_ca(self) -> CAState:
        for _ in range(MAX_ATTEMPTS):
            now = self.clock()
            live = secrets.get_secret(self.namespace, self.secret_name)
            data = None if live is None else (live.get("data") or {})
            action, state = rotation.next_ca_state(
                data,
                now,
                validity=self.ca_validity,
                common_name=CA_COMMON_NAME,
                fraction=self.renew_fraction,
            )
            if action is not CAAction.KEEP and not self._write_ca(live, state):
                log.info(
                    "CA Secret %s/%s changed under us (another replica): re-reading",
                    self.namespace,
                    self.secret_name,
                )
                continue
            if action is not CAAction.KEEP:
                log.info(
                    "CA Secret %s/%s: %s, now %r",
                    self.namespace,
                    self.secret_name,
                    action.value,
                    state,
                )
            elif self._ca is None or self._ca.current.cert_pem != state.current.cert_pem:
                log.info("CA loaded from %s/%s: %r", self.namespace, self.secret_name, state)
            self._ca = state
            return state
        raise CertError(
            f"CA Secret {self.namespace}/{self.secret_name} kept changing during "
            f"{MAX_ATTEMPTS} attempts"
        )

    def _write_ca(self, live: dict[str, Any] | None, state: CAState) -> bool:
        """Creates or updates the CA Secret; False when another replica wrote first."""
        data = state.to_secret_data()
        if live is None:
            created = secrets.create_secret(
                self.namespace,
                self.secret_name,
                data,
                type_=secrets.TLS_SECRET,
                labels=SECRET_LABELS,
            )
            return created is not None
        patched = secrets.merge_patch(
            "v1",
            "Secret",
            self.secret_name,
            self.namespace,
            {"data": data},
            resource_version=live["metadata"]["resourceVersion"],
        )
        return patched is not None

    # ---- the caBundle ---------------------------------------------------------------
    def ca_bundle(self) -> bytes:
        """The PEM bundle the webhook configurations should carry now."""
        with self._lock:
            state = self._ca or self._sync_ca()
            return state.bundle(self.clock())

    def inject_ca_bundle(self) -> bool:
        """Sets caBundle on every webhook of the configured webhook configurations where it
        differs. Returns whether anything changed. A configuration that does not exist
        (yet) is skipped with a warning."""
        with self._lock:
            state = self._ca or self._sync_ca()
            bundle = base64.b64encode(state.bundle(self.clock())).decode()
            changed = False
            for kind, name in self.webhook_configurations:
                changed |= self._inject(kind, name, bundle)
            return changed

    def _inject(self, kind: str, name: str, bundle: str) -> bool:
        # A merge patch replaces lists whole: read, set caBundle on every entry, write the
        # whole list back, conditional on the resourceVersion read (a concurrent edit of
        # the webhooks, e.g. by helm, makes it fail with 409 rather than be overwritten).
        for _ in range(MAX_ATTEMPTS):
            live = client.get_object(WEBHOOK_API_VERSION, kind, name, None)
            if live is None:
                if (kind, name) not in self._missing_configs:
                    log.warning("%s %s not found: no caBundle injected into it", kind, name)
                    self._missing_configs.add((kind, name))
                return False
            self._missing_configs.discard((kind, name))
            webhooks: list[dict[str, Any]] = live.get("webhooks") or []
            if all((w.get("clientConfig") or {}).get("caBundle") == bundle for w in webhooks):
                return False
            for w in webhooks:
                w.setdefault("clientConfig", {})["caBundle"] = bundle
            patched = secrets.merge_patch(
                WEBHOOK_API_VERSION,
                kind,
                name,
                None,
                {"webhooks": webhooks},
                resource_version=live["metadata"]["resourceVersion"],
                field_manager=CA_INJECTOR,
            )
            if patched is not None:
                log.info("caBundle injected into %s %s (%d webhooks)", kind, name, len(webhooks))
                return True
        raise CertError(f"{kind} {name} kept changing during {MAX_ATTEMPTS} attempts")

    # ---- the serving certificate ----------------------------------------------------
    def ensure_serving_cert(self) -> tuple[Path, Path]:
        """Issues the serving certificate when missing, due, or not signed by the current
        CA; writes cert_dir/tls.crt and cert_dir/tls.key (0600) atomically."""
        with self._lock:
            self._sync_serving_cert(self._ca or self._sync_ca())
            return self.cert_path, self.key_path

    def _load_serving(self) -> KeyPair | None:
        try:
            return KeyPair(self.cert_path.read_bytes(), self.key_path.read_bytes())
        except OSError:
            return None

    def _sync_serving_cert(self, state: CAState, *, may_switch_ca: bool = True) -> bool:
        """Returns whether the files were (re)written. With may_switch_ca False (the new
        caBundle could not be injected), a certificate signed by a CA the apiserver still
        trusts is kept rather than replaced by one signed by a new CA."""
        now = self.clock()
        pair = self._load_serving()
        reason = rotation.serving_cert_reason(
            pair, state.current, self.sans, now, self.renew_fraction
        )
        if reason is None:
            return False
        if not may_switch_ca and pair is not None and self._still_trusted(pair, state, now):
            log.warning("serving certificate kept until the new caBundle is injected")
            return False
        new = issue_cert(
            state.current,
            self.sans[0],
            self.cert_validity,
            sans=self.sans,
            now=now,
        )
        # Key first: a reader that sees the new certificate also sees its key (a crash
        # between the two renames leaves a mismatch, re-issued at the next round).
        write_atomic(self.key_path, new.key_pem, 0o600)
        write_atomic(self.cert_path, new.cert_pem, 0o644)
        cert = new.cert
        self._written_serial = cert.serial_number
        log.info(
            "serving certificate issued (%s): %s, signed by %s",
            reason,
            rotation.fingerprint(cert),
            rotation.fingerprint(state.current.cert),
        )
        return True

    @staticmethod
    def _still_trusted(pair: KeyPair, state: CAState, now: dt.datetime) -> bool:
        try:
            return rotation.key_matches(pair) and rotation.chains_to_any(
                pair.cert, [c for c in (state.previous,) if c is not None], now
            )
        except (ValueError, TypeError):
            return False

    # ---- the loop -------------------------------------------------------------------
    def tick(self) -> bool:
        """One round: CA, caBundle, serving certificate. True when the serving certificate
        files changed (the server then reloads its TLS context)."""
        with self._lock:
            state = self._sync_ca()
            try:
                self.inject_ca_bundle()
            except Exception:
                # Still make sure there is a usable serving certificate, then report.
                self._sync_serving_cert(state, may_switch_ca=False)
                raise
            return self._sync_serving_cert(state)

    def run(
        self,
        interval: float,
        on_change: Callable[[Path, Path], None],
        stop: threading.Event,
    ) -> None:
        """Calls `tick` every `interval` seconds until `stop` is set, and `on_change` after
        the serving certificate files changed. Errors are logged and retried next round;
        a failing `on_change` is called again next round."""
        reported = self._written_serial
        while not stop.is_set():
            try:
                self.tick()
            except Exception as e:
                log.error(
                    "certificate round failed, retrying in %.0fs: %s",
                    interval,
                    redact("".join(traceback.format_exception_only(e)).strip()),
                )
                log.debug("%s", redact("".join(traceback.format_exception(e))))
            written = self._written_serial
            if written is not None and written != reported:
                try:
                    on_change(self.cert_path, self.key_path)
                    reported = written
                except Exception as e:
                    log.error(
                        "reloading the serving certificate failed, retrying in %.0fs: %s",
                        interval,
                        redact(str(e)),
                    )
            stop.wait(interval)
