"""An earlier release beside HEAD, for upgrade tests: its source in a git worktree, its
operator as a local process under a Helm release's ServiceAccount, the release itself, and
a watch that sees every write to a kind's objects while the upgrade runs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.cluster import Cluster, Result, run_cli, wait_for
from tests.support.operator import OperatorProcess, _free_port, service_account_kubeconfig

ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
    )


def resolves(ref: str) -> bool:
    return _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").returncode == 0


@contextlib.contextmanager
def worktree(ref: str) -> Iterator[Path]:
    """A checkout of `ref` beside the repository, removed afterwards (also on failure)."""
    if not resolves(ref):
        raise AssertionError(f"{ref} is not in this repository (a shallow clone? git fetch)")
    parent = Path(tempfile.mkdtemp(prefix="celery-operator-worktree-"))
    path = parent / ref
    added = _git("worktree", "add", "--detach", str(path), ref)
    try:
        assert added.returncode == 0, f"git worktree add {ref}: {added.stderr}"
        yield path
    finally:
        _git("worktree", "remove", "--force", str(path))
        _git("worktree", "prune")
        shutil.rmtree(parent, ignore_errors=True)


class ReleaseOperator(OperatorProcess):
    """`celery-operator run` as a Helm release runs it, but here: authenticated as the
    release's ServiceAccount (so under the RBAC that release's chart installed), from
    `src` (another version's source, ahead of the installed package on PYTHONPATH) or
    from HEAD. `lease`: the Lease it elects a leader on, in the release namespace; None
    for a version without leader election (v0.1.0's CLI has no such flags)."""

    def __init__(
        self,
        cluster: Cluster,
        workdir: Path,
        namespace: str,
        service_account: str,
        *extra_args: str,
        src: Path | None = None,
        lease: str | None = None,
    ) -> None:
        # Not OperatorProcess.__init__: that applies HEAD's RBAC for the session's account.
        self.liveness_port = _free_port()
        self.metrics_port = _free_port()
        self.cluster = cluster
        self.workdir = workdir
        self.extra_args = list(extra_args)
        self.proc = None
        self.log = workdir / f"{self.command}.log"
        self.namespace = namespace
        self.src = src
        self.lease = lease
        self.kubeconfig = service_account_kubeconfig(
            cluster, namespace, service_account, workdir / "run.kubeconfig"
        )

    def args(self) -> list[str]:
        args = [
            "--bind-address=127.0.0.1",
            f"--liveness-port={self.liveness_port}",
            f"--metrics-port={self.metrics_port}",
            "--resync-seconds=60",
            "--log-level=DEBUG",
        ]
        if self.lease is not None:
            args += [
                f"--leader-election-namespace={self.namespace}",
                f"--leader-election-id={self.lease}",
            ]
        return args

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.src is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(self.src), env.get("PYTHONPATH", "")) if p
            )
        return env

    @property  # type: ignore[override]
    def cwd(self) -> Path:
        return self.workdir  # not the repository: `-m` puts the cwd first on sys.path


@dataclass
class Release:
    """A Helm release of the chart, installed and upgraded with `helm` as a user does."""

    cluster: Cluster
    name: str
    namespace: str

    @property
    def fullname(self) -> str:
        """The chart's fullname (and its operator ServiceAccount's name)."""
        assert "celery-operator" not in self.name
        return f"{self.name}-celery-operator"[:40].rstrip("-")

    def run(self, *args: str, timeout: float = 240) -> Result:
        assert self.cluster.helm_bin is not None, "helm not found: run `make testenv`"
        return run_cli(
            self.cluster.helm_bin,
            self.cluster.kubeconfig,
            *args,
            "-n",
            self.namespace,
            timeout=timeout,
        )

    def helm(self, *args: str, timeout: float = 240) -> str:
        r = self.run(*args, timeout=timeout)
        assert r.code == 0, f"helm {' '.join(args)} exited {r.code}: {r.stderr}"
        return r.stdout

    def installed(self) -> bool:
        return self.run("status", self.name).code == 0

    def install(self, chart: Path, *values: str) -> str:
        return self.helm("install", self.name, str(chart), *values, "--wait", "--timeout", "120s")

    def upgrade(self, chart: Path, *values: str) -> str:
        return self.helm("upgrade", self.name, str(chart), *values, "--wait", "--timeout", "120s")

    def history(self) -> list[dict[str, Any]]:
        return list(json.loads(self.helm("history", self.name, "-o", "json")))

    def uninstall(self) -> None:
        self.helm("uninstall", self.name, "--wait", "--timeout", "120s")


@dataclass(frozen=True)
class Seen:
    """One state of one object, as the watch delivered it."""

    at: float  # time.monotonic()
    name: str
    resource_version: str
    status: str  # the condition's status; "" when it has none
    reason: str
    message: str


@dataclass
class ConditionWatch:
    """Every state the apiserver serves of the objects at `path` (a collection, e.g.
    /apis/celeryproject.org/v1alpha1/namespaces/x/celeryapps), with their `condition`.

    A list, then a watch from its resourceVersion, resumed from the last one seen when it
    ends. A CRD update ends every watch of its kind, and the new storage's watch cache
    starts after the last version seen (410 Gone): then it lists again (`relists`), and a
    write in between shows only in the state listed. Whether a condition transitioned in
    such a gap, its lastTransitionTime tells."""

    cluster: Cluster
    path: str
    condition: str = "Ready"
    seen: list[Seen] = field(default_factory=list)
    watches: int = 0  # watch requests made (each end of one starts the next)
    relists: int = 0
    failures: list[str] = field(default_factory=list)
    alive: bool = False  # set by stop(): the watch ran until then
    _stop: threading.Event = field(default_factory=threading.Event)
    _listed: threading.Event = field(default_factory=threading.Event)
    _proc: subprocess.Popen[str] | None = None
    _thread: threading.Thread | None = None

    def __enter__(self) -> ConditionWatch:
        self._thread = threading.Thread(target=self._run, name="condition-watch", daemon=True)
        self._thread.start()
        wait_for(f"the first list of {self.path}", self._listed.is_set, timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stops watching. `alive` says whether it was still watching until then."""
        self.alive = self._thread is not None and self._thread.is_alive()
        self._stop.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def not_true(self) -> list[Seen]:
        return [s for s in self.seen if s.status != "True"]

    def _record(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        found = next(
            (
                c
                for c in (obj.get("status") or {}).get("conditions") or []
                if c.get("type") == self.condition
            ),
            {},
        )
        self.seen.append(
            Seen(
                time.monotonic(),
                meta["name"],
                meta["resourceVersion"],
                str(found.get("status", "")),
                str(found.get("reason", "")),
                str(found.get("message", "")),
            )
        )

    def _run(self) -> None:
        version = ""
        while not self._stop.is_set():
            if not version:
                r = self.cluster.run("get", "--raw", self.path)
                if r.code != 0:
                    self.failures.append(f"list: {r.stderr.strip()}")
                    self._stop.wait(0.2)  # a retry's backoff (e.g. a CRD being replaced)
                    continue
                listed = json.loads(r.stdout)
                for item in listed["items"]:
                    self._record(item)
                version = listed["metadata"]["resourceVersion"]
                self.relists += 1
                self._listed.set()
            query = f"watch=1&allowWatchBookmarks=true&resourceVersion={version}"
            self._proc = subprocess.Popen(
                [
                    str(self.cluster.kubectl_bin),
                    f"--kubeconfig={self.cluster.kubeconfig}",
                    "get",
                    "--raw",
                    f"{self.path}?{query}",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            self.watches += 1
            assert self._proc.stdout is not None
            for line in self._proc.stdout:
                if self._stop.is_set():
                    break
                event = json.loads(line)
                obj = event["object"]
                if event["type"] == "ERROR":
                    self.failures.append(f"watch: {obj.get('message')}")
                    if obj.get("code") == 410:
                        version = ""
                    break
                version = obj["metadata"]["resourceVersion"]
                if event["type"] in ("ADDED", "MODIFIED"):
                    self._record(obj)
            ended = self._proc.poll() is not None
            if not ended:
                self._proc.kill()
            _, err = self._proc.communicate()
            if ended and self._proc.returncode != 0 and not self._stop.is_set():
                self.failures.append(f"watch exited {self._proc.returncode}: {err.strip()}")
                self._stop.wait(0.2)
