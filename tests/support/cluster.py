"""A handle on the cluster the tests run against, driven through kubectl as a user would."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class KubectlError(RuntimeError):
    def __init__(self, args: list[str], code: int, stdout: str, stderr: str) -> None:
        super().__init__(f"kubectl {' '.join(args)} exited {code}: {stderr.strip()}")
        self.code, self.stdout, self.stderr = code, stdout, stderr


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def run_cli(
    binary: Path, kubeconfig: Path, *args: str, input: str | None = None, timeout: float = 120
) -> Result:
    """Runs kubectl or helm against the cluster; never raises on a non-zero exit."""
    out = subprocess.run(
        [str(binary), f"--kubeconfig={kubeconfig}", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Result(out.returncode, out.stdout, out.stderr)


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Polls `check` until it returns something truthy; fails with `what` on timeout.

    Used only where no watch-based wait (kubectl wait) can express the condition.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception as e:  # the object may not exist yet
            last_error = e
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}"
            ) from last_error
        time.sleep(0.1)


@dataclass
class Cluster:
    kubeconfig: Path
    kubectl_bin: Path
    helm_bin: Path | None = None
    keda_crds: Path | None = None
    local: bool = True  # the testenv control plane (kwok nodes), not an external cluster
    control_plane: Any = None  # testenv.controlplane.ControlPlane, when local

    def run(self, *args: str, input: str | None = None, timeout: float = 120) -> Result:
        return run_cli(self.kubectl_bin, self.kubeconfig, *args, input=input, timeout=timeout)

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 120) -> str:
        r = self.run(*args, input=input, timeout=timeout)
        if r.code != 0:
            raise KubectlError(list(args), r.code, r.stdout, r.stderr)
        return r.stdout

    def apply(self, obj: dict[str, Any] | list[dict[str, Any]] | str, *extra: str) -> str:
        text = (
            obj
            if isinstance(obj, str)
            else yaml.safe_dump_all(obj if isinstance(obj, list) else [obj])
        )
        return self.kubectl("apply", "-f", "-", *extra, input=text)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        ns = ["-n", namespace] if namespace else []
        return dict(json.loads(self.kubectl("get", kind, name, *ns, "-o", "json")))

    def exists(self, kind: str, name: str, namespace: str | None = None) -> bool:
        ns = ["-n", namespace] if namespace else []
        r = self.run("get", kind, name, *ns, "-o", "name", "--ignore-not-found")
        if r.code != 0:
            raise KubectlError(["get", kind, name], r.code, r.stdout, r.stderr)
        return bool(r.stdout.strip())

    def wait(self, *args: str, timeout: int = 60) -> str:
        """`kubectl wait` (watch-based) with a timeout."""
        return self.kubectl("wait", *args, f"--timeout={timeout}s", timeout=timeout + 30)

    def wait_established(self, *crds: str, timeout: float = 60) -> None:
        """CRDs Established. (`kubectl wait` fails on a CRD that has no status yet.)"""
        path = '{.status.conditions[?(@.type=="Established")].status}'
        for crd in crds:
            name = crd.removeprefix("crd/")
            wait_for(
                f"CRD {name} Established",
                lambda n=name: self.kubectl("get", "crd", n, "-o", f"jsonpath={path}") == "True",
                timeout,
            )

    def create_namespace(self, prefix: str = "t", labels: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        ns: dict[str, Any] = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        if labels:
            ns["metadata"]["labels"] = labels
        self.apply(ns)
        return name
