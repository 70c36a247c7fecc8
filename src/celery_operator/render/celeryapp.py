"""The celery beat Deployment of a CeleryApp (pure).

Exactly one replica with the Recreate strategy: two beats at once would send every
periodic task twice, so a rollout stops the old beat before the new one starts.
"""

from __future__ import annotations

from typing import Any

from celery_operator.api.celeryapp import CeleryApp
from celery_operator.api.labels import LABEL_COMPONENT, LABEL_INSTANCE, LABEL_NAME, label_value
from celery_operator.render import common as c

COMPONENT = "beat"
SCHEDULE_FILE = "/tmp/celerybeat-schedule"


def selector_labels(app: CeleryApp) -> dict[str, str]:
    return {
        LABEL_NAME: "celery",
        LABEL_COMPONENT: COMPONENT,
        LABEL_INSTANCE: label_value(app.metadata["name"]),
    }


def build_beat_args(app: CeleryApp) -> list[str]:
    b = app.spec.beat
    args = [
        f"--app={app.spec.app}",
        "beat",
        "--loglevel=INFO",
        f"--schedule={SCHEDULE_FILE}",
        "--pidfile=",
    ]
    if b.scheduler:
        args.append(f"--scheduler={b.scheduler}")
    args.extend(b.extra_args)
    return args


def build_beat_deployment(app: CeleryApp, owner: dict[str, Any] | None) -> dict[str, Any]:
    d = app.spec.pod_defaults
    meta = app.metadata
    labels = c.base_labels(meta["name"], COMPONENT)
    pod_meta: dict[str, Any] = {"labels": c.merge_labels(d.labels, own=labels)}
    if d.annotations:
        pod_meta["annotations"] = dict(d.annotations)
    b = app.spec.beat
    cont = c.container(
        "beat",
        app.spec.image,
        app,
        build_beat_args(app),
        c.app_env(app),
        b.resources,
        b.volume_mounts,
    )
    return c.clone(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": c.metadata(
                c.beat_deployment_name(meta["name"]), meta["namespace"], labels, owner
            ),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": selector_labels(app)},
                "strategy": {"type": "Recreate"},
                "revisionHistoryLimit": 5,
                "template": {
                    "metadata": pod_meta,
                    "spec": c.pod_spec(
                        app,
                        [cont],
                        volumes=b.volumes,
                        init_containers=b.init_containers,
                        sidecars=b.sidecars,
                    ),
                },
            },
        }
    )
