"""No confused deputy: naming a Secret in a spec needs the right to read it.

The operator reads the Secrets an object names and hands their values on: into pods it
creates, into Secrets it mirrors into other namespaces (an app's broker and result backend
URLs and its image pull Secrets, for every admitted pool), into an Ingress. Without a check, a user who may edit a
CeleryApp but not `get` Secret X could name X and read it back from those. So the
validating webhook admits a CREATE or UPDATE that names a Secret only if the requesting
user may `get` that Secret in the object's namespace, asked of the apiserver with a
SubjectAccessReview about the request's userInfo (username, uid, groups, extra).

On UPDATE only what changed is checked: a reference (its use, Secret and key) that the
old object already had is not asked about again, so another user or a controller editing
an unrelated field needs no rights on the Secrets. Two things count as changed although no
name changed: a reference in a new place (a Secret moved from `imagePullSecrets` to
`envFrom` reaches the pods), and the app's `workerPoolPolicy` (it decides which namespaces
get mirrors of the broker, result backend and image pull Secrets). No reference changed:
no review.

When the SubjectAccessReview itself fails, the request is refused (fail closed): unlike the
other lookups, whose failure the controllers make up for, nobody checks this later.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from celery_operator.api.kinds import APP, FLOWER, POOL
from celery_operator.validation import Problem
from celery_operator.webhooks.lookup import Lookup
from celery_operator.webhooks.review import Request

log = logging.getLogger("celery_operator.webhook")

# The uses whose Secret the operator copies into other namespaces, and the app field that
# decides which namespaces.
MIRRORED = ("broker", "resultBackend", "imagePullSecrets")
MIRROR_POLICY = "workerPoolPolicy"


@dataclass(frozen=True)
class SecretRef:
    """One place in a spec that names a Secret of the object's namespace."""

    path: str  # the field path that names it, e.g. spec.broker.url.secretKeyRef.name
    use: str  # what the operator does with it: broker, env, envFrom, imagePullSecrets, ...
    name: str
    key: str = ""  # the key read from it ("" when all of it is used)

    @property
    def identity(self) -> tuple[str, str, str]:
        """What the reference exposes, wherever in a list it sits."""
        return (self.use, self.name, self.key)


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _ref(path: str, use: str, selector: Any, name_field: str = "name") -> list[SecretRef]:
    """A reference from a SecretKeySelector-like mapping; none when it names nothing."""
    sel = _map(selector)
    name = sel.get(name_field)
    if not isinstance(name, str) or not name:
        return []
    key = sel.get("key")
    return [SecretRef(f"{path}.{name_field}", use, name, key if isinstance(key, str) else "")]


def _env_refs(spec: Mapping[str, Any], path: str = "spec") -> list[SecretRef]:
    """`env[].valueFrom.secretKeyRef` and `envFrom[].secretRef` (core/v1 EnvVar, EnvFromSource)
    of a spec or a container at `path`."""
    refs: list[SecretRef] = []
    for i, var in enumerate(_list(spec.get("env"))):
        value_from = _map(_map(var).get("valueFrom"))
        refs += _ref(
            f"{path}.env[{i}].valueFrom.secretKeyRef", "env", value_from.get("secretKeyRef")
        )
    for i, source in enumerate(_list(spec.get("envFrom"))):
        refs += _ref(f"{path}.envFrom[{i}].secretRef", "envFrom", _map(source).get("secretRef"))
    return refs


def _pod_refs(part: Mapping[str, Any], path: str) -> list[SecretRef]:
    """What users add to pods at `path`: Secret volumes (`secret`, and `secret` sources of
    `projected`), whose files the containers read, and the env of init containers and
    sidecars. (Secrets that only the kubelet reads to mount a volume, such as
    csi.nodePublishSecretRef, reach no container.)"""
    refs: list[SecretRef] = []
    for i, volume in enumerate(_list(part.get("volumes"))):
        here = f"{path}.volumes[{i}]"
        refs += _ref(f"{here}.secret", "volume", _map(volume).get("secret"), "secretName")
        sources = _list(_map(_map(volume).get("projected")).get("sources"))
        for j, source in enumerate(sources):
            refs += _ref(
                f"{here}.projected.sources[{j}].secret", "volume", _map(source).get("secret")
            )
    for field in ("initContainers", "sidecars"):
        for i, container in enumerate(_list(part.get(field))):
            refs += _env_refs(_map(container), f"{path}.{field}[{i}]")
    return refs


def _app_refs(spec: Mapping[str, Any]) -> list[SecretRef]:
    refs: list[SecretRef] = []
    for use in MIRRORED:
        url = _map(_map(spec.get(use)).get("url"))
        refs += _ref(f"spec.{use}.url.secretKeyRef", use, url.get("secretKeyRef"))
    for i, pull in enumerate(_list(spec.get("imagePullSecrets"))):
        refs += _ref(f"spec.imagePullSecrets[{i}]", "imagePullSecrets", pull)
    return (
        refs
        + _env_refs(spec)
        + _pod_refs(_map(spec.get("podDefaults")), "spec.podDefaults")
        + _pod_refs(_map(spec.get("beat")), "spec.beat")
    )


def _pool_refs(spec: Mapping[str, Any]) -> list[SecretRef]:
    return _env_refs(spec) + _pod_refs(spec, "spec")


def _flower_refs(spec: Mapping[str, Any]) -> list[SecretRef]:
    auth = _map(spec.get("basicAuth"))
    tls = _map(_map(spec.get("ingress")).get("tls"))
    return [
        *_ref("spec.basicAuth.secretRef", "basicAuth", auth.get("secretRef")),
        *_ref("spec.ingress.tls", "ingressTLS", tls, name_field="secretName"),
        *_env_refs(spec),
        *_pod_refs(spec, "spec"),
    ]


# Every Secret reference of every kind's spec (see the models in api/).
_REFS = {APP.name: _app_refs, POOL.name: _pool_refs, FLOWER.name: _flower_refs}


def secret_refs(kind: str, obj: Mapping[str, Any] | None) -> list[SecretRef]:
    """Every Secret an object of `kind` names, in field order (any malformed part skipped)."""
    refs = _REFS.get(kind)
    return refs(_map(_map(obj).get("spec"))) if refs is not None else []


def changed_refs(
    kind: str, obj: Mapping[str, Any] | None, old: Mapping[str, Any] | None
) -> list[SecretRef]:
    """The references of `obj` that `old` did not have (all of them without an `old`)."""
    refs = secret_refs(kind, obj)
    if old is None:
        return refs
    before = {r.identity for r in secret_refs(kind, old)}
    new_policy, old_policy = (_map(_map(o).get("spec")).get(MIRROR_POLICY) for o in (obj, old))
    policy_changed = kind == APP.name and new_policy != old_policy
    return [r for r in refs if r.identity not in before or (policy_changed and r.use in MIRRORED)]


def _denied(req: Request, namespace: str, name: str, detail: str) -> str:
    who = req.user.username or "(no username)"
    return (
        f'user "{who}" may not get secret "{namespace}/{name}"{detail}: naming a Secret '
        "here lets the operator hand its value on, so it needs the right to read it; "
        'ask for "get" on that Secret or name one you may read'
    )


def secret_access_problems(kind: str, req: Request, lookup: Lookup) -> list[Problem]:
    """One error per field that names a Secret the user may not get; none when no
    reference changed (then no SubjectAccessReview is made). Never raises: a review that
    fails refuses the request, saying so."""
    refs = changed_refs(kind, req.obj, req.old if req.operation == "UPDATE" else None)
    return _check(req, req.namespace, refs, lookup)


def _check(
    req: Request, namespace: str, refs: Iterable[SecretRef], lookup: Lookup
) -> list[Problem]:
    """One SubjectAccessReview per Secret, asked in turn (most specs name one or two);
    the first that fails ends the check."""
    by_name: dict[str, list[SecretRef]] = {}
    for r in refs:
        by_name.setdefault(r.name, []).append(r)
    problems: list[Problem] = []
    for name, uses in by_name.items():  # one review per Secret, however often it is named
        try:
            access = lookup.may_get_secret(req.user, namespace, name)
        except Exception as e:  # fail closed: nobody checks this later
            log.warning("SubjectAccessReview for secret %s/%s failed: %s", namespace, name, e)
            message = (
                f'could not check whether user "{req.user.username}" may get secret '
                f'"{namespace}/{name}": the SubjectAccessReview failed ({e}); the request is '
                "refused until the check succeeds"
            )
            return problems + [Problem(r.path, message) for r in uses]
        if not access.allowed:
            detail = f" ({access.reason})" if access.reason else ""
            problems += [Problem(r.path, _denied(req, namespace, name, detail)) for r in uses]
    return problems
