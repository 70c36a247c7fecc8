"""Validators of a Flower (pure)."""

from __future__ import annotations

from collections.abc import Iterable

from celery_operator.api import flower as api
from celery_operator.api.celeryapp import CeleryApp
from celery_operator.api.flower import Flower
from celery_operator.validation.celeryapp import pod_defaults_part
from celery_operator.validation.common import (
    PodPart,
    Problem,
    image_tag_warning,
    inherited_pod_problems,
    own_pod_problems,
)


def pod_part(flower: Flower) -> PodPart:
    s = flower.spec
    return PodPart("spec", s.volumes, s.volume_mounts, s.init_containers, s.sidecars)


def validate_flower(flower: Flower) -> list[Problem]:
    s = flower.spec
    problems: list[Problem] = []
    if s.ingress.enabled and not s.ingress.host:
        problems.append(Problem("spec.ingress.host", api.MSG_INGRESS_HOST))
    if not s.ingress.path.startswith("/"):
        problems.append(Problem("spec.ingress.path", api.MSG_INGRESS_PATH))
    if s.url_prefix and (s.url_prefix.startswith("/") or s.url_prefix.endswith("/")):
        problems.append(Problem("spec.urlPrefix", api.MSG_URL_PREFIX))
    problems += own_pod_problems(pod_part(flower), api.MAIN_CONTAINER)
    if (w := image_tag_warning("spec.image", s.image)) is not None:
        problems.append(w)
    return problems


def validate_flower_app(flower: Flower, app: CeleryApp) -> list[Problem]:
    """What needs the app: the Flower's volumes and mounts added to its podDefaults'."""
    return inherited_pod_problems(pod_part(flower), pod_defaults_part(app))


def validate_flower_binding(flower: Flower, other_flowers_of_app: Iterable[str]) -> list[Problem]:
    """One Flower per app: several would each keep their own state and disagree."""
    others = sorted(n for n in other_flowers_of_app if n != flower.metadata["name"])
    if others:
        return [
            Problem(
                "spec.appRef.name",
                f"CeleryApp {flower.spec.app_ref.name} already has a Flower ({others[0]}); an "
                "app has at most one",
            )
        ]
    return []
