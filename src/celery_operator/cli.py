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

    from celery_operator.controllers.operator import OperatorConfig, run

    logging.getLogger("celery_operator").setLevel(getattr(logging, args.log_level))
    run(
        OperatorConfig(
            namespaces=args.namespace or [],
            workers=args.workers,
            resync_seconds=args.resync_seconds,
            liveness_port=args.liveness_port,
            metrics_port=args.metrics_port,
            bind_address=args.bind_address,
        )
    )
    return 0


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
    r.add_argument("--liveness-port", type=int, default=8080, help="serves /healthz")
    r.add_argument("--metrics-port", type=int, default=9090, help="serves Prometheus /metrics")
    r.add_argument("--bind-address", default="0.0.0.0", help="address of both endpoints")
    r.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    r.set_defaults(func=_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
