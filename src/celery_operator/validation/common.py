"""The Problem type and its formatting."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from celery_operator.api.base import (
    INIT_HOOKS,
    MSG_INIT_HOOKS,
    MSG_SIDECAR_RESTART,
    MSG_TMP_MOUNT,
    MSG_TMP_VOLUME,
    TMP_MOUNT_PATH,
    TMP_VOLUME_NAME,
    container_name_message,
)


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


# ---- What users add to pods: volumes, mounts, init containers, sidecars ----------------------
@dataclass(frozen=True)
class PodPart:
    """What one place of a spec adds to a pod (core/v1 objects as dicts)."""

    path: str  # the field path of the place: spec, spec.beat, spec.podDefaults
    volumes: Sequence[Mapping[str, Any]] = ()
    volume_mounts: Sequence[Mapping[str, Any]] = ()
    init_containers: Sequence[Mapping[str, Any]] = ()
    sidecars: Sequence[Mapping[str, Any]] = ()


def _name(obj: Mapping[str, Any]) -> str:
    return str(obj.get("name") or "")


def _mount_key(mount: Mapping[str, Any]) -> str:
    return str(mount.get("mountPath") or "").rstrip("/")


def _containers(part: PodPart) -> list[tuple[str, Mapping[str, Any]]]:
    return [
        *((f"{part.path}.initContainers[{i}]", c) for i, c in enumerate(part.init_containers)),
        *((f"{part.path}.sidecars[{i}]", c) for i, c in enumerate(part.sidecars)),
    ]


def own_pod_problems(part: PodPart, main: str | None) -> list[Problem]:
    """What one place alone can tell: names unique, never the operator's own ('tmp', /tmp,
    the container `main`), sidecars that can run as native sidecars."""
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for i, v in enumerate(part.volumes):
        path, name = f"{part.path}.volumes[{i}].name", _name(v)
        if name == TMP_VOLUME_NAME:
            problems.append(Problem(path, MSG_TMP_VOLUME))
        elif name in seen:
            problems.append(Problem(path, f"volume name '{name}' is already used by {seen[name]}"))
        seen.setdefault(name, f"{part.path}.volumes[{i}]")
    problems += _mount_path_problems(f"{part.path}.volumeMounts", part.volume_mounts)
    names: dict[str, str] = {}
    for path, c in _containers(part):
        name = _name(c)
        if main is not None and name == main:
            problems.append(Problem(f"{path}.name", container_name_message(main)))
        elif name in names:
            problems.append(
                Problem(
                    f"{path}.name",
                    f"container name '{name}' is already used by {names[name]}: the names of "
                    "a pod's init containers, sidecars and containers must all differ",
                )
            )
        names.setdefault(name, path)
    for i, c in enumerate(part.init_containers):
        if c.get("restartPolicy") != "Always":
            problems += [
                Problem(f"{part.path}.initContainers[{i}].{f}", MSG_INIT_HOOKS)
                for f in INIT_HOOKS
                if c.get(f) is not None
            ]
    for i, c in enumerate(part.sidecars):
        if c.get("restartPolicy") not in (None, "Always"):
            problems.append(
                Problem(f"{part.path}.sidecars[{i}].restartPolicy", MSG_SIDECAR_RESTART)
            )
    return problems


def _mount_path_problems(path: str, mounts: Sequence[Mapping[str, Any]]) -> list[Problem]:
    """The mountPaths of one list: unique, never /tmp."""
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for i, m in enumerate(mounts):
        key, here = _mount_key(m), f"{path}[{i}].mountPath"
        if key == TMP_MOUNT_PATH:
            problems.append(Problem(here, MSG_TMP_MOUNT))
        elif key in seen:
            problems.append(
                Problem(here, f"{m.get('mountPath')} is already mounted by {seen[key]}")
            )
        seen.setdefault(key, f"{path}[{i}]")
    return problems


def inherited_pod_problems(part: PodPart, defaults: PodPart) -> list[Problem]:
    """What needs the app's podDefaults (`defaults`) too: `part`'s volumes and mounts, added
    to the app's, must not collide with them, and every mount (of the operator's container,
    of an init container, of a sidecar) must name a volume of the pod. For podDefaults
    itself, `defaults` is an empty PodPart."""
    problems: list[Problem] = []
    inherited = {_name(v): f"{defaults.path}.volumes[{i}]" for i, v in enumerate(defaults.volumes)}
    for i, v in enumerate(part.volumes):
        name = _name(v)
        if name in inherited:
            problems.append(
                Problem(
                    f"{part.path}.volumes[{i}].name",
                    f"volume name '{name}' is already used by the app's {inherited[name]}: the "
                    "pod gets both lists, so the names must differ (rename this one, or drop it "
                    "and mount the app's volume)",
                )
            )
    mounted = {
        _mount_key(m): f"{defaults.path}.volumeMounts[{i}]"
        for i, m in enumerate(defaults.volume_mounts)
    }
    for i, m in enumerate(part.volume_mounts):
        if (where := mounted.get(_mount_key(m))) is not None:
            problems.append(
                Problem(
                    f"{part.path}.volumeMounts[{i}].mountPath",
                    f"{m.get('mountPath')} is already mounted by the app's {where} in the same "
                    "container",
                )
            )
    known = [TMP_VOLUME_NAME, *inherited, *(_name(v) for v in part.volumes)]
    allowed = ", ".join(dict.fromkeys(known))
    mounts = [(f"{part.path}.volumeMounts[{i}]", m) for i, m in enumerate(part.volume_mounts)]
    for path, c in _containers(part):
        mounts += [
            (f"{path}.volumeMounts[{i}]", m) for i, m in enumerate(c.get("volumeMounts") or [])
        ]
    for path, m in mounts:
        name = _name(m)
        if name not in known:
            problems.append(
                Problem(
                    f"{path}.name",
                    f"no volume '{name}' in the pod; a mount may name one of: {allowed}",
                )
            )
    return problems
