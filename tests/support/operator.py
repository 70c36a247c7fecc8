"""Runs `celery-operator run` as a subprocess, authenticated as its own ServiceAccount
(a real token, bound to the RBAC that ships), so e2e tests prove the RBAC too."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from celery_operator.manifests.webhooks import build_webhook_configurations
from tests.support.cluster import Cluster, wait_for

NAMESPACE = "celery-operator-system"
SERVICE_ACCOUNT = "celery-operator"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_account_kubeconfig(cluster: Cluster, namespace: str, name: str, path: Path) -> Path:
    """A kubeconfig that authenticates with a fresh token of the ServiceAccount."""
    token = cluster.kubectl("create", "token", name, "-n", namespace, "--duration=24h").strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    ctx_name = admin["current-context"]
    ctx = next(c for c in admin["contexts"] if c["name"] == ctx_name)["context"]
    cl = next(c for c in admin["clusters"] if c["name"] == ctx["cluster"])["cluster"]
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cl}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": name}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


CHART = Path(__file__).resolve().parents[2] / "charts" / "celery-operator"


def chart_rbac(cluster: Cluster, template: str) -> list[dict[str, Any]]:
    """The ServiceAccount, roles and bindings exactly as the Helm chart renders them."""
    if cluster.helm_bin is None:
        raise AssertionError("helm not found: run `make testenv`")
    out = subprocess.run(
        [
            str(cluster.helm_bin),
            "template",
            "celery-operator",
            str(CHART),
            f"--namespace={NAMESPACE}",
            "--kube-version=v1.30.0",
            f"--show-only=templates/{template}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]


class ComponentProcess:
    """A component of ours (`celery-operator <command>`) as a subprocess, authenticated as
    its own ServiceAccount with the RBAC that ships. start/stop/kill, and its log."""

    command = ""
    service_account = ""

    def __init__(self, cluster: Cluster, workdir: Path, *extra_args: str) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"{self.command}.log"
        cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        cluster.apply(self.rbac())
        self.kubeconfig = service_account_kubeconfig(
            cluster, NAMESPACE, self.service_account, workdir / f"{self.command}.kubeconfig"
        )

    def rbac(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def args(self) -> list[str]:
        raise NotImplementedError

    def health_url(self) -> str:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
        env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    # Where the process runs; None: the test's own directory.
    cwd: Path | None = None

    def start(self) -> None:
        env = self.env()
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery_operator.cli",
                    self.command,
                    *self.args(),
                    *self.extra_args,
                ],
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                cwd=self.cwd,
            )
        wait_for(f"the {self.command}'s health endpoint", self.healthy, timeout=60)

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"{self.command} exited: {self.tail()}")
        try:
            with urllib.request.urlopen(self.health_url(), timeout=2, context=self._ssl()) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def _ssl(self) -> ssl.SSLContext | None:
        return None

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def errors(self) -> list[str]:
        """Tracebacks and ERROR lines in the log (a clean run has none). kopf logs its own
        retried requests at ERROR ("will retry", e.g. a 429 while new CRDs initialise;
        "will re-authenticate", a kept-alive connection the apiserver closed): those are
        not failures and are left out."""
        text = self.log.read_text(errors="replace")
        return [
            line
            for line in text.splitlines()
            if ("Traceback" in line or " ERROR " in line or "[ERROR" in line)
            and "will retry" not in line
            and "will re-authenticate" not in line
        ]


class OperatorProcess(ComponentProcess):
    command = "run"
    service_account = SERVICE_ACCOUNT

    def __init__(self, cluster: Cluster, workdir: Path, *extra_args: str) -> None:
        self.liveness_port = _free_port()
        self.metrics_port = _free_port()
        super().__init__(cluster, workdir, *extra_args)

    def rbac(self) -> list[dict[str, Any]]:
        return chart_rbac(self.cluster, "operator-rbac.yaml")

    def args(self) -> list[str]:
        return [
            "--bind-address=127.0.0.1",
            f"--liveness-port={self.liveness_port}",
            f"--metrics-port={self.metrics_port}",
            "--resync-seconds=60",
            # Every pool measured for /metrics (30 s by default; faster for the tests).
            "--celery-metrics-interval=2",
            "--log-level=DEBUG",
            f"--leader-election-namespace={NAMESPACE}",
        ]

    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.liveness_port}/healthz"

    def metrics(self) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as r:
            return str(r.read().decode())


class WebhookProcess(ComponentProcess):
    """The webhook on 127.0.0.1 with self-managed certificates, and its configurations
    in URL mode (the operator injects their caBundle)."""

    command = "webhook"
    service_account = "celery-operator-webhook"

    def __init__(self, cluster: Cluster, workdir: Path, *extra_args: str) -> None:
        self.port = _free_port()
        super().__init__(cluster, workdir, *extra_args)

    def rbac(self) -> list[dict[str, Any]]:
        return chart_rbac(self.cluster, "webhook-rbac.yaml")

    def args(self) -> list[str]:
        return [
            "--host=127.0.0.1",
            f"--port={self.port}",
            f"--namespace={NAMESPACE}",
            f"--cert-dir={self.workdir / 'certs'}",
            "--discovery-ttl-seconds=0",
            "--log-level=DEBUG",
        ]

    def health_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/readyz"

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the health probe checks liveness, not trust
        return ctx

    def configurations(self) -> list[dict[str, Any]]:
        return build_webhook_configurations(NAMESPACE, url_base=f"https://127.0.0.1:{self.port}")


def new_workdir() -> Path:
    """A directory for a process's certs and log, removed when the test session ends."""
    path = Path(tempfile.mkdtemp(prefix="celery-operator-e2e-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
