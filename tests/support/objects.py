"""Build model objects for tests from the example CRs (plus overrides)."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

import yaml

from celery_operator.api.celeryapp import CeleryApp
from celery_operator.api.celeryworkerpool import CeleryWorkerPool
from celery_operator.api.flower import Flower

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "crds"


def example(rel: str) -> dict[str, Any]:
    """The first document of crds/<rel>."""
    docs = [d for d in yaml.safe_load_all((EXAMPLES / rel).read_text()) if d]
    return dict(docs[0])


def deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _with_uid(obj: dict[str, Any], name: str) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["metadata"].setdefault("uid", str(uuid.uuid5(uuid.NAMESPACE_URL, name)))
    return obj


def app(**patch: Any) -> CeleryApp:
    obj = deep_merge(example("celeryapp/examples/shop.yaml"), patch)
    return CeleryApp.model_validate(_with_uid(obj, "app"))


def pool(
    rel: str = "celeryworkerpool/examples/shop-default.yaml", **patch: Any
) -> CeleryWorkerPool:
    obj = deep_merge(example(rel), patch)
    return CeleryWorkerPool.model_validate(_with_uid(obj, rel))


def flower(**patch: Any) -> Flower:
    obj = deep_merge(example("flower/examples/shop.yaml"), patch)
    return Flower.model_validate(_with_uid(obj, "flower"))
