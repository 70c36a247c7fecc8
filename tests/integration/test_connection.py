"""k8s/connection.py against the real apiserver: every way the operator can be given its
credentials (a kubeconfig with data, with files relative to it, with a token file that
rotates, with an exec plugin; a pod's ServiceAccount), and the kubernetes package kept
out of the operator's process."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml

from celery_operator.k8s import connection
from tests.support.cluster import Cluster

pytestmark = pytest.mark.cluster


def get(conn: connection.Connection, path: str) -> tuple[int, dict[str, Any]]:
    r = conn.pool.request("GET", conn.server + path, headers=conn.headers())
    return r.status, json.loads(r.data or b"{}")


def whoami(conn: connection.Connection) -> str:
    """The user the apiserver authenticated (a SelfSubjectReview)."""
    body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    r = conn.pool.request(
        "POST",
        conn.server + "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        body=body,
        headers=conn.headers("application/json"),
    )
    assert r.status == 201, r.data
    return str(json.loads(r.data)["status"]["userInfo"]["username"])


def kubeconfig_of(cluster: Cluster) -> dict[str, Any]:
    return dict(yaml.safe_load(cluster.kubeconfig.read_text()))


def write_kubeconfig(
    path: Path, server: str, cluster: dict[str, Any], user: dict[str, Any]
) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server, **cluster}}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def service_account(cluster: Cluster) -> Iterator[tuple[str, str]]:
    """A ServiceAccount and a token of it (TokenRequest): (username, token)."""
    ns = cluster.create_namespace("conn")
    cluster.kubectl("create", "serviceaccount", "reader", "-n", ns)
    token = cluster.kubectl("create", "token", "reader", "-n", ns, "--duration=1h").strip()
    yield f"system:serviceaccount:{ns}:reader", token
    cluster.run("delete", "namespace", ns, "--wait=false")


def test_a_kubeconfig_with_certificate_data(cluster: Cluster) -> None:
    conn = connection.load(str(cluster.kubeconfig))
    cfg = kubeconfig_of(cluster)
    assert conn.server == cfg["clusters"][0]["cluster"]["server"]
    status, version = get(conn, "/version")
    assert status == 200
    assert version["major"] == "1"
    assert whoami(conn) == "admin"


def test_files_named_relative_to_the_kubeconfig(cluster: Cluster, tmp_path: Path) -> None:
    cfg = kubeconfig_of(cluster)
    c, u = cfg["clusters"][0]["cluster"], cfg["users"][0]["user"]
    (tmp_path / "pki").mkdir()
    for name, data in (
        ("ca.crt", c["certificate-authority-data"]),
        ("admin.crt", u["client-certificate-data"]),
        ("admin.key", u["client-key-data"]),
    ):
        (tmp_path / "pki" / name).write_bytes(base64.b64decode(data))
    (tmp_path / "elsewhere").mkdir()
    path = write_kubeconfig(
        tmp_path / "elsewhere" / "config",
        c["server"],
        {"certificate-authority": "../pki/ca.crt"},
        {"client-certificate": "../pki/admin.crt", "client-key": "../pki/admin.key"},
    )
    status, _ = get(connection.load(str(path)), "/version")
    assert status == 200


def test_tls_is_verified_unless_the_kubeconfig_says_insecure(
    cluster: Cluster, tmp_path: Path
) -> None:
    cfg = kubeconfig_of(cluster)
    c, u = cfg["clusters"][0]["cluster"], cfg["users"][0]["user"]
    user = {k: u[k] for k in ("client-certificate-data", "client-key-data")}
    # No CA named: the system's CAs do not know the cluster's.
    unknown = connection.load(str(write_kubeconfig(tmp_path / "a", c["server"], {}, user)))
    with pytest.raises(urllib3.exceptions.SSLError):
        unknown.pool.request("GET", unknown.server + "/version", retries=False)
    insecure = {"insecure-skip-tls-verify": True}
    conn = connection.load(str(write_kubeconfig(tmp_path / "b", c["server"], insecure, user)))
    with pytest.warns(urllib3.exceptions.InsecureRequestWarning):  # as the user asked
        assert get(conn, "/version")[0] == 200


def test_a_token_file_is_read_again(
    cluster: Cluster,
    service_account: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user, token = service_account
    c = kubeconfig_of(cluster)["clusters"][0]["cluster"]
    token_file = tmp_path / "token"
    token_file.write_text("not-a-token\n")
    path = write_kubeconfig(
        tmp_path / "config",
        c["server"],
        {"certificate-authority-data": c["certificate-authority-data"]},
        {"tokenFile": str(token_file)},
    )
    monkeypatch.setattr(connection, "TOKEN_REREAD_SECONDS", 0.0)
    conn = connection.load(str(path))
    assert get(conn, "/version")[0] == 401
    token_file.write_text(token + "\n")  # the kubelet rotated it
    assert whoami(conn) == user


def test_an_exec_plugin_runs_through_the_kubernetes_package(
    cluster: Cluster, service_account: tuple[str, str], tmp_path: Path
) -> None:
    user, token = service_account
    c = kubeconfig_of(cluster)["clusters"][0]["cluster"]
    plugin = tmp_path / "plugin.py"
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": token},
    }
    plugin.write_text(f"import json\nprint(json.dumps({credential!r}))\n")
    path = write_kubeconfig(
        tmp_path / "config",
        c["server"],
        {"certificate-authority-data": c["certificate-authority-data"]},
        {
            "exec": {
                "apiVersion": "client.authentication.k8s.io/v1",
                "command": sys.executable,
                "args": [str(plugin)],
                "interactiveMode": "Never",
            }
        },
    )
    assert whoami(connection.load(str(path))) == user


def test_a_pods_service_account(
    cluster: Cluster,
    service_account: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As in a pod: KUBERNETES_SERVICE_HOST/PORT and the mounted token and CA (the real
    mount is proved on the real node, where the operator runs in a pod)."""
    user, token = service_account
    c = kubeconfig_of(cluster)["clusters"][0]["cluster"]
    (tmp_path / "token").write_text(token)
    (tmp_path / "ca.crt").write_bytes(base64.b64decode(c["certificate-authority-data"]))
    host, port = c["server"].removeprefix("https://").rsplit(":", 1)
    monkeypatch.setattr(connection, "SERVICE_ACCOUNT", tmp_path)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    conn = connection.load()
    assert conn.server == c["server"]
    assert whoami(conn) == user


def test_no_credentials_say_where_they_were_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    with pytest.raises(connection.ConfigError, match=f"no kubeconfig at {tmp_path}/absent"):
        connection.load()
    monkeypatch.setattr(connection, "SERVICE_ACCOUNT", tmp_path)
    with pytest.raises(connection.ConfigError, match="not in a pod with a ServiceAccount token"):
        connection.in_cluster()


def test_the_operator_process_never_imports_the_kubernetes_package(cluster: Cluster) -> None:
    """kopf would import it (8 MiB) only because it is installed."""
    script = textwrap.dedent(
        """
        import sys
        from celery_operator.k8s.connection import hide_kubernetes_package
        hide_kubernetes_package()
        import kopf
        from celery_operator.controllers import operator
        from celery_operator.k8s import client
        client.configure(sys.argv[1])
        client.get_object("v1", "Namespace", "default", None)
        print(sys.modules.get("kubernetes") is None)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(cluster.kubeconfig)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert out.stdout.strip() == "True", out.stderr
