"""Runs a real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok (which plays the kubelet for fake nodes).

Used by the pytest session fixture (`ControlPlane` as a context manager) and by make:

    python -m testenv.controlplane up      # start in the background, write testenv/.run/kubeconfig
    python -m testenv.controlplane down    # stop it, leave no process behind
    python -m testenv.controlplane serve   # run in the foreground until Ctrl-C
    python -m testenv.controlplane bin     # print the directory holding kubectl etc.

Every child process dies with its parent (PR_SET_PDEATHSIG), so a killed test run leaves
nothing behind either.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import datetime as dt
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import yaml

from celery_operator.certs import pki
from testenv import images as images_mod
from testenv import realnode
from testenv.paths import cache_dir, versions
from testenv.realnode import GATEWAY, SERVICE_CIDR, RealNode, RealNodeError

HERE = Path(__file__).resolve().parent
RUN_DIR = HERE / ".run"
NODE_NAMES = ("kwok-node-0", "kwok-node-1")


class TestenvError(RuntimeError):
    """A one-line, actionable reason why the control plane cannot run."""


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    kwok: Path
    kwok_stages: Path
    keda_crds: Path
    helm: Path
    kubelet: Path
    kube_proxy: Path

    @property
    def bin_dir(self) -> Path:
        """The directory to put first on PATH (kubectl and helm of the pinned versions)."""
        return self.kubectl.parent


def find_binaries() -> Binaries:
    """Locates every binary; honours KUBEBUILDER_ASSETS for apiserver, etcd and kubectl."""
    v = versions()
    c = cache_dir()
    k8s = c / f"k8s-{v['KUBERNETES_VERSION']}" / "bin"
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    a = Path(assets) if assets else None

    def pick(name: str, default_dir: Path, from_assets: bool = False) -> Path:
        if a is not None and from_assets and (a / name).exists():
            return a / name
        return default_dir / name

    found = Binaries(
        etcd=pick("etcd", c / f"etcd-{v['ETCD_VERSION']}" / "bin", True),
        kube_apiserver=pick("kube-apiserver", k8s, True),
        kube_controller_manager=k8s / "kube-controller-manager",
        kube_scheduler=k8s / "kube-scheduler",
        kubectl=pick("kubectl", k8s, True),
        kwok=c / f"kwok-{v['KWOK_VERSION']}" / "bin" / "kwok",
        kwok_stages=c / f"kwok-{v['KWOK_VERSION']}" / "stages",
        keda_crds=c / f"keda-{v['KEDA_VERSION']}" / "crds",
        helm=c / f"helm-{v['HELM_VERSION']}" / "bin" / "helm",
        kubelet=k8s / "kubelet",
        kube_proxy=k8s / "kube-proxy",
    )
    missing = [str(p) for p in vars(found).values() if not p.exists()]
    if missing:
        raise TestenvError(
            f"control plane binaries missing ({', '.join(missing)}): run `make testenv` "
            "(testenv/build.sh) or set KUBEBUILDER_ASSETS"
        )
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    os.setpgrp()  # a Ctrl-C in the terminal reaches us, and we stop children in order


AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    resources: [{group: "coordination.k8s.io", resources: ["leases"]}]
    namespaces: ["kube-system", "kube-node-lease"]
  - level: Metadata
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
    userGroups: ["system:serviceaccounts"]
  - level: None
"""


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    argv: list[str] = field(default_factory=list)

    def tail(self, lines: int = 3) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(t.strip() for t in text[-lines:])


@dataclass
class ControlPlane:
    """A running control plane. `with ControlPlane() as cp:` starts and always stops it."""

    workdir: Path | None = None
    nodes: tuple[str, ...] = NODE_NAMES
    binaries: Binaries | None = None
    # A real kubelet + containerd node beside the kwok nodes (testenv/realnode.py), with
    # the locally built images (testenv/images.py) imported.
    real_node: bool = False
    procs: list[Proc] = field(default_factory=list)
    node: RealNode | None = field(init=False, default=None)
    kubeconfig: Path = field(init=False)
    api_url: str = field(init=False)
    etcd_url: str = field(init=False)
    audit_log: Path = field(init=False)
    _own_workdir: bool = field(init=False, default=False)

    # ---- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> None:
        self.binaries = self.binaries or find_binaries()
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="celery-operator-cp-"))
            self._own_workdir = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> None:
        assert self.binaries is not None
        assert self.workdir is not None
        b, w = self.binaries, self.workdir
        deadline = time.monotonic() + timeout
        pkidir = w / "pki"
        pkidir.mkdir(exist_ok=True)
        ca, admin = self._write_pki(pkidir)

        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._spawn(
            "etcd",
            [
                str(b.etcd),
                "--name=default",
                f"--data-dir={w / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync=true",
                "--quota-backend-bytes=8589934592",
                "--log-level=warn",
            ],
        )
        self._wait_tcp("etcd", etcd_port, deadline)

        self.api_url = f"https://127.0.0.1:{api_port}"
        # Writes by ServiceAccounts (the operator, the webhook), who and with which user
        # agent, in the audit log: tests prove with it which process wrote (a stopped
        # leader must write nothing once it resumes).
        self.audit_log = w / "audit.log"
        (w / "audit-policy.yaml").write_text(AUDIT_POLICY)
        self._spawn(
            "kube-apiserver",
            [
                str(b.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                f"--advertise-address={GATEWAY}",  # pods reach it through the relay (realnode.py)
                f"--secure-port={api_port}",
                f"--cert-dir={pkidir}",
                f"--tls-cert-file={pkidir / 'apiserver.crt'}",
                f"--tls-private-key-file={pkidir / 'apiserver.key'}",
                f"--client-ca-file={pkidir / 'ca.crt'}",
                f"--service-account-key-file={pkidir / 'sa.pub'}",
                f"--service-account-signing-key-file={pkidir / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,PodSecurity,"
                "MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy,"
                "ResourceQuota,DefaultTolerationSeconds,Priority,NodeRestriction",
                # The real node: logs/exec/port-forward through the kubelet, and webhooks
                # and aggregated APIs called on their pods' IPs (there is no cluster DNS).
                f"--kubelet-client-certificate={pkidir / 'kubelet-client.crt'}",
                f"--kubelet-client-key={pkidir / 'kubelet-client.key'}",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                "--enable-aggregator-routing=true",
                f"--requestheader-client-ca-file={pkidir / 'front-proxy-ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pkidir / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={pkidir / 'front-proxy-client.key'}",
                "--max-requests-inflight=800",
                "--max-mutating-requests-inflight=400",
                "--profiling=true",  # /debug/pprof for admins: how bench/ profiles the apiserver
                f"--audit-policy-file={w / 'audit-policy.yaml'}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-maxsize=200",
                "--audit-log-maxbackup=1",
                "--v=0",
            ],
        )
        self.kubeconfig = w / "kubeconfig"
        self._write_kubeconfig(self.kubeconfig, ca, admin)
        self._wait_ready(deadline)

        self._spawn(
            "kube-controller-manager",
            [
                str(b.kube_controller_manager),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--cert-dir={w / 'kcm-certs'}",
                f"--service-account-private-key-file={pkidir / 'sa.key'}",
                f"--root-ca-file={pkidir / 'ca.crt'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--controllers=*,-node-ipam-controller,-cloud-node-lifecycle-controller,"
                "-service-lb-controller,-node-route-controller,-persistentvolume-attach-detach-controller",
                "--concurrent-deployment-syncs=10",
                "--concurrent-replicaset-syncs=10",
                "--concurrent-gc-syncs=20",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                "--horizontal-pod-autoscaler-sync-period=5s",
                "--v=0",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(b.kube_scheduler),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--cert-dir={w / 'scheduler-certs'}",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                "--v=0",
            ],
        )
        kwok_cfg = w / "kwok.yaml"
        kwok_cfg.write_text(
            "\n---\n".join(p.read_text() for p in sorted(b.kwok_stages.glob("*.yaml")))
        )
        self._spawn(
            "kwok",
            [
                str(b.kwok),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={kwok_cfg}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--node-lease-duration-seconds=40",
                "--cidr=10.244.0.0/16",
                "--node-ip=10.244.255.1",
                f"--server-address=127.0.0.1:{free_port()}",
            ],
        )
        self._create_nodes()
        self._wait_nodes_ready(deadline)
        self._wait_default_serviceaccount(deadline)
        if self.real_node:
            self.start_real_node()

    def start_real_node(self, timeout: float = 240.0) -> RealNode:
        """Starts the real node with every locally built image (make images) imported."""
        wanted = {i.name: i for i in images_mod.plan().values() if i.name != "python"}
        missing = [i.name for i in wanted.values() if not i.built]
        if missing:
            raise TestenvError(
                f"images not built ({', '.join(missing)}): run `make images` "
                "(python -m testenv.images build)"
            )
        self.node = RealNode(
            self,
            images={i.ref: i.tarball for i in wanted.values()},
            pause_ref=wanted["pause"].ref,
        )
        try:
            self.node.start(time.monotonic() + timeout)
        except RealNodeError as e:
            raise TestenvError(f"real node: {e}") from e
        return self.node

    def stop(self) -> None:
        """Stops every process (newest first), then removes the temp dir. Idempotent."""
        for p in reversed(self.procs):
            if p.popen.poll() is None:
                p.popen.terminate()
        for p in reversed(self.procs):
            try:
                # Its state is disposable: no need to wait out the apiserver's drain.
                p.popen.wait(timeout=3)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait(timeout=10)
        self.procs.clear()
        if self.node is not None:
            self.node.stop()
            self.node = None
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- faults (tests) --------------------------------------------------------------
    def restart(self, name: str, *, down: float = 0.0, timeout: float = 120.0) -> None:
        """Stops one component (SIGTERM; SIGKILL after 10 s), keeps it down `down`
        seconds, starts it again with the same arguments and waits until it serves:
        kube-apiserver's /readyz, or etcd's port and then the apiserver's /readyz."""
        index = next(i for i, p in enumerate(self.procs) if p.name == name)
        proc = self.procs[index]
        if proc.popen.poll() is None:
            proc.popen.terminate()
            try:
                proc.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(timeout=10)
        if down:
            time.sleep(down)  # an outage of this length is the point
        self._spawn(name, proc.argv)
        self.procs[index] = self.procs.pop()  # keep the order: stop() goes newest first
        deadline = time.monotonic() + timeout
        if name == "etcd":
            self._wait_tcp("etcd", int(self.etcd_url.rsplit(":", 1)[1]), deadline)
        self._wait_ready(deadline)

    @contextlib.contextmanager
    def paused(self, name: str) -> Iterator[None]:
        """Freezes one component (SIGSTOP) for the block, and thaws it (SIGCONT) after,
        also when the block raises: e.g. kube-controller-manager, so a deleted namespace
        stays Terminating with its content still in it, as it does for a while on a busy
        cluster. A component frozen when the control plane stops is killed like the rest."""
        proc = next(p for p in self.procs if p.name == name)
        proc.popen.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGCONT)

    def audit_events(self) -> list[dict[str, Any]]:
        """The audit log's events so far (writes by ServiceAccounts)."""
        out = []
        for path in (self.audit_log,):
            with contextlib.suppress(FileNotFoundError):
                for line in path.read_text(errors="replace").splitlines():
                    with contextlib.suppress(ValueError):
                        out.append(json.loads(line))
        return out

    def etcd_revision(self) -> int:
        """etcd's current revision (its v3 JSON gateway: no etcdctl needed)."""
        body = json.dumps({"key": base64.b64encode(b"/").decode(), "limit": 1}).encode()
        req = urllib.request.Request(f"{self.etcd_url}/v3/kv/range", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(json.loads(r.read())["header"]["revision"])

    def compact_etcd(self) -> int:
        """Compacts etcd at its current revision: a watch from any older resourceVersion
        can no longer be served from etcd (410 Gone). Returns the revision."""
        revision = self.etcd_revision()
        body = json.dumps({"revision": str(revision), "physical": True}).encode()
        req = urllib.request.Request(f"{self.etcd_url}/v3/kv/compaction", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
        return revision

    # ---- helpers ---------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> None:
        assert self.workdir is not None
        log = self.workdir / f"{name}.log"
        with log.open("wb") as fh:
            popen = subprocess.Popen(
                argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
                cwd=self.workdir,
            )
        self.procs.append(Proc(name, popen, log, argv))

    def _check_alive(self) -> None:
        for p in self.procs:
            code = p.popen.poll()
            if code is not None:
                hint = ""
                text = p.tail(20)
                if "address already in use" in text:
                    hint = " (a port was taken: run `make cluster-down` or stop the other process)"
                raise TestenvError(f"{p.name} exited with {code}{hint}: {p.tail()} (log {p.log})")

    def _wait(self, what: str, check: object, deadline: float) -> None:
        assert callable(check)
        while True:
            self._check_alive()
            with contextlib.suppress(Exception):
                if check():
                    return
            if time.monotonic() > deadline:
                raise TestenvError(f"timed out waiting for {what}")
            time.sleep(0.2)

    def _wait_tcp(self, what: str, port: int, deadline: float) -> None:
        def check() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True

        self._wait(what, check, deadline)

    def _ssl_context(self) -> ssl.SSLContext:
        assert self.workdir is not None
        pkidir = self.workdir / "pki"
        ctx = ssl.create_default_context(cafile=str(pkidir / "ca.crt"))
        ctx.load_cert_chain(str(pkidir / "admin.crt"), str(pkidir / "admin.key"))
        return ctx

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(
            self.api_url + path, context=self._ssl_context(), timeout=5
        ) as r:
            return bytes(r.read())

    def _wait_ready(self, deadline: float) -> None:
        self._wait("kube-apiserver /readyz", lambda: self._get("/readyz") == b"ok", deadline)

    def kubectl(self, *args: str, input: str | None = None) -> str:
        assert self.binaries is not None
        out = subprocess.run(
            [str(self.binaries.kubectl), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if out.returncode != 0:
            raise TestenvError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def _create_nodes(self) -> None:
        docs = []
        for name in self.nodes:
            docs.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "annotations": {
                            "kwok.x-k8s.io/node": "fake",
                            "node.alpha.kubernetes.io/ttl": "0",
                        },
                        "labels": {
                            "kubernetes.io/hostname": name,
                            "kubernetes.io/os": "linux",
                            "kubernetes.io/arch": "amd64",
                            "kubernetes.io/role": "agent",
                            "node-role.kubernetes.io/agent": "",
                            "type": "kwok",
                        },
                    },
                    "status": {
                        "allocatable": {"cpu": "256", "memory": "1Ti", "pods": "10000"},
                        "capacity": {"cpu": "256", "memory": "1Ti", "pods": "10000"},
                    },
                }
            )
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))

    def _wait_nodes_ready(self, deadline: float) -> None:
        def ready() -> bool:
            out = self.kubectl(
                "get",
                "nodes",
                "-o",
                'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}',
            )
            return out.split() == ["True"] * len(self.nodes)

        self._wait(f"{len(self.nodes)} kwok nodes Ready", ready, deadline)

    def _wait_default_serviceaccount(self, deadline: float) -> None:
        self._wait(
            "the default ServiceAccount (kube-controller-manager up)",
            lambda: self.kubectl("get", "serviceaccount", "default", "-n", "default", "-o", "name"),
            deadline,
        )

    def _write_pki(self, d: Path) -> tuple[pki.KeyPair, pki.KeyPair]:
        year = dt.timedelta(days=365)
        ca = pki.new_ca("celery-operator-testenv-ca", year)
        server = pki.issue_cert(
            ca,
            "kube-apiserver",
            year,
            sans=[
                "127.0.0.1",
                GATEWAY,
                "localhost",
                "10.96.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )
        admin = pki.issue_cert(
            ca, "admin", year, organizations=["system:masters"], server=False, client=True
        )
        # How the apiserver authenticates to kubelets (logs, exec, port-forward).
        kubelet_client = pki.issue_cert(
            ca,
            "kube-apiserver-kubelet-client",
            year,
            organizations=["system:masters"],
            server=False,
            client=True,
        )
        # The aggregation layer: the apiserver proxies requests for aggregated APIs
        # (metrics.k8s.io, external.metrics.k8s.io) with this client certificate and the
        # user in X-Remote-* headers, which those servers trust through this CA.
        front_proxy_ca = pki.new_ca("celery-operator-testenv-front-proxy-ca", year)
        front_proxy = pki.issue_cert(
            front_proxy_ca, "front-proxy-client", year, server=False, client=True
        )
        sa_key = pki.private_key_pem(pki.new_rsa_key())
        files = {
            "front-proxy-ca.crt": front_proxy_ca.cert_pem,
            "front-proxy-client.crt": front_proxy.cert_pem,
            "front-proxy-client.key": front_proxy.key_pem,
            "ca.crt": ca.cert_pem,
            "ca.key": ca.key_pem,
            "apiserver.crt": server.cert_pem,
            "apiserver.key": server.key_pem,
            "admin.crt": admin.cert_pem,
            "admin.key": admin.key_pem,
            "kubelet-client.crt": kubelet_client.cert_pem,
            "kubelet-client.key": kubelet_client.key_pem,
            "sa.key": sa_key,
            "sa.pub": pki.public_key_pem(sa_key),
        }
        for name, data in files.items():
            (d / name).write_bytes(data)
            (d / name).chmod(0o600)
        return ca, admin

    def _write_kubeconfig(self, path: Path, ca: pki.KeyPair, admin: pki.KeyPair) -> None:
        import base64

        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode()

        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "testenv",
                    "cluster": {
                        "server": self.api_url,
                        "certificate-authority-data": b64(ca.cert_pem),
                    },
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate-data": b64(admin.cert_pem),
                        "client-key-data": b64(admin.key_pem),
                    },
                }
            ],
            "contexts": [{"name": "testenv", "context": {"cluster": "testenv", "user": "admin"}}],
            "current-context": "testenv",
        }
        path.write_text(yaml.safe_dump(cfg))
        path.chmod(0o600)


# ---- background mode for make ---------------------------------------------------------
PIDFILE = RUN_DIR / "controlplane.pid"
READY = RUN_DIR / "ready"
LOGFILE = RUN_DIR / "controlplane.log"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid() -> int | None:
    try:
        pid = int(PIDFILE.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def serve(workdir: Path) -> int:
    """Foreground: start, publish testenv/.run/kubeconfig, run until SIGTERM/SIGINT."""
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    READY.unlink(missing_ok=True)
    cp = ControlPlane(workdir=workdir, real_node=True)
    try:
        cp.start()
        shutil.copy(cp.kubeconfig, RUN_DIR / "kubeconfig")
        (RUN_DIR / "kubeconfig").chmod(0o600)
        READY.write_text(cp.api_url + "\n")
        print(f"control plane ready at {cp.api_url}", flush=True)
        while not stop:
            time.sleep(0.5)
            cp._check_alive()
    except TestenvError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        cp.stop()
        READY.unlink(missing_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def up(timeout: float = 420.0) -> int:
    if _read_pid() is not None and READY.exists():
        print(f"control plane already running; KUBECONFIG={RUN_DIR / 'kubeconfig'}")
        return 0
    find_binaries()  # fail fast, in one line, before forking
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    READY.unlink(missing_ok=True)
    workdir = RUN_DIR / "cluster"
    shutil.rmtree(workdir, ignore_errors=True)
    with LOGFILE.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "testenv.controlplane", "serve", "--workdir", str(workdir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=HERE.parent,
            start_new_session=True,
        )
    PIDFILE.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while not READY.exists():
        if proc.poll() is not None:
            print(LOGFILE.read_text().strip().splitlines()[-1:][0], file=sys.stderr)
            PIDFILE.unlink(missing_ok=True)
            return 1
        if time.monotonic() > deadline:
            print(f"error: control plane not ready after {timeout:.0f}s; see {LOGFILE}")
            return 1
        time.sleep(0.3)
    print(f"control plane up; export KUBECONFIG={RUN_DIR / 'kubeconfig'}")
    return 0


def down(timeout: float = 60.0) -> int:
    pid = _read_pid()
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid_alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.2)
        if _pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)
    PIDFILE.unlink(missing_ok=True)
    READY.unlink(missing_ok=True)
    (RUN_DIR / "kubeconfig").unlink(missing_ok=True)
    shutil.rmtree(RUN_DIR / "cluster", ignore_errors=True)
    print("control plane down")
    # The real node's own teardown ran in `serve`; this one catches what a crash left.
    return realnode.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testenv.controlplane")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up")
    sub.add_parser("down")
    s = sub.add_parser("serve")
    s.add_argument("--workdir", type=Path, default=RUN_DIR / "cluster")
    sub.add_parser("bin")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "up":
            return up()
        if args.cmd == "down":
            return down()
        if args.cmd == "serve":
            return serve(args.workdir)
        print(find_binaries().bin_dir)
        return 0
    except TestenvError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
