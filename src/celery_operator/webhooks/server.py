"""Serving the webhook app over TLS, with certificates that rotate under a running server.

uvicorn builds one ssl.SSLContext at start; loading a new chain into that same context
(SSLContext.load_cert_chain) makes every new handshake use it while open connections go
on undisturbed. Certificates come either from the operator's own CertManager (a CA kept in
a Secret, shared by replicas) or from files, e.g. a Secret mounted by cert-manager, which
are reloaded when they change.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from celery_operator.webhooks.app import create_app
from celery_operator.webhooks.lookup import Lookup

log = logging.getLogger("celery_operator.webhook")


@dataclass
class TLSState:
    """The live TLS context and whether a certificate has been loaded into it."""

    context: ssl.SSLContext | None = None
    loaded: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    reloads: int = 0

    def load(self, cert: Path, key: Path) -> None:
        with self.lock:
            if self.context is None:
                raise RuntimeError("the server has no TLS context yet")
            self.context.load_cert_chain(str(cert), str(key))
            self.reloads += 1
        self.loaded.set()
        log.info("serving certificate loaded from %s", cert)


def watch_files(
    cert: Path,
    key: Path,
    on_change: Callable[[Path, Path], None],
    stop: threading.Event,
    interval: float = 10.0,
) -> None:
    """Calls on_change when the files' modification times change (mounted Secrets rotate)."""

    def stamp() -> tuple[float, float]:
        try:
            return (cert.stat().st_mtime, key.stat().st_mtime)
        except OSError:
            return (0.0, 0.0)

    last = stamp()
    while not stop.wait(interval):
        now = stamp()
        if now != last and all(now):
            try:
                on_change(cert, key)
                last = now
            except (OSError, ssl.SSLError) as e:  # half-written files: try again next round
                log.warning("could not load rotated certificate files: %s", e)


def serve(
    host: str,
    port: int,
    cert: Path,
    key: Path,
    *,
    rotate: Callable[[Callable[[Path, Path], None], threading.Event], None] | None = None,
    lookup: Lookup | None = None,
) -> None:
    """Serves until SIGTERM/SIGINT. `rotate(on_change, stop)` runs in a thread and calls
    on_change whenever new certificate files are ready (default: watch the files)."""
    tls = TLSState()
    app = create_app(lookup, ready=tls.loaded.is_set)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    config.load()
    tls.context = config.ssl
    tls.loaded.set()
    stop = threading.Event()
    if rotate is None:

        def rotate(on_change: Callable[[Path, Path], None], stop: threading.Event) -> None:
            watch_files(cert, key, on_change, stop)

    thread = threading.Thread(
        target=rotate, args=(tls.load, stop), name="cert-rotation", daemon=True
    )
    thread.start()
    try:
        uvicorn.Server(config).run()
    finally:
        stop.set()
