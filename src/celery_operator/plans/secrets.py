"""The Secrets the plans read (pure): what the operator last read of each, which of them a
pod template's containers read at start, and the checksum of that data, which rolls the
pods when it changes.

The operator cannot list or watch Secrets (by design: it must not be able to enumerate the
cluster's Secrets). The controllers gather the Secrets a plan names through
`controllers.secretwatch`, which GETs each referenced one every `--secret-poll-seconds` and
reconciles its owners when it changed; the plans get what it read as `SecretView`s.

What counts for the checksum is what a container reads when it starts and never again:
`env[].valueFrom.secretKeyRef` (that key only: the other keys of the Secret do not matter)
and `envFrom[].secretRef` (all of its data), of every container and init container (native
sidecars included). Not: Secret volumes (the kubelet updates mounted files in place) and
image pull Secrets (used only to pull). The checksum is of the data alone, so it is the
same after a restart of the operator, and a Secret that does not exist hashes as absent.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from celery_operator.api.labels import SECRET_BASELINE_ANNOTATION, SECRET_CHECKSUM_ANNOTATION

SecretKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class SecretView:
    """A Secret as the operator last read it. `error`: it could not be read (and never was
    before: a Secret read once keeps its last value while a read fails)."""

    exists: bool = False
    type: str = ""
    data: Mapping[str, str] = field(default_factory=dict, repr=False, hash=False)  # base64
    error: str = ""

    @property
    def known(self) -> bool:
        return not self.error


ABSENT = SecretView()


@dataclass(frozen=True)
class SecretUse:
    """What a container reads of a Secret at start: one key, or (key None) all its data."""

    namespace: str
    name: str
    key: str | None = None

    @property
    def secret(self) -> SecretKey:
        return (self.namespace, self.name)

    def order(self) -> tuple[str, str, str]:
        return (self.namespace, self.name, "" if self.key is None else f"={self.key}")


def _containers(spec: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for group in ("initContainers", "containers"):
        yield from spec.get(group) or []


def pod_secret_uses(deployment: Mapping[str, Any]) -> tuple[SecretUse, ...]:
    """The Secret data the containers of a rendered Deployment's pods read at start, in
    the Deployment's namespace; sorted, each once."""
    ns = str(deployment["metadata"]["namespace"])
    spec = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    uses: set[SecretUse] = set()
    for c in _containers(spec):
        for var in c.get("env") or []:
            ref = (var.get("valueFrom") or {}).get("secretKeyRef") or {}
            if ref.get("name") and ref.get("key"):
                uses.add(SecretUse(ns, str(ref["name"]), str(ref["key"])))
        for source in c.get("envFrom") or []:
            ref = source.get("secretRef") or {}
            if ref.get("name"):
                uses.add(SecretUse(ns, str(ref["name"])))
    return tuple(sorted(uses, key=SecretUse.order))


def secrets_of(uses: Iterable[SecretUse]) -> tuple[SecretKey, ...]:
    return tuple(sorted({u.secret for u in uses}))


def _value(use: SecretUse, view: SecretView) -> Any:
    if not view.exists:
        return None
    if use.key is None:
        return dict(sorted(view.data.items()))
    return view.data.get(use.key)


def secret_checksum(uses: Iterable[SecretUse], views: Mapping[SecretKey, SecretView]) -> str:
    """A sha256 of the data `uses` name, as `views` hold it (a Secret not among them, or
    that could not be read, hashes as absent)."""
    entries = [
        [u.namespace, u.name, u.key, _value(u, views.get(u.secret, ABSENT))]
        for u in sorted(set(uses), key=SecretUse.order)
    ]
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def current_checksum(deployment: Mapping[str, Any] | None) -> str | None:
    """The checksum on a Deployment as cached (its metadata: the cache keeps no template),
    or the baseline it was adopted with."""
    annotations = ((deployment or {}).get("metadata") or {}).get("annotations") or {}
    value = annotations.get(SECRET_CHECKSUM_ANNOTATION, annotations.get(SECRET_BASELINE_ANNOTATION))
    return None if value is None else str(value)


def secret_rollout(
    checksum: str | None, live: Mapping[str, Any] | None
) -> tuple[str | None, str | None]:
    """(the checksum for the pod template, the baseline for the metadata).

    A new Deployment, or one whose template already carries a checksum: the checksum goes
    on the template (a new value rolls the pods). A Deployment from before checksums (an
    upgrade of the operator) is adopted without a roll: the checksum is kept as its
    baseline, and goes on the template only once the data changes from it."""
    if checksum is None or live is None:
        return checksum, None
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    if SECRET_CHECKSUM_ANNOTATION in annotations:
        return checksum, None
    baseline = annotations.get(SECRET_BASELINE_ANNOTATION)
    if baseline is None or baseline == checksum:
        return None, checksum
    return checksum, None


def pod_checksum(
    uses: Iterable[SecretUse],
    views: Mapping[SecretKey, SecretView],
    current: str | None,
) -> str | None:
    """The checksum to put on a pod template (None: it reads no Secret). While one of the
    Secrets could not be read, the `current` one stays: an apiserver that does not answer
    rolls nothing."""
    uses = tuple(uses)
    if not uses:
        return None
    if current is not None and any(not views.get(u.secret, ABSENT).known for u in uses):
        return current
    return secret_checksum(uses, views)
