"""Run a rendered container as a local process, exactly as rendered.

The command, args and env come from the builders unchanged, with only what a local process
cannot take from a pod put in its place, each explicitly:

- env: literal `value`s as they are; `secretKeyRef`s from the Secrets the test supplies;
  anything else (other `valueFrom` kinds, `envFrom`) fails loudly rather than being dropped;
- the container's /tmp (an emptyDir volume) is a private directory of the test: env values
  and `--option=PATH` args under a mount path point into that directory (HOME=/tmp, beat's
  schedule file);
- PATH (.venv/bin first, for `celery` and `python`), PYTHONPATH (the repository root, for
  `tests.fidelity.sampleapp`) and the working directory replace what the image provides;
- a test may replace whole args it names (`replace_args`), for example Flower's
  `--address=0.0.0.0` with 127.0.0.1; replacing an arg that is not rendered fails.

Every process runs in its own process group, killed (with all its children) at the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import redis

from celery_operator.api.celeryworkerpool import CeleryWorkerPool
from celery_operator.api.flower import Flower
from celery_operator.render.celeryworkerpool import worker_node_name
from tests.fidelity import sampleapp
from tests.support import objects as o

ROOT = Path(__file__).resolve().parents[2]
# The repository's virtualenv (for `celery` and `python`), else the one running the tests.
VENV_BIN = ROOT / ".venv" / "bin"
if not (VENV_BIN / "celery").exists():
    VENV_BIN = Path(sys.executable).parent

Secrets = Mapping[tuple[str, str], str]
T = TypeVar("T")


class UnresolvableError(AssertionError):
    """The rendered container needs something a local process cannot be given."""


def container_of(deployment: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    if name is None:
        assert len(containers) == 1, [c["name"] for c in containers]
        return containers[0]
    return next(c for c in containers if c["name"] == name)


def resolve_env(env: list[dict[str, Any]], secrets: Secrets) -> dict[str, str]:
    """The values of a rendered EnvVar list; secretKeyRefs are looked up in `secrets`."""
    out: dict[str, str] = {}
    for var in env:
        name = var["name"]
        if "valueFrom" in var:
            source = var["valueFrom"]
            ref = source.get("secretKeyRef")
            if ref is None or len(source) != 1:
                raise UnresolvableError(f"env {name}: cannot resolve valueFrom {source!r} locally")
            try:
                out[name] = secrets[(ref["name"], ref["key"])]
            except KeyError:
                raise UnresolvableError(
                    f"env {name}: the test supplies no Secret {ref['name']!r} key {ref['key']!r}"
                ) from None
        elif "value" in var:
            out[name] = str(var["value"])
        else:
            raise UnresolvableError(f"env {name}: neither value nor valueFrom: {var!r}")
    return out


def _remap_path(value: str, mounts: Mapping[str, Path]) -> str:
    for mount, local in mounts.items():
        if value == mount:
            return str(local)
        if value.startswith(mount.rstrip("/") + "/"):
            return str(local / value[len(mount.rstrip("/")) + 1 :])
    return value


def _remap_arg(arg: str, mounts: Mapping[str, Path]) -> str:
    if arg.startswith("-") and "=" in arg:
        opt, value = arg.split("=", 1)
        return f"{opt}={_remap_path(value, mounts)}"
    return _remap_path(arg, mounts)


class LocalContainer:
    """The process view of one rendered container: argv, env and working directory."""

    def __init__(
        self,
        container: dict[str, Any],
        secrets: Secrets,
        workdir: Path,
        *,
        replace_args: Mapping[str, str] | None = None,
    ) -> None:
        if container.get("envFrom"):
            raise UnresolvableError(f"envFrom cannot be resolved locally: {container['envFrom']!r}")
        self.container = container
        self.workdir = workdir
        self.cwd = workdir / "cwd"
        self.cwd.mkdir(parents=True, exist_ok=True)
        # Each volume mount becomes a private directory (only emptyDir-like /tmp is rendered).
        self.mounts: dict[str, Path] = {}
        for m in container.get("volumeMounts", []):
            local = workdir / "mounts" / m["name"]
            local.mkdir(parents=True, exist_ok=True)
            self.mounts[m["mountPath"]] = local
        args = list(container.get("args", []))
        for old, new in (replace_args or {}).items():
            if old not in args:
                raise AssertionError(f"{old!r} is not among the rendered args {args!r}")
            args = [new if a == old else a for a in args]
        self.argv = [*container["command"], *(_remap_arg(a, self.mounts) for a in args)]
        rendered = resolve_env(container.get("env", []), secrets)
        env = {k: _remap_path(v, self.mounts) for k, v in rendered.items()}
        for local_only in ("PATH", "PYTHONPATH"):
            if local_only in env:
                raise UnresolvableError(
                    f"the rendered env sets {local_only}, which the test replaces"
                )
        env["PATH"] = os.pathsep.join([str(VENV_BIN), "/usr/local/bin", "/usr/bin", "/bin"])
        env["PYTHONPATH"] = str(ROOT)
        self.env = env

    def probe_command(self, probe: str = "livenessProbe") -> list[str]:
        command: list[str] = self.container[probe]["exec"]["command"]
        return list(command)


class LocalProcess:
    """A running rendered container. Output goes to a log file; see `log()`."""

    def __init__(self, local: LocalContainer, log_path: Path) -> None:
        self.local = local
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            local.argv,
            cwd=local.cwd,
            env=local.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self._killed = False
        self.started = time.monotonic()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Sends `sig` to the main process only, as the kubelet does to PID 1."""
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int | None:
        """Polls until the main process exits; its exit code, or None at the deadline."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                return code
            time.sleep(0.05)
        return self.proc.poll()

    def kill(self) -> None:
        """SIGKILLs the whole process group (pool children included) and reaps the leader.

        Also after the leader has exited by itself: children it left behind keep the group
        (and so its id, which the kernel does not reuse while the group exists)."""
        if self._killed:
            return
        self._killed = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._log.close()

    def exec(self, command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """Runs `command` as a kubelet exec probe would: in the container's env and cwd."""
        return subprocess.run(
            command,
            cwd=self.local.cwd,
            env=self.local.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            start_new_session=True,
        )

    def describe(self) -> str:
        code = self.proc.poll()
        state = "running" if code is None else f"exited with {code}"
        return f"{' '.join(self.local.argv)} ({state}); log:\n{self.log()[-6000:]}"


RunContainer = Callable[..., LocalProcess]


def wait_for(
    condition: Callable[[], T],
    timeout: float,
    what: str,
    *,
    alive: tuple[LocalProcess, ...] = (),
    interval: float = 0.05,
) -> T:
    """Polls `condition` until it returns something truthy (returned), or fails at the
    deadline. Fails at once when one of the `alive` processes has exited."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        for p in alive:
            if not p.running():
                raise AssertionError(f"while waiting for {what}: {p.describe()}")
        if time.monotonic() > deadline:
            logs = "\n".join(p.describe() for p in alive)
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")
        time.sleep(interval)


# -- the sample CRs ---------------------------------------------------------------------

BROKER_SECRET = ("shop-broker", "url")
BACKEND_SECRET = ("shop-backend", "url")
FLOWER_AUTH_SECRET = ("shop-flower-auth", "auth")
FLOWER_CREDENTIALS = ("admin", "s3cret:with-colon")


def secret_key_ref(secret: tuple[str, str]) -> dict[str, str]:
    name, key = secret
    return {"name": name, "key": key}


def make_pool(**spec: Any) -> CeleryWorkerPool:
    """The example pool `default` of app `shop`, with `spec` merged in. Small and quick:
    two prefork children and a short liveness timeout, unless `spec` says otherwise."""
    base = {"concurrency": 2, "probes": {"liveness": {"timeoutSeconds": 2}}}
    return o.pool(spec=o.deep_merge(base, spec))


def local_node(pool: CeleryWorkerPool) -> str:
    """The worker's node name here: Celery expands %h to this host's name."""
    return worker_node_name(pool).replace("%h", socket.gethostname())


def wait_worker_ready(worker: LocalProcess, node: str, timeout: float = 30) -> None:
    wait_for(lambda: f"{node} ready." in worker.log(), timeout, f"{node} ready", alive=(worker,))


def make_flower(port: int, **spec: Any) -> Flower:
    return o.flower(spec={"port": port, **spec})


def records(client: redis.Redis, key: str) -> list[str]:
    """What the sample tasks recorded under `key`."""
    return list(client.lrange(sampleapp.RECORD_PREFIX + key, 0, -1))
