"""Where testenv keeps what it builds: one cache directory, outside the repository."""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cache_dir() -> Path:
    """$CELERY_OPERATOR_TESTENV_CACHE, else ~/.cache/celery-operator/testenv."""
    env = os.environ.get("CELERY_OPERATOR_TESTENV_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "celery-operator" / "testenv"


def versions() -> dict[str, str]:
    """The pinned versions of testenv/versions.env (KUBERNETES_VERSION=v1.34.4, ...)."""
    out: dict[str, str] = {}
    for line in (HERE / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def promtool() -> Path:
    """testenv's pinned promtool (`testenv/build.sh promtool`); it may not be built yet."""
    return cache_dir() / f"promtool-{versions()['PROMTOOL_VERSION']}" / "bin" / "promtool"


def helm() -> Path:
    """testenv's pinned helm (`testenv/build.sh helm`); it may not be built yet."""
    return cache_dir() / f"helm-{versions()['HELM_VERSION']}" / "bin" / "helm"
