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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="celery-operator", description="A Kubernetes operator for Celery."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("manifests", help="regenerate CRDs and other generated manifests")
    m.add_argument("--root", default=".", help="repository root to write into")
    m.set_defaults(func=_manifests)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
