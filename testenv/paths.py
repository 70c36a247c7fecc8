"""Where testenv keeps what it builds: one cache directory, outside the repository."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$CELERY_OPERATOR_TESTENV_CACHE, else ~/.cache/celery-operator/testenv."""
    env = os.environ.get("CELERY_OPERATOR_TESTENV_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "celery-operator" / "testenv"
