"""A `kubectl get pods --watch` in the background: how each pod's containers ended.

A pod deleted by a rollout or a scale-down is gone by the time a test looks; its last
status (the container's exit code and reason: 0 after a clean shutdown, 137 after the
kubelet's SIGKILL) is only seen by watching.
"""

from __future__ import annotations

import json
import subprocess
import threading
from types import TracebackType
from typing import Any

from tests.support.cluster import Cluster


class PodWatch:
    def __init__(self, cluster: Cluster, namespace: str, selector: str) -> None:
        self._proc = subprocess.Popen(
            [
                str(cluster.kubectl_bin),
                f"--kubeconfig={cluster.kubeconfig}",
                "get",
                "pods",
                "-n",
                namespace,
                "-l",
                selector,
                "--watch",
                "-o",
                "json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.last: dict[str, dict[str, Any]] = {}  # pod name -> its latest body
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        decoder = json.JSONDecoder()
        buf = ""
        for line in self._proc.stdout:
            buf += line
            while buf.strip():
                try:
                    obj, end = decoder.raw_decode(buf.lstrip())
                except ValueError:
                    break
                buf = buf.lstrip()[end:]
                with self._lock:
                    self.last[obj["metadata"]["name"]] = obj

    def terminations(self) -> dict[str, list[dict[str, Any]]]:
        """Pod name -> the `terminated` states its containers reported (current or last)."""
        out: dict[str, list[dict[str, Any]]] = {}
        with self._lock:
            for name, pod in self.last.items():
                for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                    for state in (cs.get("state") or {}, cs.get("lastState") or {}):
                        if "terminated" in state:
                            out.setdefault(name, []).append(state["terminated"])
        return out

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait(timeout=10)

    def __enter__(self) -> PodWatch:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
