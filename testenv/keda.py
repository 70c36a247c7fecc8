"""KEDA beside the real node: its operator (reads ScaledObjects, writes their HPAs, polls the
scalers) and its metrics adapter (the external metrics API, v1beta1.external.metrics.k8s.io,
that those HPAs read), built from `github.com/kedacore/keda/v2` (testenv/build.sh
keda-server) and run as host processes of the control plane.

The operator serves the adapter over gRPC with mutual TLS from `--cert-dir` (ca.crt,
tls.crt, tls.key; its own certificate rotation is off), on 127.0.0.1. The adapter serves
the apiserver on the real node's bridge gateway, as metricsserver.py explains (aggregated
APIs are reached on their endpoint addresses, never loopback), trusting the front-proxy
CA. Its APIService goes last on start and first on stop.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from celery_operator.certs import pki
from testenv.controlplane import ControlPlane, _die_with_parent
from testenv.metricsserver import aggregated_api, cluster_ca, free_port
from testenv.realnode import GATEWAY

NAMESPACE = "keda"
SERVICE = "keda-metrics-apiserver"
API_SERVICE = "v1beta1.external.metrics.k8s.io"


@dataclass
class Keda:
    cp: ControlPlane
    bindir: Path
    # Where the adapter serves the apiserver: any address of this host but loopback (an
    # EndpointSlice cannot hold one). The real node's bridge gateway by default.
    host: str = GATEWAY
    applied: list[dict[str, Any]] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # The operator's Prometheus endpoint (keda_scaler_metrics_value, keda_scaler_active ...).
    metrics_url: str = ""

    def start(self, timeout: float = 180) -> Keda:
        w = self.cp.workdir
        assert w is not None
        assert self.cp.kubeconfig is not None
        ca = cluster_ca(w)
        year = dt.timedelta(days=30)
        d = w / "keda"
        d.mkdir(exist_ok=True)
        # One certificate for both ends of the gRPC link and for the adapter's HTTPS.
        cert = pki.issue_cert(
            ca,
            SERVICE,
            year,
            sans=[
                "127.0.0.1",
                self.host,
                "localhost",
                f"{SERVICE}.{NAMESPACE}.svc",
                f"keda-operator.{NAMESPACE}.svc",
            ],
            client=True,
        )
        (d / "ca.crt").write_bytes(ca.cert_pem)
        (d / "tls.crt").write_bytes(cert.cert_pem)
        (d / "tls.key").write_bytes(cert.key_pem)
        (d / "tls.key").chmod(0o600)
        grpc, health = free_port("127.0.0.1"), free_port("127.0.0.1")
        op_metrics = free_port("127.0.0.1")
        self.metrics_url = f"http://127.0.0.1:{op_metrics}/metrics"
        https, ad_metrics = free_port(self.host), free_port("127.0.0.1")
        kc = str(self.cp.kubeconfig)
        self.cp.kubectl(
            "apply",
            "-f",
            "-",
            input=yaml.safe_dump(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
            ),
        )
        env = {
            **os.environ,
            "KUBECONFIG": kc,
            "WATCH_NAMESPACE": "",
            "KEDA_CLUSTER_OBJECT_NAMESPACE": NAMESPACE,
            "POD_NAMESPACE": NAMESPACE,
            "POD_NAME": "keda-operator-testenv",
        }
        self._spawn(
            "keda-operator",
            [
                str(self.bindir / "keda"),
                "--leader-elect=false",
                "--enable-cert-rotation=false",
                f"--cert-dir={d}",
                f"--metrics-service-bind-address=127.0.0.1:{grpc}",
                f"--metrics-bind-address=127.0.0.1:{op_metrics}",
                f"--health-probe-bind-address=127.0.0.1:{health}",
                "--zap-log-level=info",
            ],
            env,
        )
        self._spawn(
            "keda-adapter",
            [
                str(self.bindir / "keda-adapter"),
                f"--kubeconfig={kc}",
                f"--lister-kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                f"--bind-address={self.host}",
                f"--secure-port={https}",
                f"--tls-cert-file={d / 'tls.crt'}",
                f"--tls-private-key-file={d / 'tls.key'}",
                f"--cert-dir={d}",
                f"--metrics-service-address=127.0.0.1:{grpc}",
                f"--port={ad_metrics}",  # its own metrics
                "--v=1",
            ],
            env,
        )
        self.applied = aggregated_api(
            name=SERVICE,
            namespace=NAMESPACE,
            group="external.metrics.k8s.io",
            host=self.host,
            port=https,
            ca_pem=ca.cert_pem,
        )
        self.cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(self.applied))
        self._wait_available(timeout)
        return self

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        w = self.cp.workdir
        assert w is not None
        with (w / f"{name}.log").open("wb") as fh:
            self.procs.append(
                subprocess.Popen(
                    argv,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    cwd=w,
                    preexec_fn=_die_with_parent,  # no KEDA outlives the test session
                )
            )

    def _wait_available(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        path = '{.status.conditions[?(@.type=="Available")].status}'
        while self.cp.kubectl("get", "apiservice", API_SERVICE, "-o", f"jsonpath={path}") != "True":
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"KEDA exited {p.returncode}: {self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{API_SERVICE} not Available within {timeout:.0f}s: {self.logs()}"
                )
            time.sleep(1)

    def logs(self) -> str:
        w = self.cp.workdir
        assert w is not None
        return "\n".join(
            f"--- {n} ---\n" + (w / f"{n}.log").read_text(errors="replace")[-2500:]
            for n in ("keda-operator", "keda-adapter")
            if (w / f"{n}.log").exists()
        )

    def stop(self) -> None:
        for obj in reversed(self.applied):
            ns = obj["metadata"].get("namespace")
            args = ["delete", obj["kind"], obj["metadata"]["name"], "--ignore-not-found"]
            self.cp.kubectl(*args, *(["-n", ns] if ns else []))
        self.applied = []
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []
