"""The `celery-operator` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _manifests(args: argparse.Namespace) -> int:
    from celery_operator.manifests.generate import write_all

    changed = write_all(Path(args.root))
    for rel in changed:
        print(f"wrote {rel}")
    if not changed:
        print("manifests up to date")
    return 0


def _run(args: argparse.Namespace) -> int:
    import logging

    from celery_operator.controllers.leader import ElectionConfig
    from celery_operator.controllers.operator import OperatorConfig, run

    logging.getLogger("celery_operator").setLevel(getattr(logging, args.log_level))
    election = None
    if args.leader_elect:
        namespace = args.leader_election_namespace or _own_namespace()
        if not namespace:
            print(
                "celery-operator run: leader election needs the Lease's namespace: pass "
                "--leader-election-namespace (or set POD_NAMESPACE), or --no-leader-elect "
                "for a single replica",
                file=sys.stderr,
            )
            return 2
        try:
            election = ElectionConfig(
                namespace=namespace,
                name=args.leader_election_id,
                identity=_identity(),
                lease_duration=args.lease_duration,
                renew_deadline=args.renew_deadline,
                retry_period=args.retry_period,
            )
        except ValueError as e:
            print(f"celery-operator run: {e}", file=sys.stderr)
            return 2
    run(
        OperatorConfig(
            namespaces=args.namespace or [],
            workers=args.workers,
            resync_seconds=args.resync_seconds,
            liveness_port=args.liveness_port,
            metrics_port=args.metrics_port,
            bind_address=args.bind_address,
            election=election,
            celery_metrics_interval=args.celery_metrics_interval,
            secret_poll_seconds=args.secret_poll_seconds,
        )
    )
    return 0


SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _own_namespace() -> str:
    import os

    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return SA_NAMESPACE.read_text().strip()
    except OSError:
        return ""


def _identity() -> str:
    """Unique per process, readable in the Lease: the pod's name and a random suffix (a
    restarted container is a new candidate, as in client-go)."""
    import os
    import socket
    import uuid

    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def _webhook(args: argparse.Namespace) -> int:
    import datetime as dt
    import logging
    import threading
    import time
    from pathlib import Path

    from celery_operator.k8s import client
    from celery_operator.webhooks.lookup import ApiLookup
    from celery_operator.webhooks.server import serve

    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    client.configure()
    if args.tls_cert_file and args.tls_key_file:
        # Certificates from files (dev certs, or a Secret mounted by cert-manager).
        serve(
            args.host,
            args.port,
            Path(args.tls_cert_file),
            Path(args.tls_key_file),
            lookup=ApiLookup(args.discovery_ttl_seconds),
        )
        return 0
    from celery_operator.certs.manager import CertManager
    from celery_operator.manifests.webhooks import NAME, webhook_dns_names

    manager = CertManager(
        namespace=args.namespace,
        secret_name=args.ca_secret,
        dns_names=webhook_dns_names(args.namespace),
        ip_sans=["127.0.0.1"],
        ca_validity=dt.timedelta(seconds=args.ca_validity_seconds),
        cert_validity=dt.timedelta(seconds=args.cert_validity_seconds),
        webhook_configurations=[
            ("MutatingWebhookConfiguration", args.webhook_configuration or NAME),
            ("ValidatingWebhookConfiguration", args.webhook_configuration or NAME),
        ],
        cert_dir=Path(args.cert_dir),
    )
    # The first round must succeed before serving; the API may be briefly unreachable.
    delay = 0.5
    while True:
        try:
            manager.tick()
            break
        except Exception as e:
            logging.getLogger("celery_operator.webhook").warning(
                "certificates not ready (%s); retrying in %.1fs", e, delay
            )
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
    cert, key = manager.cert_path, manager.key_path

    def rotate(on_change: object, stop: threading.Event) -> None:
        manager.run(args.rotation_check_seconds, on_change, stop)  # type: ignore[arg-type]

    serve(
        args.host, args.port, cert, key, rotate=rotate, lookup=ApiLookup(args.discovery_ttl_seconds)
    )
    return 0


def _certs_issue(args: argparse.Namespace) -> int:
    from pathlib import Path

    from celery_operator.certs.dev import issue_dev_certs
    from celery_operator.manifests.webhooks import webhook_dns_names

    ca, cert, key = issue_dev_certs(
        Path(args.out), webhook_dns_names(args.namespace), ["127.0.0.1"]
    )
    print(f"wrote {ca}, {cert}, {key}")
    return 0


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="celery-operator", description="A Kubernetes operator for Celery."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("manifests", help="regenerate CRDs and other generated manifests")
    m.add_argument("--root", default=".", help="repository root to write into")
    m.set_defaults(func=_manifests)

    r = sub.add_parser("run", help="run the operator (all three controllers)")
    r.add_argument(
        "--namespace",
        action="append",
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    r.add_argument("--workers", type=int, default=8, help="concurrent reconciles")
    r.add_argument("--resync-seconds", type=float, default=300.0, help="full resync period")
    r.add_argument(
        "--secret-poll-seconds",
        type=_positive,
        default=30.0,
        help="how often each Secret the objects name is read again (the operator may not "
        "watch Secrets); a change of the data their pods read rolls them",
    )
    r.add_argument("--liveness-port", type=int, default=8080, help="serves /healthz")
    r.add_argument("--metrics-port", type=int, default=9090, help="serves Prometheus /metrics")
    r.add_argument("--bind-address", default="0.0.0.0", help="address of both endpoints")
    r.add_argument(
        "--celery-metrics-interval",
        type=float,
        default=30.0,
        help="seconds between reads of every pool's queue lengths for /metrics, and every "
        "pool's workers listened to; 0: only the pools the built-in scaler scales (default 30)",
    )
    r.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    e = r.add_argument_group("leader election (several replicas; one reconciles)")
    e.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="hold a coordination.k8s.io Lease before reconciling (default: on)",
    )
    e.add_argument(
        "--leader-election-namespace",
        default="",
        help="the Lease's namespace; default: $POD_NAMESPACE, else the pod's own namespace",
    )
    e.add_argument("--leader-election-id", default="celery-operator", help="the Lease's name")
    e.add_argument("--lease-duration", type=float, default=15.0, help="seconds")
    e.add_argument("--renew-deadline", type=float, default=10.0, help="seconds")
    e.add_argument("--retry-period", type=float, default=2.0, help="seconds")
    r.set_defaults(func=_run)

    w = sub.add_parser("webhook", help="serve the admission webhooks over TLS")
    w.add_argument("--host", default="0.0.0.0")
    w.add_argument("--port", type=int, default=9443)
    w.add_argument(
        "--namespace", default="celery-operator-system", help="where the CA Secret lives"
    )
    w.add_argument("--ca-secret", default="celery-operator-webhook-ca")
    w.add_argument(
        "--webhook-configuration",
        default="",
        help="name of the webhook configurations to inject the CA into",
    )
    w.add_argument("--cert-dir", default="/tmp/celery-operator-webhook-certs")
    w.add_argument(
        "--tls-cert-file", default="", help="serve these files instead of self-managed certificates"
    )
    w.add_argument("--tls-key-file", default="")
    w.add_argument("--ca-validity-seconds", type=int, default=365 * 86400)
    w.add_argument("--cert-validity-seconds", type=int, default=30 * 86400)
    w.add_argument("--rotation-check-seconds", type=float, default=60.0)
    w.add_argument(
        "--discovery-ttl-seconds",
        type=float,
        default=60.0,
        help="how long KEDA's presence is cached",
    )
    w.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    w.set_defaults(func=_webhook)

    c = sub.add_parser("certs", help="certificates for local development")
    csub = c.add_subparsers(dest="certs_command", required=True)
    ci = csub.add_parser("issue", help="write a dev CA and serving certificate (certs/dev/)")
    ci.add_argument("--out", default="certs/dev")
    ci.add_argument("--namespace", default="celery-operator-system")
    ci.set_defaults(func=_certs_issue)
    return parser


def main(argv: list[str] | None = None) -> int:
    from celery_operator.k8s.connection import hide_kubernetes_package

    # No command uses the kubernetes package; kopf would import it (8 MiB more memory, a
    # tenth of a second more to start) only because it is installed.
    hide_kubernetes_package()
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
