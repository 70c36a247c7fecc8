"""Pure decisions about certificate rotation: when to renew, what the CA Secret becomes,
which CAs the webhook configurations must trust. No I/O; time comes in as `now`.

The CA Secret (kubernetes.io/tls, shared by every replica) holds:

    tls.crt       the current CA certificate (PEM): it signs the serving certificates
    tls.key       the current CA private key (PEM, PKCS#8)
    previous.crt  the previous CA certificate (PEM), only during a rotation's overlap

The previous CA's key is discarded at rotation: nothing signs with it any more, it is only
trusted, until it expires. The caBundle injected into the webhook configurations is the
current CA followed by the previous one while it is still valid, so that during a rotation
the apiserver accepts serving certificates signed by either.

A CA rotates once 2/3 of its validity has elapsed; its previous CA then has 1/3 of its
validity left (about four months with the default one-year CA), which is when serving
certificates signed by it go on being trusted while every replica re-issues its own.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from celery_operator.certs.pki import KeyPair, new_ca

RENEW_FRACTION = 2 / 3

CA_CERT_KEY = "tls.crt"
CA_KEY_KEY = "tls.key"
PREVIOUS_CERT_KEY = "previous.crt"
SECRET_KEYS = (CA_CERT_KEY, CA_KEY_KEY, PREVIOUS_CERT_KEY)


class InvalidCADataError(ValueError):
    """The CA Secret's data cannot be used (missing keys, bad PEM, key and cert mismatch)."""


# ---- timing ---------------------------------------------------------------------------
def renewal_time(cert: x509.Certificate, fraction: float = RENEW_FRACTION) -> dt.datetime:
    """The moment `fraction` of the certificate's validity has elapsed."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * fraction


def needs_renewal(pair: KeyPair, now: dt.datetime, fraction: float = RENEW_FRACTION) -> bool:
    """True once `fraction` (2/3 by default) of the certificate's validity has elapsed."""
    return now >= renewal_time(pair.cert, fraction)


def is_expired(cert: x509.Certificate, now: dt.datetime) -> bool:
    return now >= cert.not_valid_after_utc


# ---- small X.509 predicates -------------------------------------------------------------
def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether `ca` issued `cert`: issuer name matches and the signature verifies."""
    if cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def key_matches(pair: KeyPair) -> bool:
    """Whether the private key belongs to the certificate."""
    return bool(pair.key.public_key() == pair.cert.public_key())


def cert_sans(cert: x509.Certificate) -> set[str]:
    """The certificate's DNS and IP SANs, as strings."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    dns = ext.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)]
    return {*dns, *ips}


def normalize_sans(names: Iterable[str]) -> set[str]:
    """SANs as `cert_sans` reports them (IP addresses in their canonical form)."""
    out: set[str] = set()
    for n in names:
        try:
            out.add(str(ipaddress.ip_address(n)))
        except ValueError:
            out.add(n)
    return out


def service_dns_names(
    service: str, namespace: str, cluster_domain: str = "cluster.local"
) -> list[str]:
    """The names a Service answers to: svc, svc.ns, svc.ns.svc, svc.ns.svc.<domain>."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.{cluster_domain}",
    ]


def fingerprint(cert: x509.Certificate) -> str:
    """A short, loggable identity of a certificate (never its key)."""
    return f"serial={cert.serial_number:x} notAfter={cert.not_valid_after_utc.isoformat()}"


# ---- the CA Secret -------------------------------------------------------------------------
@dataclass(frozen=True, repr=False)
class CAState:
    """The current CA (certificate and key) and the previous CA's certificate, if any."""

    current: KeyPair
    previous_cert_pem: bytes | None = None

    @property
    def previous(self) -> x509.Certificate | None:
        if self.previous_cert_pem is None:
            return None
        return x509.load_pem_x509_certificate(self.previous_cert_pem)

    def trusted(self, now: dt.datetime) -> list[x509.Certificate]:
        """The CAs a client should trust at `now`: current, then previous while valid."""
        out = [self.current.cert]
        prev = self.previous
        if prev is not None and not is_expired(prev, now):
            out.append(prev)
        return out

    def bundle(self, now: dt.datetime) -> bytes:
        """The caBundle: PEM of the current CA, then of the previous one while valid."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.trusted(now))

    def pairs(self) -> list[KeyPair]:
        """[current, previous?]; the previous CA has no key any more (key_pem is b"")."""
        out = [self.current]
        if self.previous_cert_pem is not None:
            out.append(KeyPair(self.previous_cert_pem, b""))
        return out

    def to_secret_data(self) -> dict[str, str | None]:
        """The Secret's `data`, base64-encoded; None for an absent key (a merge patch
        deletes it)."""

        def b64(v: bytes | None) -> str | None:
            return None if v is None else base64.b64encode(v).decode()

        return {
            CA_CERT_KEY: b64(self.current.cert_pem),
            CA_KEY_KEY: b64(self.current.key_pem),
            PREVIOUS_CERT_KEY: b64(self.previous_cert_pem),
        }

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str] | None) -> CAState:
        """Parses a CA Secret's `data`; an unusable previous certificate is ignored (and
        dropped at the next write), an unusable current CA raises InvalidCADataError."""
        data = data or {}
        try:
            current = KeyPair(_decode(data, CA_CERT_KEY), _decode(data, CA_KEY_KEY))
            cert = current.cert
            if not key_matches(current):
                raise InvalidCADataError("tls.key does not belong to tls.crt")
        except (ValueError, TypeError) as e:  # InvalidCADataError is a ValueError too
            raise InvalidCADataError(f"the current CA is unusable: {e}") from None
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise InvalidCADataError("tls.crt is not a CA certificate")
        previous: bytes | None = None
        if data.get(PREVIOUS_CERT_KEY):
            try:
                previous = _decode(data, PREVIOUS_CERT_KEY)
                x509.load_pem_x509_certificate(previous)
            except ValueError:
                previous = None
        return cls(current, previous)

    def __repr__(self) -> str:  # never the key
        prev = self.previous
        return (
            f"CAState(current={fingerprint(self.current.cert)}, "
            f"previous={fingerprint(prev) if prev is not None else None})"
        )


def _decode(data: Mapping[str, str], key: str) -> bytes:
    raw = data.get(key)
    if not raw:
        raise InvalidCADataError(f"missing {key}")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidCADataError(f"{key} is not base64") from None


class CAAction(enum.Enum):
    KEEP = "keep"
    CREATE = "create"  # no Secret yet
    REPLACE = "replace"  # a Secret whose current CA is unusable: start over, nothing to keep
    ROTATE = "rotate"  # the current CA is due: a new one becomes current, it becomes previous
    DROP_PREVIOUS = "drop-previous"  # the previous CA expired (or is unreadable)


def decide_ca(
    data: Mapping[str, str] | None,
    now: dt.datetime,
    fraction: float = RENEW_FRACTION,
) -> CAAction:
    """What to do with a CA Secret's `data` at `now`. None means there is no Secret at all
    (an existing Secret without data is `{}`: unusable, replaced)."""
    if data is None:
        return CAAction.CREATE
    try:
        state = CAState.from_secret_data(data)
    except InvalidCADataError:
        return CAAction.REPLACE
    if now >= renewal_time(state.current.cert, fraction):
        return CAAction.ROTATE
    prev = state.previous
    if (data or {}).get(PREVIOUS_CERT_KEY) and (prev is None or is_expired(prev, now)):
        return CAAction.DROP_PREVIOUS
    return CAAction.KEEP


def next_ca_state(
    data: Mapping[str, str] | None,
    now: dt.datetime,
    *,
    validity: dt.timedelta,
    common_name: str,
    fraction: float = RENEW_FRACTION,
) -> tuple[CAAction, CAState]:
    """The decision and the CA state to store (equal to the parsed one for KEEP).

    Generating a CA is computation, not I/O: the caller writes the result.
    """
    action = decide_ca(data, now, fraction)
    if action in (CAAction.CREATE, CAAction.REPLACE):
        return action, CAState(new_ca(common_name, validity, now=now))
    state = CAState.from_secret_data(data)
    if action is CAAction.ROTATE:
        old = state.current.cert
        # An already expired CA is not worth trusting (long outage): no overlap then.
        previous = None if is_expired(old, now) else state.current.cert_pem
        return action, CAState(new_ca(common_name, validity, now=now), previous)
    if action is CAAction.DROP_PREVIOUS:
        return action, CAState(state.current, None)
    return action, state


# ---- the serving certificate ------------------------------------------------------------
def serving_cert_reason(
    pair: KeyPair | None,
    ca: KeyPair,
    sans: Iterable[str],
    now: dt.datetime,
    fraction: float = RENEW_FRACTION,
) -> str | None:
    """Why the serving certificate must be (re-)issued, or None when it is fine.

    Re-issued when missing or unreadable, when its key does not match, when it was not
    signed by the current CA (the CA rotated), when its SANs changed, and once `fraction`
    of its validity elapsed.
    """
    if pair is None:
        return "no serving certificate"
    try:
        cert = pair.cert
        if not key_matches(pair):
            return "the private key does not match the certificate"
    except (ValueError, TypeError):
        return "the serving certificate is unreadable"
    if not signed_by(cert, ca.cert):
        return "it is not signed by the current CA"
    if cert_sans(cert) != normalize_sans(sans):
        return "its SANs differ from the configured ones"
    if is_expired(cert, now):
        return "it expired"
    if needs_renewal(pair, now, fraction):
        return f"{fraction:.0%} of its validity elapsed"
    return None


def chains_to_any(
    cert: x509.Certificate, cas: Iterable[x509.Certificate], now: dt.datetime
) -> bool:
    """Whether `cert` is valid at `now` and signed by one of `cas` that is valid at `now`."""
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        return False
    return any(
        signed_by(cert, ca) and ca.not_valid_before_utc <= now < ca.not_valid_after_utc
        for ca in cas
    )
