"""One real node beside the kwok nodes: containerd + runc, a kubelet and kube-proxy.

    python -m testenv.realnode down      # tear down whatever a real node left (idempotent)
    python -m testenv.realnode check     # what this machine lacks to run one, in one line

`RealNode` is started by `testenv.controlplane.ControlPlane(real_node=True)` after the
kwok nodes; see ../docs/realnode.md for the design and ../shared/design/realnode.md for the
facts it rests on. In short:

- Node `real-0`, labelled `celeryproject.org/real-node=true` and tainted
  `celeryproject.org/real-node=true:NoSchedule`: only pods that ask for it land there.
- Pods live on bridge `celeryop0`, 10.88.0.0/24, gateway 10.88.0.1 (the host). Pods have
  no default route, only routes to their subnet and the service range; the host routes
  the service range to the bridge and blackholes kwok's fake pod range, and the FORWARD
  chain drops anything from the pod subnet that would leave by another interface: no
  traffic leaves the machine.
- The apiserver advertises 10.88.0.1; a socat relay on 10.88.0.1:<port> forwards to the
  apiserver on 127.0.0.1, so in-cluster clients reach the `kubernetes` Service.
- Every image is local (testenv/images.py), imported into the node's containerd, whose
  image store lives in the testenv cache and so survives teardown (a warm start imports
  nothing). Everything else the node makes is removed by `teardown()`: processes (shims
  and pod processes too), mounts, network namespaces, the bridge and veths, routes,
  iptables chains, `kubepods` cgroups, state directories, and the host sysctls that the
  kubelet, kube-proxy and the node change are put back.
- One real node per machine: a lock in /run/celery-operator-node. A start finds leftovers
  of a crashed run and tears them down first; a janitor process tears down after a
  parent that was killed outright (SIGKILL), when no one else holds the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from celery_operator.certs import pki
from testenv.paths import cache_dir

if TYPE_CHECKING:
    from testenv.controlplane import ControlPlane

NODE_NAME = "real-0"
NODE_LABEL = "celeryproject.org/real-node"
TAINT = {"key": NODE_LABEL, "value": "true", "effect": "NoSchedule"}
BRIDGE = "celeryop0"
POD_CIDR = "10.88.0.0/24"
GATEWAY = "10.88.0.1"
KWOK_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"  # the apiserver's --service-cluster-ip-range
FORWARD_CHAIN = "CELERYOP-FORWARD"
MAX_PODS = 30

RUN = Path("/run/celery-operator-node")
STATE = Path("/var/lib/celery-operator-node")
LOCK = RUN / "lock"
SAVED_SYSCTLS = RUN / "sysctls.json"
# Paths the kubelet and containerd use whatever directories they are given.
HOST_PATHS = (
    Path("/var/lib/kubelet"),
    Path("/var/log/pods"),
    Path("/var/log/containers"),
    Path("/run/containerd"),
)
SYSCTLS = (
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
    "net.netfilter.nf_conntrack_tcp_be_liberal",
)
NEEDED_TOOLS = ("containerd", "containerd-shim-runc-v2", "ctr", "runc", "iptables", "ip", "socat")


class RealNodeError(RuntimeError):
    """A one-line reason why the real node cannot run here."""


def _log(msg: str) -> None:
    print(f"[realnode {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _sh(
    *argv: str, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(argv), capture_output=True, text=True, check=False, input=input)
    if check and r.returncode != 0:
        raise RealNodeError(f"{' '.join(argv)}: {(r.stderr or r.stdout).strip()}")
    return r


# ---- what the machine must have -----------------------------------------------------------
def check_machine() -> None:
    """Raises RealNodeError naming the first thing this machine lacks."""
    if os.geteuid() != 0:
        raise RealNodeError("the real node needs root (containerd, bridges, iptables, cgroups)")
    missing = [t for t in NEEDED_TOOLS if shutil.which(t) is None]
    if not Path("/usr/lib/cni/bridge").exists():
        missing.append("/usr/lib/cni/bridge")
    if missing:
        raise RealNodeError(
            f"missing {', '.join(missing)}: run testenv/install-node.sh (Debian packages)"
        )
    if "overlay" not in Path("/proc/filesystems").read_text():
        _sh("modprobe", "overlay", check=False)
        if "overlay" not in Path("/proc/filesystems").read_text():
            raise RealNodeError("the kernel has no overlay filesystem (containerd's snapshotter)")
    if not Path("/proc/sys/net/bridge").exists():
        _sh("modprobe", "br_netfilter", check=False)
        if not Path("/proc/sys/net/bridge").exists():
            raise RealNodeError(
                "no bridge netfilter (/proc/sys/net/bridge): kube-proxy cannot see pod traffic"
            )
    cgroups = Path("/sys/fs/cgroup")
    if not (cgroups / "cgroup.controllers").exists():
        lacking = [c for c in ("cpu", "memory", "pids", "freezer") if not (cgroups / c).is_dir()]
        if lacking:
            raise RealNodeError(f"cgroup v1 controllers not mounted: {', '.join(lacking)}")


# ---- sysctls --------------------------------------------------------------------------------
def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctls() -> dict[str, str]:
    out = {}
    for name in SYSCTLS:
        with contextlib.suppress(OSError):
            out[name] = _sysctl_path(name).read_text().strip()
    return out


def write_sysctl(name: str, value: str) -> None:
    _sysctl_path(name).write_text(value + "\n")


# Directories the node's tools create where the host may have none (netns: iproute2's).
CREATED_DIRS = (Path("/run/netns"),)


def save_sysctls() -> None:
    """Records the host's values (and which of CREATED_DIRS are absent) once; a record left
    by a crash is restored first."""
    restore_sysctls()
    RUN.mkdir(parents=True, exist_ok=True)
    absent = [str(d) for d in CREATED_DIRS if not d.exists()]
    SAVED_SYSCTLS.write_text(json.dumps({"sysctls": read_sysctls(), "absent": absent}))


def restore_sysctls() -> list[str]:
    """Puts back what save_sysctls recorded; returns the names that had changed."""
    try:
        saved: dict[str, Any] = json.loads(SAVED_SYSCTLS.read_text())
    except (OSError, ValueError):
        return []
    changed = []
    now = read_sysctls()
    for name, value in saved.get("sysctls", {}).items():
        if now.get(name) != value:
            with contextlib.suppress(OSError):
                write_sysctl(name, value)
                changed.append(name)
    for d in saved.get("absent", []):
        with contextlib.suppress(OSError):
            Path(d).rmdir()  # only if empty
    SAVED_SYSCTLS.unlink(missing_ok=True)
    return changed


# ---- teardown -------------------------------------------------------------------------------
def _mounts() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        points.append(point)
    return points


def _ours(point: str, roots: list[Path]) -> bool:
    if re.fullmatch(r"/(var/)?run/netns/cni-[0-9a-f-]+", point):
        return True
    return any(point == str(r) or point.startswith(str(r) + "/") for r in roots)


def _roots() -> list[Path]:
    return [RUN, STATE, *HOST_PATHS, cache_dir() / "node"]


def _our_mounts() -> list[str]:
    roots = _roots()
    return [p for p in _mounts() if _ours(p, roots)]


def _unmount_all() -> None:
    for _ in range(5):
        points = _our_mounts()
        if not points:
            return
        for p in sorted(set(points), key=lambda s: -s.count("/")):
            if _sh("umount", p, check=False).returncode != 0:
                _sh("umount", "-l", p, check=False)
    left = _our_mounts()
    if left:
        raise RealNodeError(f"could not unmount {', '.join(left[:5])}")


def _cgroup_dirs() -> list[Path]:
    """Every `kubepods` cgroup of every hierarchy (v1 controllers, or the v2 tree)."""
    root = Path("/sys/fs/cgroup")
    tops = [root / "kubepods"] + [d / "kubepods" for d in root.iterdir() if d.is_dir()]
    return [t for t in tops if t.is_dir()]


def _pids_in(top: Path) -> set[int]:
    pids: set[int] = set()
    for procs in top.rglob("cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            pids |= {int(x) for x in procs.read_text().split()}
    return pids


def _our_processes() -> dict[int, str]:
    """pid -> program name of every process whose arguments name the node's directories:
    containerd, its shims, the kubelet, kube-proxy (of this or of a crashed run)."""
    out = {}
    marks = (str(RUN).encode(), str(STATE).encode())
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            argv = (d / "cmdline").read_bytes().split(b"\0")
            if any(m in a for a in argv for m in marks):
                out[int(d.name)] = Path(argv[0].decode(errors="replace")).name
    return out


def _kill_pods() -> None:
    """SIGKILLs every process in the kubepods cgroups and every shim of our containerd."""
    for _ in range(50):
        shims = {p for p, exe in _our_processes().items() if exe == "containerd-shim-runc-v2"}
        pids = set().union(*(_pids_in(t) for t in _cgroup_dirs())) | shims
        pids.discard(os.getpid())
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    raise RealNodeError("pod processes survive SIGKILL (a frozen cgroup?)")


def _remove_cgroups() -> None:
    for top in _cgroup_dirs():
        # Children first: a cgroup with sub-cgroups cannot be removed.
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()
    left = _cgroup_dirs()
    if left:
        raise RealNodeError(f"could not remove cgroups {', '.join(map(str, left))}")


def _bridge_links() -> list[str]:
    """The veths on the node's bridge, then the bridge itself (if it exists)."""
    if not Path(f"/sys/class/net/{BRIDGE}").exists():
        return []
    veths = [
        link.name
        for link in Path("/sys/class/net").iterdir()
        if (link / "master").exists() and (link / "master").resolve().name == BRIDGE
    ]
    return [*veths, BRIDGE]


def _our_chain(name: str) -> bool:
    return name.startswith("KUBE-") or name == FORWARD_CHAIN


def _jump(words: list[str]) -> str:
    """The target of a rule (`-j TARGET`), or ""."""
    return words[words.index("-j") + 1] if "-j" in words[:-1] else ""


def _iptables_rules() -> list[tuple[str, str, list[str]]]:
    """(tool, table, words of one `-S` line) for IPv4 and IPv6, the tables kube-proxy uses."""
    out = []
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in ("filter", "nat", "mangle"):
            r = _sh(tool, "-w", "-t", table, "-S", check=False)
            # shlex: comments are quoted, as in --comment "kubernetes service portals"
            out += [(tool, table, shlex.split(line)) for line in r.stdout.splitlines()]
    return out


def _iptables_cleanup() -> None:
    """Removes every KUBE-* chain (and the jumps to them) and our FORWARD guard."""
    chains = []
    for tool, table, words in _iptables_rules():
        if words[:1] == ["-N"] and _our_chain(words[1]):
            chains.append((tool, table, words[1]))
        elif words[:1] == ["-A"] and not _our_chain(words[1]) and _our_chain(_jump(words)):
            _sh(tool, "-w", "-t", table, "-D", *words[1:], check=False)
    for tool, table, chain in chains:
        _sh(tool, "-w", "-t", table, "-F", chain, check=False)
    for tool, table, chain in chains:
        _sh(tool, "-w", "-t", table, "-X", chain, check=False)


def leftovers() -> list[str]:
    """What a real node left on this machine (empty: nothing). Used by teardown and tests."""
    found = []
    found += [f"process {pid} {exe}" for pid, exe in _our_processes().items()]
    found += [f"process {p} in kubepods" for t in _cgroup_dirs() for p in _pids_in(t)]
    found += [f"mount {m}" for m in _our_mounts()]
    found += [f"cgroup {c}" for c in _cgroup_dirs()]
    found += [f"link {name}" for name in _bridge_links()]
    found += [
        f"{tool} -t {table} chain {words[1]}"
        for tool, table, words in _iptables_rules()
        if words[:1] == ["-N"] and _our_chain(words[1])
    ]
    r = _sh("ip", "route", "show", KWOK_CIDR, check=False)
    if r.stdout.strip():
        found.append(f"route {r.stdout.strip()}")
    found += [f"directory {p}" for p in (STATE, *HOST_PATHS) if p.exists()]
    if SAVED_SYSCTLS.exists():
        found.append("sysctls not restored")
    return found


def teardown() -> None:
    """Removes everything a real node made; safe to run with nothing there."""
    _kill_pods()
    # containerd, the kubelet and kube-proxy of a crashed run (ours die with their parent).
    for pid in _our_processes():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _unmount_all()
    for ns in [*Path("/run/netns").glob("cni-*"), *Path("/var/run/netns").glob("cni-*")]:
        ns.unlink(missing_ok=True)
    _remove_cgroups()
    for name in _bridge_links():  # the pods' veths first, then the bridge
        _sh("ip", "link", "del", name, check=False)
    _sh("ip", "route", "del", "blackhole", KWOK_CIDR, check=False)
    _iptables_cleanup()
    _unmount_all()  # nothing should be mounted now; never delete through a mount
    for p in (STATE, *HOST_PATHS):
        shutil.rmtree(p, ignore_errors=True)
    for p in RUN.iterdir() if RUN.exists() else []:
        if p != LOCK and p != SAVED_SYSCTLS:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
    restore_sysctls()


# ---- the lock: one real node per machine ------------------------------------------------------
def _take_lock() -> int:
    RUN.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode().strip() or "?"
        os.close(fd)
        raise RealNodeError(
            f"a real node already runs on this machine (pid {holder}): "
            "stop it first (`make cluster-down` / `make dev-down`)"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def lock_is_free() -> bool:
    if not LOCK.exists():
        return True
    fd = os.open(LOCK, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def down() -> int:
    """`python -m testenv.realnode down`: tears down, unless a live node holds the lock."""
    if not lock_is_free():
        print("a real node is running (its owner will tear it down); nothing done")
        return 0
    fd = _take_lock()
    try:
        teardown()
    finally:
        os.close(fd)
    left = leftovers()
    if left:
        print("left behind: " + "; ".join(left), file=sys.stderr)
        return 1
    return 0


# ---- the node -------------------------------------------------------------------------------
@dataclass
class RealNode:
    """The real node of a running ControlPlane (which owns its processes)."""

    cp: ControlPlane
    images: dict[str, Path] = field(default_factory=dict)  # ref -> docker-archive tarball
    pause_ref: str = ""
    _lock: int | None = None
    _janitor: subprocess.Popen[bytes] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def containerd_sock(self) -> Path:
        return RUN / "containerd.sock"

    def ctr(self, *args: str, check: bool = True) -> str:
        argv = ("ctr", "--address", str(self.containerd_sock), "-n", "k8s.io", *args)
        return _sh(*argv, check=check).stdout

    def container_pid(self, container_id: str) -> int:
        """The host PID of a container's main process (`containerd://<id>` or `<id>`).

        Signals to PID 1 of a pod's PID namespace are ignored when sent from inside it
        (even SIGSTOP), so a test that wants to freeze a container's main process sends
        from here, the node.
        """
        cid = container_id.removeprefix("containerd://")
        for line in self.ctr("tasks", "list").splitlines()[1:]:
            words = line.split()
            if words and words[0] == cid:
                return int(words[1])
        raise RealNodeError(f"no running task for container {cid}")

    def start(self, deadline: float) -> None:
        t0 = time.monotonic()
        check_machine()
        self._lock = _take_lock()
        if leftovers():
            _log("tearing down what an earlier real node left")
            teardown()
        self._start_janitor()
        save_sysctls()
        self._network()
        self._containerd()
        self._import_images()
        self.timings["images"] = time.monotonic() - t0
        self._kubelet()
        self._kube_proxy()
        self._relay()
        self._wait_ready(deadline)
        self.timings["ready"] = time.monotonic() - t0
        _log(
            f"node {NODE_NAME} Ready {self.timings['ready']:.1f}s after start "
            f"(containerd up and images imported after {self.timings['images']:.1f}s)"
        )

    def stop(self) -> None:
        """Called by the ControlPlane after it has stopped its processes (ours among them)."""
        if self._lock is None:
            return
        try:
            teardown()
        finally:
            if self._janitor is not None and self._janitor.stdin is not None:
                with contextlib.suppress(OSError):
                    self._janitor.stdin.write(b"done\n")
                    self._janitor.stdin.close()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._janitor.wait(timeout=5)
            os.close(self._lock)
            self._lock = None

    # ---- steps ----------------------------------------------------------------------------
    def _start_janitor(self) -> None:
        """A process that outlives us: if we die without stop(), it tears the node down."""
        self._janitor = subprocess.Popen(
            [sys.executable, "-m", "testenv.realnode", "janitor"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parent.parent,
            start_new_session=True,
        )

    def _network(self) -> None:
        _sh("ip", "link", "add", BRIDGE, "type", "bridge")
        _sh("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
        _sh("ip", "link", "set", BRIDGE, "up")
        # The host reaches Services through the bridge, and kwok's fake pod IPs nowhere.
        _sh("ip", "route", "add", SERVICE_CIDR, "dev", BRIDGE)
        _sh("ip", "route", "add", "blackhole", KWOK_CIDR)
        _sh("iptables", "-w", "-N", FORWARD_CHAIN)
        _sh("iptables", "-w", "-A", FORWARD_CHAIN, "-s", POD_CIDR, "!", "-o", BRIDGE, "-j", "DROP")
        _sh("iptables", "-w", "-I", "FORWARD", "1", "-j", FORWARD_CHAIN)
        # Service traffic between pods on one bridge must pass iptables (kube-proxy's DNAT),
        # and the host forwards it back onto the bridge.
        write_sysctl("net.bridge.bridge-nf-call-iptables", "1")
        write_sysctl("net.ipv4.ip_forward", "1")

    def _containerd(self) -> None:
        w = self.cp.workdir
        assert w is not None
        cni_conf = STATE / "cni" / "net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-celeryop.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "celeryop",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": False,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "dataDir": str(STATE / "cni" / "ipam"),
                                "ranges": [
                                    [
                                        {
                                            "subnet": POD_CIDR,
                                            "rangeStart": "10.88.0.10",
                                            "gateway": GATEWAY,
                                        }
                                    ]
                                ],
                                "routes": [{"dst": SERVICE_CIDR, "gw": GATEWAY}],
                            },
                        }
                    ],
                },
                indent=1,
            )
        )
        root = cache_dir() / "node" / "containerd"
        root.mkdir(parents=True, exist_ok=True)
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{root}"
state = "{RUN / "containerd"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{self.containerd_sock}"
[ttrpc]
  address = "{RUN / "containerd.ttrpc.sock"}"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{STATE / "opt"}"
[{cri}]
  sandbox_image = "{self.pause_ref}"
  restrict_oom_score_adj = true
  enable_cdi = false
  max_container_log_line_size = 16384
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
  discard_unpacked_layers = false
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{RUN / "runc"}"
[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{cni_conf}"
  max_conf_num = 1
"""
        cfg = w / "containerd.toml"
        cfg.write_text(config)
        self.cp._spawn("containerd", ["containerd", "--config", str(cfg), "--log-level", "warn"])
        self.cp._wait("containerd", lambda: self.ctr("version") != "", time.monotonic() + 30)
        # Containers of a run that crashed: their processes are gone; drop the records.
        for cid in self.ctr("containers", "list", "--quiet").split():
            self.ctr("tasks", "delete", "--force", cid, check=False)
            self.ctr("containers", "delete", cid, check=False)

    def _import_images(self) -> None:
        present = set(self.ctr("images", "list", "--quiet").split())
        for ref, tarball in self.images.items():
            if ref in present:
                continue
            t = time.monotonic()
            self.ctr("images", "import", str(tarball))
            _log(f"imported {ref} in {time.monotonic() - t:.1f}s")
        present = set(self.ctr("images", "list", "--quiet").split())
        missing = [r for r in self.images if r not in present]
        if missing:
            raise RealNodeError(f"images not in containerd after import: {', '.join(missing)}")

    def _kubelet(self) -> None:
        from testenv.controlplane import free_port

        w = self.cp.workdir
        assert w is not None
        pkidir = w / "pki"
        kubeconfig = self._client_kubeconfig(
            "kubelet", f"system:node:{NODE_NAME}", ["system:nodes"]
        )
        config: dict[str, Any] = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": GATEWAY,
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pkidir / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.containerd_sock}",
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "failSwapOn": False,
            "maxPods": MAX_PODS,
            "podCIDR": POD_CIDR,
            "registerWithTaints": [TAINT],
            "resolvConf": "/etc/resolv.conf",
            "serializeImagePulls": False,
            # Images are imported, never pulled: never garbage-collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            "nodeStatusUpdateFrequency": "5s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "20s",
            "staticPodPath": "",
            "logging": {"verbosity": 0},
            "shutdownGracePeriod": "0s",
        }
        cfg = w / "kubelet.yaml"
        cfg.write_text(yaml.safe_dump(config))
        self.cp._spawn(
            "kubelet",
            [
                str(self.cp.binaries.kubelet),  # type: ignore[union-attr]
                f"--config={cfg}",
                f"--kubeconfig={kubeconfig}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={GATEWAY}",
                f"--root-dir={STATE / 'kubelet'}",
                f"--cert-dir={STATE / 'kubelet' / 'pki'}",
                f"--node-labels={NODE_LABEL}=true,type=real",
                "--v=0",
            ],
        )

    def _kube_proxy(self) -> None:
        from testenv.controlplane import free_port

        w = self.cp.workdir
        assert w is not None
        kubeconfig = self._client_kubeconfig("kube-proxy", "system:kube-proxy", [])
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "mode": "iptables",
            "hostnameOverride": NODE_NAME,
            "clusterCIDR": POD_CIDR,
            "healthzBindAddress": f"127.0.0.1:{free_port()}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            "nodePortAddresses": [f"{GATEWAY}/32"],
            # Leave the host's conntrack settings alone.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "iptables": {"localhostNodePorts": False, "syncPeriod": "30s", "minSyncPeriod": "0s"},
        }
        cfg = w / "kube-proxy.yaml"
        cfg.write_text(yaml.safe_dump(config))
        self.cp._spawn(
            "kube-proxy",
            [str(self.cp.binaries.kube_proxy), f"--config={cfg}", "--v=0"],  # type: ignore[union-attr]
        )

    def _relay(self) -> None:
        """The apiserver's port on the bridge address: how pods reach the `kubernetes` Service."""
        port = self.cp.api_url.rsplit(":", 1)[1]
        self.cp._spawn(
            "apiserver-relay",
            [
                "socat",
                f"TCP-LISTEN:{port},bind={GATEWAY},fork,reuseaddr",
                f"TCP:127.0.0.1:{port}",
            ],
        )

    def _wait_ready(self, deadline: float) -> None:
        path = '{.status.conditions[?(@.type=="Ready")].status}'
        self.cp._wait(
            f"node {NODE_NAME} Ready (kubelet log {self.cp.workdir}/kubelet.log)",
            lambda: self.cp.kubectl("get", "node", NODE_NAME, "-o", f"jsonpath={path}") == "True",
            deadline,
        )

    def _client_kubeconfig(self, name: str, user: str, groups: list[str]) -> Path:
        w = self.cp.workdir
        assert w is not None
        ca = pki.KeyPair(
            cert_pem=(w / "pki" / "ca.crt").read_bytes(),
            key_pem=(w / "pki" / "ca.key").read_bytes(),
        )
        import datetime as dt

        pair = pki.issue_cert(
            ca, user, dt.timedelta(days=30), organizations=groups, server=False, client=True
        )
        path = w / f"{name}.kubeconfig"
        self.cp._write_kubeconfig(path, ca, pair)
        return path


def janitor() -> int:
    """Waits for its parent's pipe to close; if the parent did not say "done", tears down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    data = sys.stdin.buffer.read()
    if b"done" in data:
        return 0
    # The owner died without stop(): wait for it to release the lock, then clean.
    for _ in range(100):
        if lock_is_free():
            break
        time.sleep(0.1)
    else:
        return 0  # another owner holds it now
    return down()


def main(argv: list[str] | None = None) -> int:
    args = (argv if argv is not None else sys.argv[1:]) or ["down"]
    try:
        if args[0] == "down":
            return down()
        if args[0] == "check":
            check_machine()
            print("this machine can run the real node")
            return 0
        if args[0] == "leftovers":
            if not lock_is_free():
                print("a real node is running (its owner tears it down)")
                return 0
            left = leftovers()
            print("\n".join(left) or "nothing")
            return 1 if left else 0
        if args[0] == "janitor":
            return janitor()
    except RealNodeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("usage: python -m testenv.realnode down|check|leftovers", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
