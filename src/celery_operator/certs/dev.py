"""Certificates as files: atomic writes, and a CA plus serving certificate for local
development (`celery-operator certs issue`). No Kubernetes API here."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from celery_operator.certs.pki import issue_cert, new_ca

DEV_CA_NAME = "celery-operator-dev-ca"
CA_FILE, CERT_FILE, KEY_FILE = "ca.crt", "tls.crt", "tls.key"


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Writes `data` to `path` so readers see the old file or the new one, never a part.

    The temporary file is created 0600 (mkstemp) in the same directory, chmod'ed to `mode`,
    fsync'ed, then renamed over `path` (os.replace is atomic within a filesystem).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # persist the rename too (not all filesystems allow it)
        dirfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)


def issue_dev_certs(
    out_dir: Path,
    dns_names: Sequence[str] = ("localhost",),
    ip_sans: Sequence[str] = ("127.0.0.1",),
    *,
    validity: dt.timedelta = dt.timedelta(days=30),
    now: dt.datetime | None = None,
) -> tuple[Path, Path, Path]:
    """Writes a fresh CA certificate and a serving certificate and key signed by it.

    Returns (ca.crt, tls.crt, tls.key) in `out_dir`; the key file is 0600. The CA's own key
    is not kept: to get new certificates, issue again (and trust the new ca.crt).
    """
    sans = [*dns_names, *ip_sans]
    if not sans:
        raise ValueError("a serving certificate needs at least one DNS name or IP address")
    ca = new_ca(DEV_CA_NAME, validity, now=now)
    leaf = issue_cert(ca, sans[0], validity, sans=sans, now=now)
    ca_path, cert_path, key_path = out_dir / CA_FILE, out_dir / CERT_FILE, out_dir / KEY_FILE
    write_atomic(key_path, leaf.key_pem, 0o600)
    write_atomic(cert_path, leaf.cert_pem)
    write_atomic(ca_path, ca.cert_pem)
    return ca_path, cert_path, key_path
