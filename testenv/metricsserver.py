"""metrics-server beside the real node: the resource metrics API (metrics.k8s.io) that the
HPA controller reads, from the real kubelet's CPU and memory figures of real pods.

metrics-server (built from `sigs.k8s.io/metrics-server`, testenv/build.sh metrics-server)
runs as a host process of the control plane (`ControlPlane._spawn`: it dies with it),
listening on the real node's bridge gateway: the apiserver reaches aggregated APIs on their
endpoint addresses (`--enable-aggregator-routing`), and an EndpointSlice may not hold a
loopback address. So it exists only while the real node does. It authenticates the
apiserver's proxied requests with the front-proxy CA (controlplane.py's `--requestheader-*`)
and reads the kubelet with the admin credentials (the kubelet authorizes through the
apiserver). Only the real node is scraped: kwok's nodes have no kubelet.

The APIService goes last on start and first on stop: an APIService that does not answer
blocks every namespace deletion (the namespace controller lists every API).
"""

from __future__ import annotations

import base64
import datetime as dt
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from celery_operator.certs import pki
from testenv.controlplane import ControlPlane
from testenv.realnode import GATEWAY, NODE_LABEL

NAMESPACE = "kube-system"
NAME = "metrics-server"
API_SERVICE = "v1beta1.metrics.k8s.io"


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def cluster_ca(workdir: Path) -> pki.KeyPair:
    """The control plane's CA (testenv/controlplane.py writes it under pki/)."""
    return pki.KeyPair(
        cert_pem=(workdir / "pki" / "ca.crt").read_bytes(),
        key_pem=(workdir / "pki" / "ca.key").read_bytes(),
    )


def aggregated_api(
    *,
    name: str,
    namespace: str,
    group: str,
    host: str,
    port: int,
    ca_pem: bytes,
    version: str = "v1beta1",
) -> list[dict[str, Any]]:
    """A Service, its EndpointSlice (this host's `host`:`port`; aggregated APIs are reached
    on their endpoint addresses, never loopback) and the APIService of `version`.`group`."""
    labels = {"kubernetes.io/service-name": name, "app.kubernetes.io/name": name}
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [host], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": f"{version}.{group}"},
            "spec": {
                "group": group,
                "version": version,
                "service": {"name": name, "namespace": namespace, "port": 443},
                "caBundle": base64.b64encode(ca_pem).decode(),
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    ]


def objects(port: int, ca_pem: bytes) -> list[dict[str, Any]]:
    return aggregated_api(
        name=NAME,
        namespace=NAMESPACE,
        group="metrics.k8s.io",
        host=GATEWAY,
        port=port,
        ca_pem=ca_pem,
    )


@dataclass
class MetricsServer:
    cp: ControlPlane
    binary: Path
    resolution: str = "10s"  # metrics-server's minimum
    port: int = 0
    applied: list[dict[str, Any]] = field(default_factory=list)

    def start(self, timeout: float = 120) -> MetricsServer:
        w = self.cp.workdir
        assert w is not None
        assert self.cp.kubeconfig is not None
        ca = cluster_ca(w)
        serving = pki.issue_cert(
            ca,
            NAME,
            dt.timedelta(days=30),
            sans=[GATEWAY, f"{NAME}.{NAMESPACE}.svc", f"{NAME}.{NAMESPACE}.svc.cluster.local"],
        )
        d = w / NAME
        d.mkdir(exist_ok=True)
        (d / "tls.crt").write_bytes(serving.cert_pem)
        (d / "tls.key").write_bytes(serving.key_pem)
        (d / "tls.key").chmod(0o600)
        self.port = free_port(GATEWAY)
        kc = str(self.cp.kubeconfig)
        self.cp._spawn(
            NAME,
            [
                str(self.binary),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                f"--bind-address={GATEWAY}",
                f"--secure-port={self.port}",
                f"--tls-cert-file={d / 'tls.crt'}",
                f"--tls-private-key-file={d / 'tls.key'}",
                f"--cert-dir={d}",
                "--kubelet-use-node-status-port",  # the kubelet's port is not 10250 here
                "--kubelet-preferred-address-types=InternalIP",
                "--kubelet-insecure-tls",  # the kubelet's serving certificate is self-signed
                f"--metric-resolution={self.resolution}",
                "--kubelet-request-timeout=5s",  # must be below the resolution
                f"--node-selector={NODE_LABEL}=true",
                "--v=1",
            ],
        )
        self.applied = objects(self.port, ca.cert_pem)
        self.cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(self.applied))
        self._wait_available(timeout)
        return self

    def _wait_available(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        path = '{.status.conditions[?(@.type=="Available")].status}'
        while True:
            available = self.cp.kubectl("get", "apiservice", API_SERVICE, "-o", f"jsonpath={path}")
            if available == "True":
                return
            if time.monotonic() > deadline:
                log = (self.cp.workdir or Path()) / f"{NAME}.log"
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                raise RuntimeError(
                    f"APIService {API_SERVICE} not Available within {timeout:.0f}s "
                    f"({self.cp.kubectl('get', 'apiservice', API_SERVICE, '-o', 'yaml')}); "
                    f"metrics-server log tail:\n{tail}"
                )
            time.sleep(1)

    def stop(self) -> None:
        """The APIService first (a dead one blocks namespace deletion), then the rest; the
        process itself ends with the control plane."""
        for obj in reversed(self.applied):
            ns = obj["metadata"].get("namespace")
            args = ["delete", obj["kind"], obj["metadata"]["name"], "--ignore-not-found"]
            self.cp.kubectl(*args, *(["-n", ns] if ns else []))
        self.applied = []
