"""Generated files are generated: the committed ones equal what `make manifests` renders."""

from __future__ import annotations

from pathlib import Path

import pytest

from celery_operator.manifests.generate import render_all

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("rel", sorted(render_all()))
def test_generated_file_is_fresh(rel: str) -> None:
    path = ROOT / rel
    assert path.exists(), f"{rel} is missing: run `make manifests`"
    assert path.read_text() == render_all()[rel], f"{rel} is stale: run `make manifests`"


def test_k8s_schemas_cover_every_core_type() -> None:
    from celery_operator.api import base
    from celery_operator.api.crd import _k8s_definitions

    missing = base.K8S_DEFINITIONS - set(_k8s_definitions())
    assert not missing, f"run `make k8s-schemas`: {missing}"
