"""docs/reference.md is generated from the models, is fresh, and leaves nothing out."""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from celery_operator.api.crd import KINDS, build_crd
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
    (info.kind, path)
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


RULES = [(info.kind, rule) for info in KINDS for rule in _cel_rules(build_crd(info))]


def test_the_crds_have_cel_rules() -> None:
    assert len(RULES) >= 10


@pytest.mark.parametrize(("kind", "rule"), RULES, ids=[r["message"][:60] for _, r in RULES])
def test_every_cel_rule_is_documented(text: str, kind: str, rule: dict[str, str]) -> None:
    section = text.split(f"\n## {kind}\n", 1)[1].split("\n## ", 1)[0]
    assert rule["message"] in section
    assert f"`{rule['rule'].replace('|', chr(92) + '|')}`" in section


def _source_strings() -> set[str]:
    """CamelCase string literals of the code that sets conditions (not of the reference)."""
    paths = [SRC / "status.py"]
    for package in ("controllers", "validation", "scaling"):
        paths += sorted((SRC / package).glob("*.py"))
    found: set[str] = set()
    for path in paths:
        found |= set(re.findall(r'"([A-Z][A-Za-z]+)"', path.read_text()))
    return found


REASONS = sorted(
    {(kind, c.type, r.reason) for kind, docs in CONDITIONS.items() for c in docs for r in c.reasons}
)


@pytest.mark.parametrize(("kind", "type_", "reason"), REASONS)
def test_documented_reasons_are_set_by_the_code(kind: str, type_: str, reason: str) -> None:
    """The condition tables are hand-written: each reason must be one the code sets."""
    strings = _source_strings()
    assert type_ in strings, f"condition type {type_} of {kind} appears nowhere in the code"
    assert reason in strings, f"reason {reason} ({kind} {type_}) appears nowhere in the code"


def test_every_kind_documents_ready_and_reconciling() -> None:
    for info in KINDS:
        types_ = [c.type for c in CONDITIONS[info.kind]]
        assert types_[:1] in (["Ready"], ["Accepted"]), types_
        assert {"Ready", "Reconciling"} <= set(types_)
