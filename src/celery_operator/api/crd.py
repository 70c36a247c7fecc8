"""Generates the CustomResourceDefinitions from the pydantic models (pure).

The models are the single source of the schema: this turns their JSON Schema into the
structural OpenAPI v3 schema Kubernetes requires (refs inlined, Optional as plain fields,
core types replaced by their upstream schemas), and adds what only a CRD has: the status
and scale subresources, printer columns, short names (from `api.kinds`) and the
`celery` category.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any

from pydantic import BaseModel

from celery_operator.api.base import GROUP, K8S_NAME_MAX_LENGTH, K8S_REF, VERSION
from celery_operator.api.kinds import KINDS, Kind

CATEGORY = "celery"


@functools.cache
def _k8s_definitions() -> dict[str, Any]:
    text = resources.files("celery_operator.api").joinpath("k8s_schemas.json").read_text()
    return dict(json.loads(text))


def _inline_k8s(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    defs = _k8s_definitions()
    if name not in defs:
        raise KeyError(f"{name} is not in k8s_schemas.json: run `make k8s-schemas`")
    if name in seen:
        raise ValueError(f"recursive core type {' -> '.join((*seen, name))}")
    resolved: dict[str, Any] = _resolve_k8s(copy.deepcopy(defs[name]), (*seen, name))
    return resolved


def _resolve_k8s(node: Any, seen: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_resolve_k8s(n, seen) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return {**_inline_k8s(node["$ref"], seen), **rest}
    return {k: _resolve_k8s(v, seen) for k, v in node.items()}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Pydantic JSON Schema -> structural OpenAPI v3 (as CRDs require)."""
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    node.pop("title", None)
    if K8S_REF in node:
        ref = node.pop(K8S_REF)
        name_max = node.pop(K8S_NAME_MAX_LENGTH, None)
        base = _inline_k8s(ref)
        if name_max is not None:
            base["properties"]["name"]["maxLength"] = name_max
        if "description" in node:
            base["description"] = node["description"]
        return {**base, **{k: v for k, v in node.items() if k != "description"}}
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        merged = {**target, **node}  # the field's description wins over the class docstring
        return _structural(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o != {"type": "null"}]
        if len(options) < len(node["anyOf"]) and len(options) == 1:
            # Optional[X]: a plain X; null values are pruned unless marked nullable.
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            if rest.get("default", 0) is None:
                rest.pop("default")
            return _structural({**options[0], **rest}, defs)
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    if "const" in node:
        node["enum"] = [node.pop("const")]
    return {k: _structural(v, defs) for k, v in node.items()}


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    defs = schema.pop("$defs", {})
    return dict(_structural(schema, defs))


def build_crd(info: Kind) -> dict[str, Any]:
    spec = openapi_schema(info.spec)
    status = openapi_schema(info.status)
    status["description"] = f"The observed state of the {info.name}."
    spec["description"] = f"The desired state of the {info.name}."
    subresources: dict[str, Any] = {"status": {}}
    if info.scale:
        subresources["scale"] = dict(info.scale)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{info.plural}.{GROUP}",
            "labels": {
                "app.kubernetes.io/name": "celery-operator",
                "app.kubernetes.io/part-of": "celery-operator",
            },
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": info.name,
                "listKind": f"{info.name}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": list(info.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "description": info.description,
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                    "subresources": subresources,
                    "additionalPrinterColumns": list(info.columns),
                }
            ],
        },
    }


def build_crds() -> list[dict[str, Any]]:
    return [build_crd(info) for info in KINDS]
