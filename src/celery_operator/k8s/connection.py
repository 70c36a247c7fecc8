"""Where the apiserver is and how the operator proves who it is: the pod's ServiceAccount,
or a kubeconfig. Gives k8s/client.py a urllib3 pool and the Authorization header.

The operator does not import the `kubernetes` package: it speaks JSON and needs none of
its models, and it relied on that client's internals (ApiClient.param_serialize, its
pool) to do so. Without it the operator's process holds 8 MiB less and starts 0.1 s
sooner. What a kubeconfig says beyond the common fields (an `exec` credential plugin, an
`auth-provider`) is still read by that package's loader, imported only then.
"""

from __future__ import annotations

import base64
import os
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
import yaml

# The pod's ServiceAccount (https://kubernetes.io/docs/tasks/run-application/access-api-from-pod/).
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# A token file is read again this often: the kubelet rotates a projected token (client-go
# and the kubernetes package re-read theirs about every minute too).
TOKEN_REREAD_SECONDS = 60.0


class ConfigError(RuntimeError):
    """No usable credentials: what is missing, and where it was looked for."""


@dataclass
class Connection:
    server: str  # https://host:port, no trailing slash
    pool: urllib3.PoolManager
    authorization: Callable[[], str | None]  # the Authorization header's value, if any
    user_agent: str = "celery-operator"

    def headers(self, content_type: str | None = None) -> dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": self.user_agent}
        if content_type:
            h["Content-Type"] = content_type
        if (auth := self.authorization()) is not None:
            h["Authorization"] = auth
        return h


class _TokenFile:
    """A bearer token read from a file, again every TOKEN_REREAD_SECONDS."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._value = ""
        self._read_at = float("-inf")
        self()  # a file that cannot be read fails now, not at the first request

    def __call__(self) -> str:
        with self._lock:
            now = time.monotonic()
            if now - self._read_at >= TOKEN_REREAD_SECONDS:
                self._value = self.path.read_text().strip()
                self._read_at = now
            return f"Bearer {self._value}"


def load(kubeconfig: str | None = None, pool_size: int = 32) -> Connection:
    """In a pod (and no kubeconfig named): its ServiceAccount; else the kubeconfig named,
    or $KUBECONFIG, or ~/.kube/config, at its current context."""
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        return in_cluster(pool_size)
    return from_kubeconfig(kubeconfig, pool_size)


def in_cluster(pool_size: int = 32) -> Connection:
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    token, ca = SERVICE_ACCOUNT / "token", SERVICE_ACCOUNT / "ca.crt"
    if not host or not token.is_file():
        raise ConfigError(
            f"not in a pod with a ServiceAccount token: KUBERNETES_SERVICE_HOST={host!r}, "
            f"{token} {'exists' if token.is_file() else 'does not exist'}"
        )
    # The Service's address from the environment, as client-go does: it needs no cluster DNS.
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    context = tls_context(ca_file=str(ca) if ca.is_file() else None)
    return Connection(server, _pool(context, pool_size), _TokenFile(token))


def from_kubeconfig(path: str | None = None, pool_size: int = 32) -> Connection:
    files = _kubeconfig_files(path)
    current, contexts, clusters, users = _merge(files)
    if not current:
        raise ConfigError(f"no current-context in {os.pathsep.join(map(str, files))}")
    try:
        ctx = contexts[current]
        cluster, user = clusters[ctx["context"]["cluster"]], users[ctx["context"]["user"]]
    except KeyError as e:
        raise ConfigError(f"kubeconfig context {current!r}: {e} is not defined") from None
    c, u = cluster["cluster"], user.get("user") or {}
    if "exec" in u or "auth-provider" in u:
        return _via_kubernetes_package(path, pool_size)
    base_c, base_u = cluster["_dir"], user["_dir"]
    context = tls_context(
        ca_file=_path(c.get("certificate-authority"), base_c),
        ca_data=_b64(c.get("certificate-authority-data")),
        cert_file=_path(u.get("client-certificate"), base_u),
        cert_data=_b64(u.get("client-certificate-data")),
        key_file=_path(u.get("client-key"), base_u),
        key_data=_b64(u.get("client-key-data")),
        insecure=bool(c.get("insecure-skip-tls-verify")),
    )
    auth: Callable[[], str | None]
    if u.get("token"):
        auth = _constant(f"Bearer {u['token']}")
    elif u.get("tokenFile"):
        auth = _TokenFile(Path(_path(u["tokenFile"], base_u) or ""))
    elif u.get("username"):
        pair = f"{u['username']}:{u.get('password', '')}".encode()
        auth = _constant(f"Basic {base64.b64encode(pair).decode()}")
    else:
        auth = _constant(None)
    server = str(c.get("server") or "").rstrip("/")
    if not server:
        raise ConfigError(f"kubeconfig cluster {ctx['context']['cluster']!r} has no server")
    return Connection(server, _pool(context, pool_size), auth)


def tls_context(
    *,
    ca_file: str | None = None,
    ca_data: bytes | None = None,
    cert_file: str | None = None,
    cert_data: bytes | None = None,
    key_file: str | None = None,
    key_data: bytes | None = None,
    insecure: bool = False,
) -> ssl.SSLContext:
    """The TLS context: the cluster's CA (else the system's), the client certificate if
    any. Certificate data is written to a private temporary file only while it loads."""
    context = ssl.create_default_context(
        cafile=ca_file, cadata=None if ca_data is None else ca_data.decode()
    )
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert_file or cert_data:
        with tempfile.TemporaryDirectory(prefix="celery-operator-tls-") as tmp:
            if cert_data is not None:
                cert_file = _private(Path(tmp, "client.crt"), cert_data)
            if key_data is not None:
                key_file = _private(Path(tmp, "client.key"), key_data)
            context.load_cert_chain(str(cert_file), key_file)
    return context


def _pool(context: ssl.SSLContext, pool_size: int) -> urllib3.PoolManager:
    # urllib3 verifies as the context says (its verify_mode), and keeps its default retries,
    # as the kubernetes package left them (a refused connection is tried again, an answer
    # never is).
    return urllib3.PoolManager(num_pools=4, maxsize=pool_size, ssl_context=context)


def _private(path: Path, data: bytes) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return str(path)


def _constant(value: str | None) -> Callable[[], str | None]:
    return lambda: value


def _b64(value: str | None) -> bytes | None:
    return None if not value else base64.b64decode(value)


def _path(value: str | None, base: Path) -> str | None:
    """A kubeconfig's file reference: relative to the kubeconfig file that names it."""
    if not value:
        return None
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


def _kubeconfig_files(path: str | None) -> list[Path]:
    if path:
        return [Path(path)]
    env = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    files = [Path(p).expanduser() for p in env] or [Path.home() / ".kube" / "config"]
    found = [f for f in files if f.is_file()]
    if not found:
        raise ConfigError(
            "no credentials: not in a pod (KUBERNETES_SERVICE_HOST is not set) and no "
            f"kubeconfig at {os.pathsep.join(map(str, files))}"
        )
    return found


def _merge(
    files: list[Path],
) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """kubectl's merge of several kubeconfig files: the first to set a value wins. Every
    cluster and user entry remembers its file's directory (`_dir`, for relative paths)."""
    current = ""
    tables: tuple[dict[str, Any], dict[str, Any], dict[str, Any]] = ({}, {}, {})
    for f in files:
        try:
            doc = yaml.safe_load(f.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read kubeconfig {f}: {e}") from None
        current = current or str(doc.get("current-context") or "")
        for table, section in zip(tables, ("contexts", "clusters", "users"), strict=True):
            for entry in doc.get(section) or []:
                if isinstance(entry, dict) and entry.get("name") not in table:
                    table[entry["name"]] = {**entry, "_dir": f.parent}
    return current, *tables


def _via_kubernetes_package(path: str | None, pool_size: int) -> Connection:
    """A kubeconfig whose user runs an exec plugin or an auth-provider: the kubernetes
    package's loader runs it (and runs it again when the credential expires)."""
    if "kubernetes" in sys.modules and sys.modules["kubernetes"] is None:
        del sys.modules["kubernetes"]  # kept from kopf only (see `hide_kubernetes_package`)
    import kubernetes

    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=path, client_configuration=config)  # type: ignore[no-untyped-call]
    context = tls_context(
        ca_file=config.ssl_ca_cert,
        cert_file=config.cert_file,
        key_file=config.key_file,
        insecure=not config.verify_ssl,
    )

    def authorization() -> str | None:
        value = config.get_api_key_with_prefix("BearerToken")
        if not value:
            return None
        return value if value.startswith("Bearer ") else f"Bearer {value}"

    return Connection(str(config.host).rstrip("/"), _pool(context, pool_size), authorization)


def hide_kubernetes_package() -> None:
    """Makes `import kubernetes` fail in this process (unless already imported): kopf
    imports it when it is installed, only to recognise its model objects, which the
    operator never passes. None in sys.modules is Python's documented way to say a module
    is absent."""
    sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]
