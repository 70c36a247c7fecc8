"""docs/reference.md is generated from the models, is fresh, and leaves nothing out."""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from celery_operator.api.crd import build_crd
from celery_operator.api.kinds import KINDS
from celery_operator.manifests.reference import CONDITIONS, render_reference

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference.md"
SRC = ROOT / "src" / "celery_operator"


@pytest.fixture(scope="module")
def text() -> str:
    return render_reference()


def test_committed_reference_is_fresh(text: str) -> None:
    assert REFERENCE.exists(), "docs/reference.md is missing: run `make manifests`"
    assert REFERENCE.read_text() == text, "docs/reference.md is stale: run `make manifests`"


def test_rendering_is_deterministic(text: str) -> None:
    assert render_reference() == text


def _nested(annotation: Any) -> Iterator[tuple[type[BaseModel], str]]:
    """The models inside a field's annotation, with "[]" for list items."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation, ""
        return
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is list and args:
        for model, suffix in _nested(args[0]):
            yield model, "[]" + suffix
    elif origin in (typing.Union, types.UnionType, typing.Annotated):
        for arg in args:
            yield from _nested(arg)


def field_paths(model: type[BaseModel], prefix: str) -> Iterator[str]:
    """Every field of a model and its nested models, as wire paths (from the models, not
    from the renderer)."""
    for name, info in model.model_fields.items():
        path = f"{prefix}.{info.alias or name}"
        yield path
        for sub, suffix in _nested(info.annotation):
            yield from field_paths(sub, path + suffix)


CASES = [
    (info.name, path)
    for info in KINDS
    for root, model in (("spec", info.spec), ("status", info.status))
    for path in field_paths(model, root)
]


@pytest.mark.parametrize(("kind", "path"), CASES, ids=[f"{k}:{p}" for k, p in CASES])
def test_every_field_is_documented(text: str, kind: str, path: str) -> None:
    section = text.split(f"\n## {kind}\n", 1)[1].split("\n## ", 1)[0]
    assert f"| `{path}` |" in section, f"{kind} {path} is not in docs/reference.md"


def _cel_rules(node: Any) -> Iterator[dict[str, str]]:
    if isinstance(node, dict):
        yield from node.get("x-kubernetes-validations") or []
        for value in node.values():
            yield from _cel_rules(value)
    elif isinstance(node, list):
        for value in node:
            yield from _cel_rules(value)


RULES = [(info.name, rule) for info in KINDS for rule in _cel_rules(build_crd(info))]


def test_the_crds_have_cel_rules() -> None:
    assert len(RULES) >= 10


@pytest.mark.parametrize(("kind", "rule"), RULES, ids=[r["message"][:60] for _, r in RULES])
def test_every_cel_rule_is_documented(text: str, kind: str, rule: dict[str, str]) -> None:
    section = text.split(f"\n## {kind}\n", 1)[1].split("\n## ", 1)[0]
    assert rule["message"] in section
    assert f"`{rule['rule'].replace('|', chr(92) + '|')}`" in section


def test_every_kind_documents_ready_and_reconciling() -> None:
    for info in KINDS:
        types_ = [c.type for c in CONDITIONS[info.name]]
        assert types_[:1] in (["Ready"], ["Accepted"]), types_
        assert {"Ready", "Reconciling"} <= set(types_)
