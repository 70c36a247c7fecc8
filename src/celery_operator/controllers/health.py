"""The operator's /healthz, served from the start, by the leader and by standbys alike.

kopf's liveness endpoint exists only once kopf runs, and a standby waiting for the Lease
runs no kopf. The answer is 200 while the process works: a standby while it waits (its
body says who leads), the leader while its event loop beats; 503 when the loop stopped
beating (wedged), which the kubelet's liveness probe turns into a restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STALE = 60.0  # the leader's loop beats every few seconds; this long silent is wedged


class Health:
    def __init__(self, describe: Callable[[], str] = lambda: "") -> None:
        self.describe = describe
        self._beat: float | None = None  # the leader's event loop, when it runs

    def beat(self) -> None:
        self._beat = time.monotonic()

    def ok(self) -> bool:
        beat = self._beat
        return beat is None or time.monotonic() - beat < STALE

    def serve(self, host: str, port: int) -> ThreadingHTTPServer:
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/healthz":
                    self.send_error(404)
                    return
                ok = health.ok()
                body = f"{'ok' if ok else 'event loop stalled'} {health.describe()}\n".encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:  # probes every few seconds: quiet
                return

        server = ThreadingHTTPServer((host, port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="healthz", daemon=True).start()
        return server
