"""What the three plans share (pure): reading the app they name, and the blockers every
kind reports the same way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from celery_operator.api.celeryapp import CeleryApp
from celery_operator.api.conditions import (
    CHILD_CONFLICT,
    CHILD_REJECTED,
    INVALID_SPEC,
    READY,
    Blocker,
)
from celery_operator.validation import errors, format_problems, model_problems
from celery_operator.validation.celeryapp import validate_app

Body = Mapping[str, Any]
M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], body: Body) -> M | Blocker:
    """The body as its model, or InvalidSpec with every field the schema rejects."""
    try:
        return model.model_validate(body)
    except ValidationError as e:
        return Blocker(INVALID_SPEC, format_problems(model_problems(e)))


def parse_app(body: Body | None) -> CeleryApp | None:
    """The app a pool or Flower names: None when it is missing, being deleted or unreadable
    (its own status says why)."""
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    app = parse(CeleryApp, body)
    return app if isinstance(app, CeleryApp) else None


def app_problems(app: CeleryApp) -> str:
    """The app's spec errors as one message ('' when valid)."""
    errs = errors(validate_app(app))
    if not errs:
        return ""
    return f"CeleryApp {app.metadata['namespace']}/{app.metadata['name']} is invalid: {format_problems(errs)}"


def kept_block(old: Mapping[str, Any] | None, generation: object) -> Blocker | None:
    """A status-only pass applies nothing, so it cannot see a name conflict or a child the
    apiserver refuses: it keeps the ChildConflict or ChildRejected that the last full
    reconcile of this generation reported, instead of reporting Ready from the children
    that did get created."""
    for c in (old or {}).get("conditions") or []:
        if (
            c.get("type") == READY
            and c.get("reason") in (CHILD_CONFLICT, CHILD_REJECTED)
            and c.get("observedGeneration") == generation
        ):
            return Blocker(str(c["reason"]), str(c.get("message", "")))
    return None
