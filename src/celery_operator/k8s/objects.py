"""Kubernetes object helpers (pure): controller references, resourceVersion order, the
trimmed copy of a body that the operator's cache keeps, and whether a live object still
holds what the operator applied."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from celery_operator.api.labels import FIELD_MANAGER

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def controller_ref(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ownerReference marked controller, if any."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    ref = controller_ref(obj)
    return None if ref is None else str(ref.get("uid"))


def compare_resource_versions(a: str, b: str) -> int | None:
    """-1, 0 or 1 as resourceVersion `a` is older than, the same as or newer than `b`.

    Kubernetes made the resourceVersions of one resource comparable in 1.35 (KEP-5504,
    what every etcd-backed apiserver has always served): positive integers without leading
    zeros, ordered as numbers. None when either is not one: nothing can be said then."""
    for v in (a, b):
        if not (v.isascii() and v.isdigit()) or v.startswith("0"):
            return None
    if len(a) != len(b):
        return 1 if len(a) > len(b) else -1
    return (a > b) - (a < b)


def slim(body: Mapping[str, Any], *, child: bool = False, like: Any = None) -> dict[str, Any]:
    """The body as the cache keeps it: without `metadata.managedFields` (but for whether
    the operator's own apply entry owns spec.replicas, which the replica hand-off reads)
    and without kubectl's last-applied annotation (a second copy of the object). A child
    also loses its pod
    template: nothing reads it from the cache (the applied-hash annotation and the
    generation say whether a child is as rendered), and it is most of a Deployment.

    `like`: a body kept already (for a child, the manifest last applied to it; for a
    manifest, the one applied before it) whose equal parts the copy shares instead of
    holding its own (see `compact`)."""
    meta = body.get("metadata")
    if not isinstance(meta, dict):
        return dict(body)
    m = dict(meta)
    managed = m.pop("managedFields", None) or []
    ours = _ours(managed)
    annotations = m.get("annotations")
    if annotations and LAST_APPLIED in annotations:
        m["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    out = {**body, "metadata": m}
    spec = body.get("spec")
    if child and isinstance(spec, dict) and "template" in spec:
        out["spec"] = {k: v for k, v in spec.items() if k != "template"}
    kept: dict[str, Any] = compact(out, like)
    if ours:
        kept = {**kept, "metadata": {**kept["metadata"], "managedFields": ours}}
    return kept


# Our apply entries as far as the cache needs them: whether one owns spec.replicas (their
# fieldsV1 otherwise map every field of the manifest, pod template included). There are
# three such stubs, and few lists of them: every cached body shares them (read-only).
_STUBS: dict[int, dict[str, Any]] = {
    shape: {"manager": FIELD_MANAGER, "operation": "Apply", "fieldsV1": fields}
    for shape, fields in (
        (0, {}),
        (1, {"f:spec": {}}),
        (2, {"f:spec": {"f:replicas": {}}}),
    )
}
_STUB_LISTS: dict[tuple[int, ...], list[dict[str, Any]]] = {}


def _ours(managed: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    shapes = []
    for e in managed:
        if e.get("manager") == FIELD_MANAGER and e.get("operation") == "Apply":
            fields = e.get("fieldsV1") or {}
            spec = fields.get("f:spec")
            shapes.append(0 if spec is None else 2 if "f:replicas" in (spec or {}) else 1)
    if not shapes:
        return []
    key = tuple(shapes)
    if key not in _STUB_LISTS and len(_STUB_LISTS) < 64:
        _STUB_LISTS[key] = [_STUBS[s] for s in key]
    return _STUB_LISTS.get(key) or [_STUBS[s] for s in key]


def compact(value: Any, like: Any = None) -> Any:
    """A copy whose keys and short strings are interned: every body from the watch has its
    own copy of "apiVersion", "metadata", "True", "Ready"..., a third of a cached body.

    Where `like` (a copy made by this function, never changed after) holds a map or list
    equal to the one at the same place in `value` (the same keys, items of the same types
    and values), the copy takes `like`'s instead of a new one: a child as the cache keeps
    it and the manifest last applied to it share their labels, owner references, selector
    and most of their spec. Exact: 1 and True or 1 and 1.0 are not taken for each other."""
    if isinstance(value, dict):
        if not isinstance(like, dict):
            return {sys.intern(k): compact(v) for k, v in value.items()}
        out = {sys.intern(k): compact(v, like.get(k)) for k, v in value.items()}
        if len(out) == len(like) and all(k in like and like[k] is v for k, v in out.items()):
            return like
        return out
    if isinstance(value, list):
        if not isinstance(like, list) or len(like) != len(value):
            return [compact(v) for v in value]
        items = [compact(v, w) for v, w in zip(value, like, strict=True)]
        return like if all(a is b for a, b in zip(items, like, strict=True)) else items
    if like is not None and type(like) is type(value) and like == value:
        return like
    if isinstance(value, str) and len(value) <= 64:
        return sys.intern(value)
    return value


def contains(live: Any, desired: Any) -> bool:
    """Whether `live` still holds every field `desired` sets, with its value: the child as
    the operator applied it, whatever the server defaulted or others added beside it.

    Drift by content, not by `metadata.generation`, which Services, ConfigMaps and (before
    a feature gate) HPAs never bump. Maps may hold more keys; lists must have the same
    items in the same order (the operator applies its lists whole: an item added by hand
    to an atomic list is drift); a map or list desired empty may be absent; quantities
    compare by value ("0.5" is "500m", as the apiserver rewrites them)."""
    if isinstance(desired, Mapping):
        if live is None:
            return all(contains(None, v) for v in desired.values())
        return isinstance(live, Mapping) and all(
            contains(live.get(k), v) for k, v in desired.items()
        )
    if isinstance(desired, list):
        if live is None:
            return not desired
        return (
            isinstance(live, list)
            and len(live) == len(desired)
            and all(contains(a, b) for a, b in zip(live, desired, strict=True))
        )
    if desired is None:
        return live is None
    if live == desired and type(live) is type(desired):
        return True
    return isinstance(live, str) and isinstance(desired, str) and _same_quantity(live, desired)


def _same_quantity(a: str, b: str) -> bool:
    qa, qb = parse_quantity(a), parse_quantity(b)
    return qa is not None and qa == qb


_QUANTITY = re.compile(
    r"([+-]?(?:\d+\.?\d*|\.\d+))(?:[eE]([+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]))?"
)
_SUFFIXES = {
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{
        s: Decimal(10) ** e
        for s, e in zip("numkMGTPE", (-9, -6, -3, 3, 6, 9, 12, 15, 18), strict=True)
    },
}


def parse_quantity(text: str) -> Decimal | None:
    """A resource.Quantity ("500m", "1Gi", "1e3", "0.5") as a number; None when it is not
    one. (The kubernetes package has a laxer one: it reads "1mi" and "1 Gi", which the
    apiserver refuses; the operator does not import that package, see k8s/connection.py.)"""
    m = _QUANTITY.fullmatch(text)
    if m is None:
        return None
    number, exponent, suffix = m.groups()
    try:
        value = Decimal(number)
    except ArithmeticError:
        return None
    if exponent is not None:
        return value.scaleb(int(exponent))
    return value * _SUFFIXES[suffix] if suffix else value


def repair_patch(live: Any, desired: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7396) that puts back what `live` no longer holds of
    `desired`: the differing maps recursed into, every differing list or value whole.
    Server-side apply alone cannot: it keeps what another field manager owns (a port
    added or renumbered by `kubectl edit` is a new list entry, not ours). Empty: nothing
    to repair."""
    out: dict[str, Any] = {}
    for key, want in desired.items():
        have = live.get(key) if isinstance(live, Mapping) else None
        if contains(have, want):
            continue
        if isinstance(want, Mapping) and isinstance(have, Mapping):
            out[key] = repair_patch(have, want)
        else:
            out[key] = want
    return out


def projection(live: Any, desired: Any) -> Any:
    """`live` cut down to the fields `desired` sets: the server's own form of them."""
    if isinstance(desired, Mapping) and isinstance(live, Mapping):
        return {k: projection(live[k], v) for k, v in desired.items() if k in live}
    return live
