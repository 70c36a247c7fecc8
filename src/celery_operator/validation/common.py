"""The Problem type and its formatting."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    warning: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def model_problems(e: ValidationError) -> list[Problem]:
    """What pydantic found wrong with an object, as Problems with field paths."""
    return [Problem(".".join(str(x) for x in err["loc"]), str(err["msg"])) for err in e.errors()]


def errors(problems: Iterable[Problem]) -> list[Problem]:
    return [p for p in problems if not p.warning]


def warnings(problems: Iterable[Problem]) -> list[Problem]:
    return [p for p in problems if p.warning]


def format_problems(problems: Iterable[Problem]) -> str:
    """All problems of one object in one message, in field order."""
    return "; ".join(str(p) for p in problems)


def image_tag_warning(path: str, image: str) -> Problem | None:
    """Images without a pinned tag or digest drift between restarts."""
    if not image or "@sha256:" in image:
        return None
    last = image.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else ""
    if tag in ("", "latest"):
        return Problem(
            path,
            f"image {image!r} is {'tagged latest' if tag else 'not tagged'}: pods restarted "
            "later may run different code; pin a version tag or a digest",
            warning=True,
        )
    return None


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics. An empty selector matches everything."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key", ""), expr.get("operator", ""), expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


_QUEUE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@\-]*$")


def valid_queue_name(name: str) -> bool:
    return bool(_QUEUE_RE.match(name)) and len(name) <= 200
