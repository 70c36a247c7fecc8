"""AdmissionReview v1: parsing requests, building responses and JSONPatches (pure)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class BadReview(ValueError):  # noqa: N818 - answered with HTTP 400, not an error of ours
    """The body is not an AdmissionReview v1 request."""


@dataclass(frozen=True)
class UserInfo:
    """Who sent the request (the AdmissionReview's userInfo), as authenticated by the
    apiserver: what a SubjectAccessReview about that user needs."""

    username: str = ""
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def parse_user_info(raw: Any) -> UserInfo:
    """The userInfo of a request; entries of the wrong type are left out."""
    if not isinstance(raw, Mapping):
        return UserInfo()
    groups = raw.get("groups")
    extra = raw.get("extra")
    return UserInfo(
        username=raw["username"] if isinstance(raw.get("username"), str) else "",
        uid=raw["uid"] if isinstance(raw.get("uid"), str) else "",
        groups=tuple(g for g in groups if isinstance(g, str)) if isinstance(groups, list) else (),
        extra={
            k: tuple(x for x in v if isinstance(x, str))
            for k, v in (extra.items() if isinstance(extra, Mapping) else ())
            if isinstance(k, str) and isinstance(v, list)
        },
    )


@dataclass(frozen=True)
class Request:
    uid: str
    kind: str
    operation: str
    namespace: str
    name: str
    obj: dict[str, Any] | None
    old: dict[str, Any] | None
    dry_run: bool = False
    user: UserInfo = field(default_factory=UserInfo)


def parse_review(body: Any) -> Request:
    if not isinstance(body, Mapping):
        raise BadReview("the body is not a JSON object")
    if body.get("apiVersion") != "admission.k8s.io/v1" or body.get("kind") != "AdmissionReview":
        raise BadReview("expected apiVersion admission.k8s.io/v1, kind AdmissionReview")
    req = body.get("request")
    if not isinstance(req, Mapping):
        raise BadReview("the AdmissionReview has no request")
    uid = req.get("uid")
    if not isinstance(uid, str) or not uid:
        raise BadReview("request.uid is missing")
    kind = req.get("kind")
    operation = req.get("operation")
    if not isinstance(kind, Mapping) or not isinstance(kind.get("kind"), str):
        raise BadReview("request.kind is missing")
    if operation not in ("CREATE", "UPDATE", "DELETE", "CONNECT"):
        raise BadReview("request.operation must be CREATE, UPDATE, DELETE or CONNECT")
    obj, old = req.get("object"), req.get("oldObject")
    if obj is not None and not isinstance(obj, Mapping):
        raise BadReview("request.object is not an object")
    if old is not None and not isinstance(old, Mapping):
        raise BadReview("request.oldObject is not an object")
    return Request(
        uid=uid,
        kind=str(kind["kind"]),
        operation=str(operation),
        namespace=str(req.get("namespace") or ""),
        name=str(req.get("name") or ""),
        obj=dict(obj) if obj is not None else None,
        old=dict(old) if old is not None else None,
        dry_run=bool(req.get("dryRun")),
        user=parse_user_info(req.get("userInfo")),
    )


@dataclass
class Verdict:
    allowed: bool = True
    message: str = ""
    reason: str = ""
    code: int = 422
    warnings: list[str] = field(default_factory=list)
    patch: list[dict[str, Any]] = field(default_factory=list)


def response(uid: str, v: Verdict) -> dict[str, Any]:
    resp: dict[str, Any] = {"uid": uid, "allowed": v.allowed}
    if not v.allowed:
        resp["status"] = {"code": v.code, "reason": v.reason or "Invalid", "message": v.message}
    if v.warnings:
        resp["warnings"] = v.warnings
    if v.patch:
        resp["patchType"] = "JSONPatch"
        resp["patch"] = base64.b64encode(json.dumps(v.patch).encode()).decode()
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp}


def pointer(*parts: str) -> str:
    """A JSON Pointer (RFC 6901) from path segments."""
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def set_labels(obj: Mapping[str, Any], labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """Patch operations giving the object these label values: added where missing,
    replaced where different, nothing where already right (so applying twice is a no-op)."""
    current = (obj.get("metadata") or {}).get("labels")
    if not isinstance(current, Mapping):
        return [{"op": "add", "path": "/metadata/labels", "value": dict(labels)}] if labels else []
    return [
        {
            "op": "replace" if k in current else "add",
            "path": pointer("metadata", "labels", k),
            "value": v,
        }
        for k, v in labels.items()
        if current.get(k) != v
    ]


def only_metadata_changed(req: Request) -> bool:
    """An UPDATE that leaves spec alone (finalizers, labels, annotations, status)."""
    if req.operation != "UPDATE" or req.obj is None or req.old is None:
        return False
    return req.obj.get("spec") == req.old.get("spec")
