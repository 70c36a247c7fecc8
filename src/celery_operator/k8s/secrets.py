"""Writes with concurrency semantics, for state shared between operator replicas.

`client.apply_object` (server-side apply, forced) is last-writer-wins, which is right for
children rendered from a spec but wrong for a CA generated at random: two replicas would
each write their own. Here instead:

* `create_secret` is create-only (POST): of two replicas racing, exactly one wins and the
  other gets None and reads the winner's Secret.
* `merge_patch` carries `metadata.resourceVersion`, which the apiserver checks as a
  precondition: a write based on a stale read gets None (409), and the caller re-reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery_operator.api.labels import FIELD_MANAGER
from celery_operator.k8s import client

TLS_SECRET = "kubernetes.io/tls"


def get_secret(namespace: str, name: str) -> dict[str, Any] | None:
    """The Secret, or None when it does not exist."""
    return client.get_object("v1", "Secret", name, namespace)


def create_secret(
    namespace: str,
    name: str,
    data: Mapping[str, str | None],
    *,
    type_: str = "Opaque",
    labels: Mapping[str, str] | None = None,
    field_manager: str = FIELD_MANAGER,
) -> dict[str, Any] | None:
    """Creates a Secret (values already base64; None values are left out). Returns the
    created object, or None when a Secret of that name already exists."""
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
        "type": type_,
        "data": {k: v for k, v in data.items() if v is not None},
    }
    try:
        return client.create_object(body, field_manager=field_manager)
    except client.ApiError as e:
        if e.conflict:  # 409 AlreadyExists: another replica won the race
            return None
        raise


def merge_patch(
    api_version: str,
    kind: str,
    name: str,
    namespace: str | None,
    patch: Mapping[str, Any],
    *,
    resource_version: str,
    field_manager: str = FIELD_MANAGER,
) -> dict[str, Any] | None:
    """A JSON merge patch applied only if the object is still at `resource_version`.

    Returns the patched object, or None when the object changed (409) or disappeared (404)
    since it was read: the caller re-reads and decides again.
    """
    try:
        return client.patch_object(
            api_version,
            kind,
            name,
            namespace,
            patch,
            field_manager=field_manager,
            resource_version=resource_version,
        )
    except client.ApiError as e:
        if e.conflict or e.not_found:
            return None
        raise
