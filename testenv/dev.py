"""The local development environment: control plane + CRDs + operator (+ webhook).

    python -m testenv.dev up      # make dev-up
    python -m testenv.dev down    # make dev-down
    python -m testenv.dev demo    # make demo: up, apply the examples, wait, show them

The operator runs in the background under its own ServiceAccount (a token bound to the
RBAC that ships), logging to testenv/.run/operator.log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from testenv import controlplane as cp

ROOT = cp.HERE.parent
RUN = cp.RUN_DIR
KUBECONFIG = RUN / "kubeconfig"
OPERATOR_PID = RUN / "operator.pid"
OPERATOR_LOG = RUN / "operator.log"
NAMESPACE = "celery-operator-system"
LIVENESS_PORT = int(os.environ.get("CELERY_OPERATOR_DEV_LIVENESS_PORT", "18080"))
METRICS_PORT = int(os.environ.get("CELERY_OPERATOR_DEV_METRICS_PORT", "19090"))


def kubectl(*args: str, input: str | None = None, check: bool = True) -> str:
    b = cp.find_binaries()
    out = subprocess.run(
        [str(b.kubectl), f"--kubeconfig={KUBECONFIG}", *args],
        input=input,
        capture_output=True,
        text=True,
        check=False,
    )
    if check and out.returncode != 0:
        raise cp.TestenvError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def install_crds() -> None:
    files = sorted(ROOT.glob("crds/*/*.celeryproject.org.yaml"))
    kubectl(
        "apply", "--server-side", "--force-conflicts", *[a for f in files for a in ("-f", str(f))]
    )
    for f in files:
        kubectl("wait", "--for=condition=Established", f"crd/{f.stem}", "--timeout=60s")


def service_account_kubeconfig(namespace: str, name: str, path: Path) -> None:
    token = kubectl("create", "token", name, "-n", namespace, "--duration=48h").strip()
    admin = yaml.safe_load(KUBECONFIG.read_text())
    cluster = admin["clusters"][0]["cluster"]
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testenv", "cluster": cluster}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": "testenv", "user": name}}],
        "current-context": name,
    }
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)


def _alive(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


WEBHOOK_PID = RUN / "webhook.pid"
WEBHOOK_LOG = RUN / "webhook.log"
WEBHOOK_PORT = int(os.environ.get("CELERY_OPERATOR_DEV_WEBHOOK_PORT", "9443"))


def _healthy(url: str) -> bool:
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # a liveness check, not a trust decision
    with (
        contextlib.suppress(OSError),
        urllib.request.urlopen(url, timeout=2, context=ctx) as r,
    ):
        return bool(r.status == 200)
    return False


def start_component(
    name: str,
    service_account: str,
    rbac: list[dict[str, object]],
    args: list[str],
    pidfile: Path,
    logfile: Path,
    health: str,
) -> None:
    """Runs `celery-operator <args>` in the background under its own ServiceAccount."""
    if _alive(pidfile):
        print(f"{name} already running")
        return
    kubectl("create", "namespace", NAMESPACE, check=False)
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rbac))
    kubeconfig = RUN / f"{name}.kubeconfig"
    service_account_kubeconfig(NAMESPACE, service_account, kubeconfig)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    with logfile.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery_operator.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
    pidfile.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise cp.TestenvError(f"the {name} exited; see {logfile}")
        if _healthy(health):
            print(f"{name} running (log: {logfile.relative_to(ROOT)})")
            return
        time.sleep(0.3)
    raise cp.TestenvError(f"the {name} did not become healthy; see {logfile}")


def start_operator() -> None:
    from celery_operator.manifests.rbac import operator_rbac

    start_component(
        "operator",
        "celery-operator",
        operator_rbac(NAMESPACE),
        [
            "run",
            "--bind-address=127.0.0.1",
            f"--liveness-port={LIVENESS_PORT}",
            f"--metrics-port={METRICS_PORT}",
            f"--leader-election-namespace={NAMESPACE}",
        ],
        OPERATOR_PID,
        OPERATOR_LOG,
        f"http://127.0.0.1:{LIVENESS_PORT}/healthz",
    )


def start_webhook() -> None:
    """The webhook on 127.0.0.1 with certificates it issues itself; the configurations
    point at it by URL and get their caBundle from it."""
    from celery_operator.manifests.rbac import webhook_rbac
    from celery_operator.manifests.webhooks import build_webhook_configurations

    configs = build_webhook_configurations(NAMESPACE, url_base=f"https://127.0.0.1:{WEBHOOK_PORT}")
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(configs))
    start_component(
        "webhook",
        "celery-operator-webhook",
        webhook_rbac(NAMESPACE),
        [
            "webhook",
            "--host=127.0.0.1",
            f"--port={WEBHOOK_PORT}",
            f"--namespace={NAMESPACE}",
            f"--cert-dir={RUN / 'webhook-certs'}",
        ],
        WEBHOOK_PID,
        WEBHOOK_LOG,
        f"https://127.0.0.1:{WEBHOOK_PORT}/readyz",
    )
    deadline = time.monotonic() + 30
    path = "{.webhooks[*].clientConfig.caBundle}"
    while time.monotonic() < deadline:
        if all(
            kubectl("get", kind, "celery-operator", "-o", f"jsonpath={path}").split()
            for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration")
        ):
            return
        time.sleep(0.3)
    raise cp.TestenvError(f"the webhook did not inject its CA; see {WEBHOOK_LOG}")


def stop(pidfile: Path, what: str) -> None:
    pid = _alive(pidfile)
    if pid is not None:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _alive(pidfile) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.2)
        if _alive(pidfile):
            os.killpg(pid, signal.SIGKILL)
        print(f"{what} stopped")
    pidfile.unlink(missing_ok=True)


def up() -> int:
    if cp.up() != 0:
        return 1
    install_crds()
    print("CRDs installed")
    start_operator()
    start_webhook()
    print(f"export KUBECONFIG={KUBECONFIG}")
    return 0


def down() -> int:
    stop(WEBHOOK_PID, "webhook")
    stop(OPERATOR_PID, "operator")
    stop(REDIS_PID, "redis")
    return cp.down()


EXAMPLES = (
    "crds/celeryapp/examples/00-prerequisites.yaml",
    "crds/celeryapp/examples/shop.yaml",
    "crds/celeryworkerpool/examples",
    "crds/flower/examples",
)


REDIS_PID = RUN / "redis.pid"
REDIS_PORT = int(os.environ.get("CELERY_OPERATOR_DEV_REDIS_PORT", "16379"))
REDIS_PASSWORD = "change-me"


def start_redis() -> str:
    """The demo's broker: a Redis on the real node's bridge (pods reach it there; there is
    no cluster DNS) and on 127.0.0.1 (for you). Returns the URL pods use, without a db."""
    from testenv.realnode import GATEWAY

    if not _alive(REDIS_PID):
        proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(REDIS_PORT),
                "--bind",
                f"127.0.0.1 {GATEWAY}",
                "--requirepass",
                REDIS_PASSWORD,
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=(RUN / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        REDIS_PID.write_text(f"{proc.pid}\n")
    return f"redis://:{REDIS_PASSWORD}@{GATEWAY}:{REDIS_PORT}"


def run_examples_on_the_real_node(redis_url: str) -> None:
    """The examples as written run an image from a registry on kwok; here the shop app
    runs the example app built from examples/app/ on the real node, with the demo Redis."""
    from testenv import images
    from testenv.realnode import NODE_LABEL, TAINT

    for secret, db in (("shop-broker", 0), ("shop-backend", 1)):
        kubectl(
            "patch", "secret", secret, "-n", "shop", "--type=merge",
            "-p", json.dumps({"stringData": {"url": f"{redis_url}/{db}"}}),
        )  # fmt: skip
    placement = {
        "nodeSelector": {NODE_LABEL: "true"},
        "tolerations": [{**TAINT, "operator": "Equal"}],
    }
    spec = {
        "image": images.plan()["example-app"].ref,
        "imagePullPolicy": "Never",
        "podDefaults": {"labels": {"team": "platform"}, **placement},
    }
    kubectl(
        "patch", "celeryapp", "shop", "-n", "shop", "--type=merge", "-p", json.dumps({"spec": spec})
    )


def send_a_task() -> str:
    from celery import Celery

    local = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{REDIS_PORT}"
    app = Celery("shop", broker=f"{local}/0", backend=f"{local}/1")
    try:
        result = app.send_task("shop.add", args=(2, 3))
        value = result.get(timeout=120)
        who = [e for e in _events(local) if e.get("id") == result.id]
        host = who[0]["host"] if who else "?"
        return f"shop.add(2, 3) = {value}, executed by {host}"
    finally:
        app.close()


def _events(url: str) -> list[dict[str, object]]:
    import redis

    with redis.Redis.from_url(f"{url}/1") as r:
        return [json.loads(e) for e in r.lrange("shop:events", 0, -1)]


def demo() -> int:
    if up() != 0:
        return 1
    redis_url = start_redis()
    started = time.monotonic()
    for path in EXAMPLES:
        print(kubectl("apply", "-f", str(ROOT / path)), end="")
    run_examples_on_the_real_node(redis_url)
    kubectl("wait", "--for=condition=Ready", "celeryapp/shop", "-n", "shop", "--timeout=180s")
    kubectl("wait", "--for=condition=Ready", "celeryworkerpool", "--all", "-A", "--timeout=180s")
    kubectl(
        "wait", "--for=condition=Ready", "pod", "-l", "app.kubernetes.io/managed-by=celery-operator",
        "-A", "--timeout=180s",
    )  # fmt: skip
    print(f"\nall Ready {time.monotonic() - started:.1f}s after kubectl apply\n")
    print("$ kubectl get celery -A")
    print(kubectl("get", "celery", "-A"))
    print("$ kubectl get pods -A -l app.kubernetes.io/managed-by=celery-operator -o wide")
    print(
        kubectl(
            "get", "pods", "-A", "-l", "app.kubernetes.io/managed-by=celery-operator", "-o", "wide"
        )
    )
    print(send_a_task())
    print(
        f"\nexport KUBECONFIG={KUBECONFIG}   # then: kubectl get celery -A; make dev-down to stop"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testenv.dev")
    parser.add_argument("command", choices=["up", "down", "demo"])
    args = parser.parse_args(argv)
    try:
        return {"up": up, "down": down, "demo": demo}[args.command]()
    except cp.TestenvError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
