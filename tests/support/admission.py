"""Building AdmissionReview requests, and a Lookup with fixed answers for unit tests."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from typing import Any


def review(
    obj: dict[str, Any] | None,
    operation: str = "CREATE",
    old: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    meta = (obj or old or {}).get("metadata") or {}
    kind = (obj or old or {}).get("kind", "CeleryApp")
    req: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": "celeryproject.org", "version": "v1alpha1", "kind": kind},
        "resource": {
            "group": "celeryproject.org",
            "version": "v1alpha1",
            "resource": kind.lower() + "s",
        },
        "operation": operation,
        "namespace": meta.get("namespace", "default"),
        "name": meta.get("name", ""),
        "userInfo": {"username": "alice"},
        "object": obj,
        "oldObject": old,
        **extra,
    }
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}


def decoded_patch(resp: dict[str, Any]) -> list[dict[str, Any]]:
    r = resp["response"]
    if "patch" not in r:
        return []
    assert r["patchType"] == "JSONPatch"
    return list(json.loads(base64.b64decode(r["patch"])))


@dataclass
class FixedLookup:
    apps: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    secrets: dict[tuple[str, str, str], str] = field(default_factory=dict)
    keda: bool = True
    pools: list[dict[str, Any]] = field(default_factory=list)
    flower_list: list[dict[str, Any]] = field(default_factory=list)
    fail: bool = False

    def _check(self) -> None:
        if self.fail:
            raise ConnectionError("apiserver unreachable")

    def app(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._check()
        return self.apps.get((namespace, name))

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        self._check()
        return self.labels.get(namespace, {})

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        self._check()
        return self.secrets.get((namespace, name, key))

    def keda_installed(self) -> bool:
        self._check()
        return self.keda

    def pools_of_app(self, namespace: str, name: str) -> list[dict[str, Any]]:
        self._check()
        return [
            p
            for p in self.pools
            if (
                p["spec"]["appRef"].get("namespace") or p["metadata"]["namespace"],
                p["spec"]["appRef"]["name"],
            )
            == (namespace, name)
        ]

    def flowers(self, namespace: str) -> list[dict[str, Any]]:
        self._check()
        return [f for f in self.flower_list if f["metadata"]["namespace"] == namespace]
