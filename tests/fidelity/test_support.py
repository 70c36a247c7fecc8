"""The local runner refuses what it cannot resolve instead of silently dropping it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fidelity.support import LocalContainer, UnresolvableError, resolve_env

pytestmark = pytest.mark.fidelity

SECRETS = {("s", "k"): "secret-value"}


def test_resolve_env() -> None:
    env = [
        {"name": "A", "value": "1"},
        {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
    ]
    assert resolve_env(env, SECRETS) == {"A": "1", "B": "secret-value"}


@pytest.mark.parametrize(
    "var",
    [
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "other"}}},
        {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}},
        {"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "X"},
    ],
)
def test_resolve_env_fails_loudly(var: dict[str, object]) -> None:
    with pytest.raises(UnresolvableError, match="env X"):
        resolve_env([var], SECRETS)


def test_container_paths_and_args(tmp_path: Path) -> None:
    container = {
        "name": "c",
        "command": ["celery"],
        "args": ["--schedule=/tmp/s", "--address=0.0.0.0", "/tmpfoo"],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    local = LocalContainer(
        container, SECRETS, tmp_path, replace_args={"--address=0.0.0.0": "--address=127.0.0.1"}
    )
    tmp = tmp_path / "mounts" / "tmp"
    assert local.argv == ["celery", f"--schedule={tmp}/s", "--address=127.0.0.1", "/tmpfoo"]
    assert local.env["HOME"] == str(tmp)
    with pytest.raises(AssertionError, match="not among the rendered args"):
        LocalContainer(container, SECRETS, tmp_path, replace_args={"--port=1": "--port=2"})
    with pytest.raises(UnresolvableError, match="envFrom"):
        LocalContainer({**container, "envFrom": [{"secretRef": {"name": "x"}}]}, SECRETS, tmp_path)
