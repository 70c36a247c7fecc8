"""Mutation and validation of the three kinds (pure, given a Lookup)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from celery_operator.api.celeryapp import CeleryApp
from celery_operator.api.celeryworkerpool import CeleryWorkerPool
from celery_operator.api.flower import Flower
from celery_operator.api.kinds import APP, BY_PLURAL, FLOWER, KINDS, POOL
from celery_operator.api.labels import LABEL_APP, LABEL_APP_NAMESPACE, label_value
from celery_operator.brokerurl import BrokerURL, BrokerURLError, parse_broker_url
from celery_operator.validation import Problem, errors, format_problems, model_problems, warnings
from celery_operator.validation.celeryapp import pod_defaults_part, validate_app
from celery_operator.validation.celeryworkerpool import (
    PoolContext,
    utilization_without_requests,
    validate_pool,
    validate_pool_binding,
)
from celery_operator.validation.celeryworkerpool import pod_part as pool_pod_part
from celery_operator.validation.common import inherited_pod_problems
from celery_operator.validation.flower import pod_part as flower_pod_part
from celery_operator.validation.flower import (
    validate_flower,
    validate_flower_app,
    validate_flower_binding,
)
from celery_operator.webhooks.lookup import Lookup
from celery_operator.webhooks.review import (
    Request,
    Verdict,
    only_metadata_changed,
    pointer,
    set_labels,
)
from celery_operator.webhooks.secretaccess import secret_access_problems


# ---- mutation -------------------------------------------------------------------------
def app_labels(app_name: str, app_namespace: str) -> dict[str, str]:
    """The labels naming the app a pool or Flower belongs to. They follow spec.appRef on
    every CREATE and UPDATE (a value set by hand is corrected): they are how users and the
    webhook's sibling lookup find an app's pools, and a stale one would mislead both."""
    return {LABEL_APP: label_value(app_name), LABEL_APP_NAMESPACE: label_value(app_namespace)}


def mutate_pool(req: Request) -> Verdict:
    obj = req.obj or {}
    spec = obj.get("spec") or {}
    ref = spec.get("appRef") if isinstance(spec.get("appRef"), dict) else None
    patch: list[dict[str, Any]] = []
    if ref is not None and ref.get("name"):
        app_ns = ref.get("namespace") or req.namespace
        if not ref.get("namespace") and req.namespace:
            patch.append({"op": "add", "path": "/spec/appRef/namespace", "value": req.namespace})
        patch += set_labels(obj, app_labels(str(ref["name"]), app_ns))
    queues = spec.get("queues")
    if isinstance(queues, list) and all(isinstance(q, str) for q in queues):
        normal = list(dict.fromkeys(q.strip() for q in queues if q.strip()))
        if normal and normal != queues:
            patch.append({"op": "replace", "path": pointer("spec", "queues"), "value": normal})
    return Verdict(patch=patch)


def mutate_flower(req: Request) -> Verdict:
    obj = req.obj or {}
    ref = (obj.get("spec") or {}).get("appRef")
    if not isinstance(ref, dict) or not ref.get("name"):
        return Verdict()
    return Verdict(patch=set_labels(obj, app_labels(str(ref["name"]), req.namespace)))


def mutate_app(req: Request) -> Verdict:
    return Verdict()


# ---- validation -----------------------------------------------------------------------
def _verdict(
    kind: str, req: Request, problems: list[Problem], forbidden: list[Problem] | None = None
) -> Verdict:
    """All errors of one object in one message; `forbidden` (Secrets the user may not
    read) make it a 403 Forbidden rather than a 422 Invalid."""
    forbidden = forbidden or []
    errs, warns = errors([*problems, *forbidden]), warnings(problems)
    v = Verdict(warnings=[str(w) for w in warns])
    if errs:
        v.allowed = False
        v.message = (
            f"{kind} {req.namespace}/{req.name or '(new)'} is invalid: {format_problems(errs)}"
        )
        if forbidden:
            v.code, v.reason = 403, "Forbidden"
    return v


def validate_app_request(req: Request, lookup: Lookup) -> list[Problem]:
    try:
        app = CeleryApp.model_validate(req.obj)
    except ValidationError as e:
        return model_problems(e)
    problems = validate_app(app)
    if not errors(problems):
        problems += dependents_warnings(app, lookup)
    return problems


def dependents_warnings(app: CeleryApp, lookup: Lookup) -> list[Problem]:
    """Pools and Flowers of the app whose volumes or mounts the app's podDefaults now
    collide with, or no longer provide: warnings (their owners must adapt; those objects
    turn Ready=False InvalidSpec and keep their running pods until then)."""
    ns, name = app.metadata["namespace"], app.metadata["name"]
    defaults = pod_defaults_part(app)
    found: list[tuple[str, list[Problem]]] = []
    for body in lookup.pools_of_app(ns, name):
        with contextlib.suppress(ValidationError, KeyError):
            pool = CeleryWorkerPool.model_validate(body)
            meta = pool.metadata
            found.append(
                (
                    f"CeleryWorkerPool {meta['namespace']}/{meta['name']}",
                    inherited_pod_problems(pool_pod_part(pool), defaults),
                )
            )
    for body in lookup.flowers(ns):
        with contextlib.suppress(ValidationError, KeyError):
            flower = Flower.model_validate(body)
            if flower.spec.app_ref.name == name:
                found.append(
                    (
                        f"Flower {ns}/{flower.metadata['name']}",
                        inherited_pod_problems(flower_pod_part(flower), defaults),
                    )
                )
    return [
        Problem(
            "spec.podDefaults",
            f"{who}: {problem}; it is not updated (Ready=False InvalidSpec) until it or "
            "this app changes",
            warning=True,
        )
        for who, problems in found
        for problem in problems
    ]


def broker_of(app: CeleryApp, lookup: Lookup) -> BrokerURL | None:
    """The app's broker URL parsed; None when it cannot be read (the controller reports it)."""
    url = app.spec.broker.url
    value = url.value
    if value is None and url.secret_key_ref:
        ref = url.secret_key_ref
        value = lookup.secret_value(
            app.metadata["namespace"], ref.get("name", ""), ref.get("key", "")
        )
    if value is None:
        return None
    try:
        return parse_broker_url(value)
    except BrokerURLError:
        return None


def validate_pool_request(req: Request, lookup: Lookup) -> list[Problem]:
    try:
        pool = CeleryWorkerPool.model_validate(req.obj)
    except ValidationError as e:
        return model_problems(e)
    problems = validate_pool(pool)
    app_ns = pool.spec.app_ref.namespace or req.namespace
    app_body = lookup.app(app_ns, pool.spec.app_ref.name)
    app = None
    if app_body is not None:
        try:
            app = CeleryApp.model_validate(app_body)
        except ValidationError:
            app = None
    ql = pool.spec.autoscaling.queue_length if pool.spec.autoscaling else None
    broker = broker_of(app, lookup) if app is not None and ql is not None else None
    siblings = {}
    if app is not None:
        for other in lookup.pools_of_app(app_ns, pool.spec.app_ref.name):
            meta = other.get("metadata") or {}
            if (meta.get("namespace"), meta.get("name")) != (req.namespace, req.name):
                siblings[f"{meta.get('namespace')}/{meta.get('name')}"] = (
                    other.get("spec") or {}
                ).get("queues") or []
    ctx = PoolContext(
        app=app,
        namespace_labels=lookup.namespace_labels(req.namespace) if app is not None else {},
        broker=broker,
        keda_installed=(ql is None or ql.engine != "keda") or lookup.keda_installed(),
        sibling_queues=siblings,
    )
    problems += validate_pool_binding(pool, ctx)
    missing = utilization_without_requests(pool)
    if missing:  # a LimitRange of the namespace may give them: look only then
        try:
            defaulted = lookup.limit_range_defaults(req.namespace)
        except Exception as e:  # cannot tell: warn rather than refuse what one may fix
            why = f"the namespace's LimitRanges could not be read ({type(e).__name__})"
            problems += [Problem(p.path, f"{p.message}; {why}", warning=True) for p in missing]
        else:
            problems += utilization_without_requests(pool, defaulted)
    return problems


def validate_flower_request(req: Request, lookup: Lookup) -> list[Problem]:
    try:
        flower = Flower.model_validate(req.obj)
    except ValidationError as e:
        return model_problems(e)
    problems = validate_flower(flower)
    others = [
        f["metadata"]["name"]
        for f in lookup.flowers(req.namespace)
        if (f.get("spec") or {}).get("appRef", {}).get("name") == flower.spec.app_ref.name
        and f["metadata"]["name"] != req.name
    ]
    problems += validate_flower_binding(flower, others)
    app_body = lookup.app(req.namespace, flower.spec.app_ref.name)
    if app_body is not None:
        # An app that does not parse: its own status says why.
        with contextlib.suppress(ValidationError):
            problems += validate_flower_app(flower, CeleryApp.model_validate(app_body))
    else:
        problems.append(
            Problem(
                "spec.appRef.name",
                f"CeleryApp {req.namespace}/{flower.spec.app_ref.name} does not exist (yet); "
                "Flower starts once it does",
                warning=True,
            )
        )
    return problems


Mutator = Callable[[Request], Verdict]
Validator = Callable[[Request, Lookup], list[Problem]]

# What admits each kind of the table: a kind without an entry fails here, at import.
ADMISSION: dict[str, tuple[Mutator, Validator]] = {
    APP.name: (mutate_app, validate_app_request),
    POOL.name: (mutate_pool, validate_pool_request),
    FLOWER.name: (mutate_flower, validate_flower_request),
}
assert set(ADMISSION) == {k.name for k in KINDS}, "every kind of api.kinds is admitted"


def admit(plural: str, req: Request, lookup: Lookup, *, mutate: bool) -> Verdict:
    """The verdict for one review. DELETE and metadata-only updates are never blocked."""
    kind = BY_PLURAL[plural].name
    mutator, validator = ADMISSION[kind]
    if req.operation not in ("CREATE", "UPDATE") or req.obj is None:
        return Verdict()
    if req.obj.get("kind") not in (None, kind):
        return Verdict(
            allowed=False,
            message=f"this endpoint admits {kind}, not {req.obj.get('kind')}",
            reason="BadRequest",
        )
    if mutate:
        return mutator(req)
    if only_metadata_changed(req):
        return Verdict()
    obj = dict(req.obj)
    meta = dict(obj.get("metadata") or {})
    meta.setdefault("namespace", req.namespace)
    meta.setdefault("name", req.name or meta.get("generateName", ""))
    obj["metadata"] = meta
    req = Request(**{**req.__dict__, "obj": obj})
    # First, and kept whatever happens next: a lookup failure below is answered by
    # allowing with a warning, which must not let an unreadable Secret through.
    forbidden = secret_access_problems(kind, req, lookup)
    try:
        problems = validator(req, lookup)
    except Exception:
        if forbidden:
            return _verdict(kind, req, [], forbidden)
        raise
    return _verdict(kind, req, problems, forbidden)
