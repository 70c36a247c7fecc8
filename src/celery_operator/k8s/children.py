"""Applying children safely: never take over an object another owner controls."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery_operator.api.labels import FIELD_MANAGER
from celery_operator.k8s import client
from celery_operator.k8s.objects import contains, controller_uid, repair_patch


class ChildConflictError(Exception):
    """A child's name is taken by an object that this owner does not control."""


def apply_owned(
    manifest: Mapping[str, Any], live: Mapping[str, Any] | None = None, *, known: bool = False
) -> dict[str, Any]:
    """Server-side applies a child whose ownerReference names its controller. If the
    result does not hold the manifest, or the apply is invalid, because another field
    manager owns what stands in the way (a list item changed by hand: apply keeps what it
    does not own), a merge patch at the object's resourceVersion puts it back first.

    When an object of that name exists and is controlled by someone else (or by nobody,
    e.g. made by hand), nothing is written and ChildConflictError says why: the operator never
    overwrites what it did not create. `live` skips the read when the caller has it cached
    (`known`: the caller read it, and None means it does not exist).
    """
    meta = manifest["metadata"]
    owner = controller_uid(manifest)
    if live is None and not known:
        live = client.get_object(
            manifest["apiVersion"], manifest["kind"], meta["name"], meta.get("namespace")
        )
    if live is not None and owner is not None and controller_uid(live) != owner:
        holder = controller_uid(live)
        who = "another owner" if holder else "no controller (created outside the operator)"
        raise ChildConflictError(
            f"{manifest['kind']} {meta.get('namespace')}/{meta['name']} already exists and is "
            f"controlled by {who}; rename or delete it"
        )
    try:
        answer: dict[str, Any] | None = client.apply_object(manifest)
    except client.ApiError as e:
        # Someone else's fields can make the apply itself invalid (a Service port
        # renumbered by hand keeps its name: ours would be a duplicate): repair first.
        if e.status != 422 or live is None:
            raise
        answer = None
    if answer is not None and contains(answer, manifest):
        return answer
    current = answer or client.get_object(
        manifest["apiVersion"], manifest["kind"], meta["name"], meta.get("namespace")
    )
    if current is None:
        return client.apply_object(manifest)
    client.patch_object(
        manifest["apiVersion"],
        manifest["kind"],
        meta["name"],
        meta.get("namespace"),
        repair_patch(current, manifest),
        field_manager=FIELD_MANAGER,
        resource_version=current["metadata"]["resourceVersion"],
    )
    return client.apply_object(manifest)  # our field manager owns the repaired fields again


def apply_new(
    manifest: Mapping[str, Any], owner_created: str | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Applies a child the cache does not hold, without reading it first. Returns the live
    object and what existed before (None when the apply created it).

    A non-forced apply creates the object when the name is free, exactly as a forced one
    would. When the name is taken it writes nothing if another field manager holds a field
    we set with another value (409), or the object has another controller (422): then the
    object is read and judged as `apply_owned` judges it. The one case that gets through is
    an object that already held every value we set (a hand copy of our manifest): it
    existed before its would-be owner (`owner_created`, the owner's creationTimestamp), so
    it is not ours: our fields are given back and ChildConflictError says so."""
    try:
        answer = client.apply_object(manifest, force=False)
    except client.ApiError as e:
        if e.status not in (409, 422):
            raise
        meta = manifest["metadata"]
        live = client.get_object(
            manifest["apiVersion"], manifest["kind"], meta["name"], meta.get("namespace")
        )
        return apply_owned(manifest, live, known=True), live
    if _predates(answer, owner_created):
        meta = manifest["metadata"]
        release = {
            "apiVersion": manifest["apiVersion"],
            "kind": manifest["kind"],
            "metadata": {"name": meta["name"], "namespace": meta.get("namespace")},
        }
        client.apply_object(release, force=False)  # drops our ownerReference and fields
        raise ChildConflictError(
            f"{manifest['kind']} {meta.get('namespace')}/{meta['name']} already exists and is "
            "controlled by no controller (created outside the operator); rename or delete it"
        )
    if not contains(answer, manifest):  # an existing object of ours holds other values
        return apply_owned(manifest, answer, known=True), answer
    return answer, None


def _predates(live: Mapping[str, Any], owner_created: str | None) -> bool:
    """Whether an object the operator just applied existed before its owner: another
    manager wrote it, and it was created before the owner was (creationTimestamps have
    one-second steps; a child is never created before its owner)."""
    meta = live.get("metadata") or {}
    others = [
        e
        for e in meta.get("managedFields") or []
        if e.get("manager") != FIELD_MANAGER and not e.get("subresource")
    ]
    if not others or not owner_created:
        return False
    return str(meta.get("creationTimestamp") or "") < owner_created


def delete_owned(api_version: str, kind: str, name: str, namespace: str, owner_uid: str) -> bool:
    """Deletes a child only if `owner_uid` controls it. True if something was deleted."""
    live = client.get_object(api_version, kind, name, namespace)
    if live is None or controller_uid(live) != owner_uid:
        return False
    return client.delete_object(api_version, kind, name, namespace, uid=live["metadata"]["uid"])


HANDOFF_MANAGER = "celery-operator-handoff"


def owns_field(live: Mapping[str, Any], manager: str, *path: str) -> bool:
    """Whether `manager` owns the field at `path` (e.g. "spec", "replicas") by apply."""
    for entry in live.get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") != manager or entry.get("operation") != "Apply":
            continue
        node = entry.get("fieldsV1") or {}
        for part in path:
            node = node.get(f"f:{part}")
            if node is None:
                break
        else:
            return True
    return False


def hand_off_replicas(live: Mapping[str, Any]) -> bool:
    """Before the operator stops applying spec.replicas (an HPA or KEDA takes over), a
    second field manager takes co-ownership at the current value: otherwise server-side
    apply would drop the field and the Deployment would fall back to 1 replica until the
    autoscaler acts. Returns whether a hand-off was needed."""
    if not owns_field(live, FIELD_MANAGER, "spec", "replicas"):
        return False
    meta = live["metadata"]
    client.apply_object(
        {
            "apiVersion": live["apiVersion"],
            "kind": live["kind"],
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "spec": {"replicas": live["spec"]["replicas"]},
        },
        field_manager=HANDOFF_MANAGER,
    )
    return True
