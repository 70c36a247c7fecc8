"""What every benchmark needs: a real control plane (the project's own, or $KUBECONFIG),
the CRDs, the operator as a subprocess, kubectl, and statistics."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testenv.controlplane import ControlPlane, find_binaries  # noqa: E402
from tests.support.cluster import Cluster  # noqa: E402


class Env(Cluster):
    """The test suites' cluster handle, plus installing the CRDs."""

    def install_crds(self) -> None:
        files = sorted(ROOT.glob("crds/*/*.celeryproject.org.yaml"))
        self.kubectl("apply", "--server-side", *[a for f in files for a in ("-f", str(f))])
        self.wait_established(*(f.stem for f in files))


@contextlib.contextmanager
def environment() -> Iterator[Env]:
    external = os.environ.get("KUBECONFIG")
    if external:
        yield Env(Path(external), find_binaries().kubectl)
        return
    with ControlPlane() as cp:
        assert cp.binaries is not None
        env = Env(
            cp.kubeconfig, cp.binaries.kubectl, keda_crds=cp.binaries.keda_crds, control_plane=cp
        )
        env.install_crds()
        yield env


def wait(check: Callable[[], object], timeout: float, every: float = 0.01) -> float:
    """Polls `check` until truthy; returns the elapsed seconds."""
    start = time.perf_counter()
    while True:
        with contextlib.suppress(Exception):
            if check():
                return time.perf_counter() - start
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(every)


def other_source(src: str | None = None) -> dict[str, str]:
    """`src`, else $BENCH_OPERATOR_SRC: run the operator from another checkout's src/ (a
    before/after comparison on one machine: `git worktree add /tmp/before HEAD~3`)."""
    src = src or os.environ.get("BENCH_OPERATOR_SRC")
    return {"PYTHONPATH": src} if src else {}


class Watcher:
    """Counts the objects of a kind that satisfy `done`, from a LIST and then a WATCH in a
    thread (re-listing when the watch ends or breaks), so that a benchmark waits on events
    instead of LISTing thousands of objects twice a second on the machine it measures."""

    def __init__(
        self, api_version: str, kind: str, done: Callable[[dict[str, Any]], bool], prefix: str
    ) -> None:
        import threading

        self.api_version, self.kind, self.done, self.prefix = api_version, kind, done, prefix
        self.ok: set[tuple[str, str]] = set()
        self.cond = threading.Condition()
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name=f"bench-watch-{kind}", daemon=True)
        self.thread.start()

    def _see(self, obj: dict[str, Any], deleted: bool = False) -> None:
        meta = obj.get("metadata") or {}
        if not meta.get("namespace", "").startswith(self.prefix):
            return
        key = (meta["namespace"], meta["name"])
        with self.cond:
            if not deleted and self.done(obj):
                self.ok.add(key)
            else:
                self.ok.discard(key)
            self.cond.notify_all()

    def _run(self) -> None:
        from celery_operator.k8s import client

        while not self.stopped:
            try:
                items, rv = client.list_with_version(self.api_version, self.kind)
                with self.cond:
                    self.ok.clear()
                for o in items:
                    self._see(o)
                for ev in client.watch_events(self.api_version, self.kind, rv, 60):
                    if self.stopped:
                        return
                    if ev.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                        self._see(ev["object"], ev["type"] == "DELETED")
                    elif ev.get("type") == "ERROR":
                        break  # expired: list again
            except Exception:  # a broken watch: list again
                time.sleep(0.2)

    def wait_for(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.ok) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.ok)}/{n} {self.kind} done within {timeout}s")
                self.cond.wait(min(left, 1.0))

    def stop(self) -> None:
        self.stopped = True


@contextlib.contextmanager
def operator(env: Env, *args: str, src: str | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """The operator as a subprocess with the admin kubeconfig (RBAC is tested elsewhere);
    from the src/ of another checkout when `src` is given."""
    import socket

    def free() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    port, metrics_port = free(), free()
    log = Path(tempfile.mkdtemp(prefix="bench-operator-")) / "operator.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery_operator.cli",
                "run",
                "--bind-address=127.0.0.1",
                f"--liveness-port={port}",
                f"--metrics-port={metrics_port}",
                "--log-level=WARNING",
                "--leader-election-namespace=default",
                *args,
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(env.kubeconfig), **other_source(src)},
        )
    try:

        def healthy() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                return bool(r.status == 200)

        wait(healthy, 60, every=0.2)
        proc.log = log  # type: ignore[attr-defined]
        proc.liveness_port = port  # type: ignore[attr-defined]
        proc.metrics_port = metrics_port  # type: ignore[attr-defined]
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # The log is kept only when something went wrong (a run per trial and variant
        # would otherwise leave a directory behind on the shared machine every time).
        text = log.read_text(errors="replace")
        if proc.returncode in (0, -signal.SIGTERM) and "Traceback" not in text:
            shutil.rmtree(log.parent, ignore_errors=True)
        else:
            print(f"operator exited {proc.returncode}; its log: {log}", file=sys.stderr)


def summary(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    q = statistics.quantiles(s, n=10) if len(s) >= 2 else [s[0]] * 9
    return {
        "n": len(s),
        "median": statistics.median(s),
        "p10": q[0],
        "p90": q[-1],
        "min": s[0],
        "max": s[-1],
    }


def machine() -> str:
    cpus = os.cpu_count()
    mem = ""
    with contextlib.suppress(OSError):
        kb = int(
            next(
                line
                for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")
            ).split()[1]
        )
        mem = f", {kb / 1024 / 1024:.0f} GiB"
    return f"{platform.machine()}, {cpus} cores{mem}, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def save(name: str, data: dict[str, Any]) -> Path:
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(data, indent=1))
    return path


CONTROL_PLANE = ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler", "kwok")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def control_plane_cpu() -> dict[str, float]:
    """CPU seconds so far of the local control plane's processes, by program (empty for a
    cluster elsewhere): where the machine's time goes while the operator works."""
    out: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            name = Path((entry / "cmdline").read_bytes().split(b"\0")[0].decode()).name
            if name in CONTROL_PLANE:
                out[name] = out.get(name, 0.0) + cpu_seconds(int(entry.name))
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


def api_requests(proc: subprocess.Popen[bytes]) -> dict[str, float]:
    """The operator's API requests so far, by "METHOD resource"."""
    import re

    port = proc.metrics_port  # type: ignore[attr-defined]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    pat = r'^celery_operator_api_requests_total\{code="[^"]*",method="([A-Z]+)",resource="([^"]+)"\} ([0-9.e+]+)$'
    for m in re.finditer(pat, text, re.M):
        key = f"{m.group(1)} {m.group(2)}"
        out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def thread_cpu(proc: subprocess.Popen[bytes]) -> dict[str, float]:
    """The operator's CPU seconds by thread group so far (its
    `celery_operator_thread_cpu_seconds_total`; empty for an operator without it)."""
    import re

    port = proc.metrics_port  # type: ignore[attr-defined]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    pat = r'^celery_operator_thread_cpu_seconds_total\{thread="([^"]+)"\} ([0-9.e+]+)$'
    return {m.group(1): float(m.group(2)) for m in re.finditer(pat, text, re.M)}
