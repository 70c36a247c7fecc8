"""The image is built from the wheel (see Dockerfile): the wheel must carry everything the
operator needs at run time, and the command must run without writing anywhere but /tmp."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_carries_package_data_and_entry_point(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("celery_operator-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "celery_operator/py.typed" in names
    assert "celery_operator/api/k8s_schemas.json" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry).decode()
    assert "celery-operator = celery_operator.cli:main" in text


def test_cli_writes_nothing_outside_tmp(tmp_path: Path) -> None:
    """What the image runs with a read-only root FS: no bytecode, no caches, no files."""
    before = {p for p in ROOT.rglob("*") if ".venv" not in p.parts}
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(tmp_path)}
    for args in (
        ["--help"],
        ["run", "--help"],
        ["webhook", "--help"],
        ["certs", "issue", "--out", str(tmp_path / "c")],
    ):
        r = subprocess.run(
            [sys.executable, "-m", "celery_operator.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert r.returncode == 0, r.stderr
    after = {p for p in ROOT.rglob("*") if ".venv" not in p.parts}
    assert after - before == set()
    assert (tmp_path / "c" / "tls.crt").exists()
