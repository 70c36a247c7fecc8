"""Building AdmissionReview requests, a Lookup with fixed answers for unit tests, and a
minimal validating webhook server for the control-plane tests."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from celery_operator.webhooks.lookup import Access
from celery_operator.webhooks.review import UserInfo


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


class ReviewHandler(BaseHTTPRequestHandler):
    """Answers AdmissionReviews: `deny(request)` returns the message to deny with, or None."""

    def deny(self, request: dict[str, Any]) -> str | None:
        raise NotImplementedError

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["request"]
        message = self.deny(request)
        response: dict[str, Any] = {"uid": request["uid"], "allowed": message is None}
        if message is not None:
            response["status"] = {"code": 403, "message": message}
        body = json.dumps(
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


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
    # (namespace, Secret) -> the users who may get it; None: everyone may get every Secret.
    secret_readers: dict[tuple[str, str], set[str]] | None = None
    access_fail: bool = False  # the SubjectAccessReview itself fails
    access_checks: list[tuple[str, str, str]] = field(default_factory=list)  # (user, ns, name)
    # namespace -> the resources its LimitRanges default; None: listing them fails.
    limit_defaults: dict[str, frozenset[str]] | None = field(default_factory=dict)

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

    def limit_range_defaults(self, namespace: str) -> frozenset[str]:
        self._check()
        if self.limit_defaults is None:
            raise PermissionError("limitranges is forbidden")
        return self.limit_defaults.get(namespace, frozenset())

    def may_get_secret(self, user: UserInfo, namespace: str, name: str) -> Access:
        self.access_checks.append((user.username, namespace, name))
        if self.access_fail:
            raise ConnectionError("apiserver unreachable")
        if self.secret_readers is None:
            return Access(True)
        return Access(user.username in self.secret_readers.get((namespace, name), set()))
