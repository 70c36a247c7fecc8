"""Real brokers for tests: a private Redis server and a private RabbitMQ node on 127.0.0.1.

Each server runs as a subprocess of the test process, on free ports, with all of its state
in a temporary directory; the system services of the Debian packages are never used.
Both classes are context managers and can be stopped and started again on the same
ports, so a test can take the broker down and bring it back:

    with RedisServer(password="pw") as redis_server:
        ...  # redis_server.url == "redis://:pw@127.0.0.1:PORT/0"
        redis_server.stop()
        ...  # connections are refused
        redis_server.start()  # same port, same password

Only the classes live here; fixtures are defined where they are used.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self
from urllib.parse import quote

import redis
from kombu.connection import Connection
from redis.backoff import NoBackoff
from redis.retry import Retry

HOST = "127.0.0.1"

REDIS_START_TIMEOUT = 20.0
RABBITMQ_START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0


class BrokerError(RuntimeError):
    """A broker did not start or stop as it should."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"


def _stop_process(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    """Sends `sig` to `proc`, waits for it to exit, kills its process group if it does not.

    `proc` runs in its own session (start_new_session=True), so its process group id is its
    pid. The group is only signalled while `proc` is not yet reaped, so the id is still ours.
    """
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class _Server:
    """Shared lifecycle: temp dir, subprocess, log file, context management."""

    name = "server"

    def __init__(self, start_timeout: float) -> None:
        self.start_timeout = start_timeout
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-test-"))
        self.log_path = self.tmpdir / "output.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- to be provided by subclasses -------------------------------------------------

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _ready(self) -> bool:
        """True when the server answers like a broker; exceptions count as not ready."""
        raise NotImplementedError

    def _stop_signal(self) -> int:
        return signal.SIGTERM

    def _logs(self) -> str:
        return _tail(self.log_path)

    # -- lifecycle --------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Starts the server (again, on the same ports) and waits until it is ready."""
        if self.running:
            return
        self._reap()
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            self._command(),
            cwd=self.tmpdir,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        last_error: BaseException | None = None
        while True:
            code = self._proc.poll()
            if code is not None:
                raise BrokerError(
                    f"{self.name} exited with code {code} while starting "
                    f"(command: {' '.join(self._command())}); log tail:\n{self._logs()}"
                )
            try:
                if self._ready():
                    return
            except Exception as e:
                last_error = e
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"{self.name} did not become ready within {self.start_timeout:.0f}s "
                    f"(last error: {last_error!r}); log tail:\n{self._logs()}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """Stops the server and waits until its process has exited. Idempotent."""
        if self._proc is not None:
            _stop_process(self._proc, self._stop_signal(), STOP_TIMEOUT)
        self._reap()

    def _reap(self) -> None:
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        """Stops the server and removes its temporary directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class RedisServer(_Server):
    """A private `redis-server` on 127.0.0.1, without persistence.

    `url` is `redis://127.0.0.1:PORT/0`, or `redis://:PASSWORD@127.0.0.1:PORT/0` with a
    password. The data is lost on `stop()`.
    """

    name = "redis"

    def __init__(
        self,
        password: str | None = None,
        *,
        port: int | None = None,
        pod_host: str | None = None,
        start_timeout: float = REDIS_START_TIMEOUT,
    ) -> None:
        super().__init__(start_timeout)
        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.password = password
        self.port = port or free_port()
        self.host = HOST
        # Also listen on this address (the real node's bridge gateway), for pods.
        self.pod_host = pod_host

    @property
    def url(self) -> str:
        return self.url_for(self.host)

    @property
    def pod_url(self) -> str:
        """The URL pods on the real node use (needs `pod_host`)."""
        assert self.pod_host is not None, "RedisServer(pod_host=...) listens for pods"
        return self.url_for(self.pod_host)

    def url_for(self, host: str, db: int = 0) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password is not None else ""
        return f"redis://{auth}{host}:{self.port}/{db}"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A `redis.Redis` client for this server (the caller closes it)."""
        return redis.Redis(
            host=self.host,
            port=self.port,
            password=self.password,
            **kwargs,
        )

    def _command(self) -> list[str]:
        cmd = [
            self.binary,
            "--port", str(self.port),
            "--bind", " ".join(filter(None, (self.host, self.pod_host))),
            "--dir", str(self.tmpdir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", "",
            "--unixsocket", "",
        ]  # fmt: skip
        if self.password is not None:
            cmd += ["--requirepass", self.password]
        if self.pod_host is not None:
            # Pods are not loopback clients: without a password Redis would refuse them.
            cmd += ["--protected-mode", "no"]
        return cmd

    def _ready(self) -> bool:
        with redis.Redis(
            host=self.host,
            port=self.port,
            password=self.password,
            socket_connect_timeout=1,
            socket_timeout=1,
            retry=Retry(NoBackoff(), 0),
        ) as r:
            return bool(r.ping())


class RabbitMQServer(_Server):
    """A private RabbitMQ node on 127.0.0.1 (not the system service).

    The node has its own name, AMQP and Erlang distribution ports, mnesia, log dir,
    config file and an empty plugin list, all under a temporary directory, and a user
    `user`/`password` with full rights on `vhost`: `url` is
    `amqp://USER:PASSWORD@127.0.0.1:PORT/VHOST`. Durable queues and persistent messages
    survive `stop()`/`start()` (the node restarts with the same name and data).
    """

    name = "rabbitmq"

    def __init__(
        self,
        user: str = "celery",
        password: str | None = None,
        vhost: str = "celery",
        *,
        pod_host: str | None = None,
        start_timeout: float = RABBITMQ_START_TIMEOUT,
    ) -> None:
        super().__init__(start_timeout)
        self.sbin = self._find_sbin()
        # Also listen on this address (the real node's bridge gateway), for pods.
        self.pod_host = pod_host
        self.user = user
        self.password = password if password is not None else secrets.token_hex(8)
        self.vhost = vhost
        self.host = HOST
        self.port = free_port()
        self.dist_port = free_port()
        while self.dist_port == self.port:
            self.dist_port = free_port()
        self.nodename = f"rabbit-test-{secrets.token_hex(4)}@localhost"
        self.home = self.tmpdir / "home"  # holds the Erlang cookie
        self.home.mkdir()
        self.config_file = self.tmpdir / "rabbitmq.conf"
        self.config_file.write_text(
            "\n".join(
                [
                    f"listeners.tcp.default = {self.host}:{self.port}",
                    *([f"listeners.tcp.pods = {pod_host}:{self.port}"] if pod_host else []),
                    f"default_user = {self.user}",
                    f"default_pass = {self.password}",
                    f"default_vhost = {self.vhost}",
                    "default_permissions.configure = .*",
                    "default_permissions.read = .*",
                    "default_permissions.write = .*",
                    "loopback_users = none",
                    "",
                ]
            )
        )
        (self.tmpdir / "enabled_plugins").write_text("[].\n")
        # Empty, so /etc/rabbitmq/rabbitmq-env.conf does not apply.
        (self.tmpdir / "rabbitmq-env.conf").write_text("")

    @staticmethod
    def _find_sbin() -> Path:
        # /usr/sbin/rabbitmq-server is a wrapper that switches to the `rabbitmq` user and
        # /var/lib/rabbitmq; the real scripts run as whoever calls them.
        for d in (Path("/usr/lib/rabbitmq/bin"), Path("/usr/lib/rabbitmq/sbin")):
            if (d / "rabbitmq-server").exists():
                return d
        found = shutil.which("rabbitmq-server")
        if found is None:
            raise BrokerError("rabbitmq-server is not installed (testenv/install-brokers.sh)")
        return Path(found).parent

    @property
    def url(self) -> str:
        return self.url_for(self.host)

    def url_for(self, host: str) -> str:
        return (
            f"amqp://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{host}:{self.port}/{quote(self.vhost, safe='')}"
        )

    def _command(self) -> list[str]:
        return [str(self.sbin / "rabbitmq-server")]

    def _env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RABBITMQ_", "ERL_", "ERLANG_"))
        }
        env.update(
            HOME=str(self.home),
            # epmd is started by the node if none is running; keep it on loopback.
            ERL_EPMD_ADDRESS=self.host,
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS=self.host,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.tmpdir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.tmpdir / "log"),
            RABBITMQ_CONFIG_FILE=str(self.config_file),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.tmpdir / "enabled_plugins"),
            RABBITMQ_CONF_ENV_FILE=str(self.tmpdir / "rabbitmq-env.conf"),
            RABBITMQ_PID_FILE=str(self.tmpdir / "rabbitmq.pid"),
            # Distribution listens on 127.0.0.1 only, not on all interfaces.
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def _ready(self) -> bool:
        with Connection(self.url, connect_timeout=2) as conn:  # type: ignore[no-untyped-call]
            conn.ensure_connection(max_retries=0)
            return bool(conn.connected)

    def _logs(self) -> str:
        node_log = self.tmpdir / "log" / f"{self.nodename}.log"
        return f"{_tail(self.log_path)}\n--- {node_log.name}:\n{_tail(node_log)}"

    def rabbitmqctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Runs `rabbitmqctl -n NODENAME ARGS` against this node (as the node's own user)."""
        return subprocess.run(
            [str(self.sbin / "rabbitmqctl"), "-n", self.nodename, *args],
            env=self._env(),
            cwd=self.tmpdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
