"""Validators of a CeleryApp (pure)."""

from __future__ import annotations

from celery_operator.api import celeryapp as api
from celery_operator.api.celeryapp import CeleryApp, ConnectionSpec
from celery_operator.brokerurl import BrokerURLError, parse_broker_url
from celery_operator.validation.common import (
    PodPart,
    Problem,
    image_tag_warning,
    inherited_pod_problems,
    own_pod_problems,
)

NO_DEFAULTS = PodPart("spec.podDefaults")


def pod_defaults_part(app: CeleryApp) -> PodPart:
    """What the app adds to every pod of it (workers, beat, Flower)."""
    d = app.spec.pod_defaults
    return PodPart("spec.podDefaults", d.volumes, d.volume_mounts)


def beat_part(app: CeleryApp) -> PodPart:
    b = app.spec.beat
    return PodPart("spec.beat", b.volumes, b.volume_mounts, b.init_containers, b.sidecars)


def _connection(path: str, conn: ConnectionSpec | None) -> list[Problem]:
    if conn is None:
        return []
    url = conn.url
    if (url.value is None) == (url.secret_key_ref is None):
        return [Problem(f"{path}.url", api.MSG_URL_ONE_OF)]
    if url.value is not None:
        try:
            parsed = parse_broker_url(url.value)
        except BrokerURLError as e:
            return [Problem(f"{path}.url.value", str(e))]
        if parsed.has_password:
            return [
                Problem(
                    f"{path}.url.value",
                    "a URL with a password must not be written in the spec; put it in a "
                    "Secret and use url.secretKeyRef",
                )
            ]
    return []


def validate_app(app: CeleryApp) -> list[Problem]:
    s = app.spec
    problems = _connection("spec.broker", s.broker)
    problems += _connection("spec.resultBackend", s.result_backend)
    defaults = pod_defaults_part(app)
    problems += own_pod_problems(defaults, None)
    problems += inherited_pod_problems(defaults, NO_DEFAULTS)
    problems += own_pod_problems(beat_part(app), api.BEAT_CONTAINER)
    problems += inherited_pod_problems(beat_part(app), defaults)
    if (w := image_tag_warning("spec.image", s.image)) is not None:
        problems.append(w)
    return problems
