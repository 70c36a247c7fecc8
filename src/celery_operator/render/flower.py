"""Flower: Deployment (one replica), Service and optional Ingress (pure)."""

from __future__ import annotations

from typing import Any

from celery_operator.api.celeryapp import CeleryApp
from celery_operator.api.flower import Flower
from celery_operator.api.labels import LABEL_COMPONENT, LABEL_FLOWER, LABEL_NAME, label_value
from celery_operator.render import common as c

COMPONENT = "flower"
PORT_NAME = "http"


def selector_labels(flower: Flower) -> dict[str, str]:
    return {
        LABEL_NAME: "celery",
        LABEL_COMPONENT: COMPONENT,
        LABEL_FLOWER: label_value(flower.metadata["name"]),
    }


def flower_labels(app: CeleryApp, flower: Flower) -> dict[str, str]:
    labels = c.base_labels(app.metadata["name"], COMPONENT)
    labels[LABEL_FLOWER] = label_value(flower.metadata["name"])
    return labels


def path_prefix(flower: Flower) -> str:
    """The URL path Flower serves under: '' or '/<urlPrefix>'."""
    prefix = flower.spec.url_prefix.strip("/")
    return f"/{prefix}" if prefix else ""


def flower_url(flower: Flower) -> str:
    """In-cluster URL of the UI, through its Service."""
    ns = flower.metadata["namespace"]
    name = c.flower_name(flower.metadata["name"])
    return f"http://{name}.{ns}.svc:{flower.spec.service.port}{path_prefix(flower)}"


def build_flower_args(app: CeleryApp, flower: Flower) -> list[str]:
    s = flower.spec
    # No --address: Flower's default binds every interface, IPv4 and IPv6 alike.
    args = [f"--app={app.spec.app}", "flower", f"--port={s.port}"]
    if s.url_prefix:
        args.append(f"--url_prefix={s.url_prefix.strip('/')}")
    args.extend(s.extra_args)
    return args


def build_flower_env(app: CeleryApp, flower: Flower) -> list[dict[str, Any]]:
    ours: list[dict[str, Any]] = []
    if flower.spec.basic_auth is not None:
        ours.append(
            {
                "name": "FLOWER_BASIC_AUTH",
                "valueFrom": {"secretKeyRef": dict(flower.spec.basic_auth.secret_ref)},
            }
        )
    return c.merge_env(c.app_env(app), ours, flower.spec.env)


def _probe(flower: Flower, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": f"{path_prefix(flower)}/healthcheck", "port": PORT_NAME},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def build_flower_deployment(
    app: CeleryApp, flower: Flower, owner: dict[str, Any] | None
) -> dict[str, Any]:
    s = flower.spec
    d = app.spec.pod_defaults
    labels = flower_labels(app, flower)
    pod_meta: dict[str, Any] = {"labels": c.merge_labels(d.labels, own=labels)}
    if d.annotations:
        pod_meta["annotations"] = dict(d.annotations)
    cont = c.container(
        "flower",
        s.image or app.spec.image,
        app,
        build_flower_args(app, flower),
        build_flower_env(app, flower),
        s.resources,
        s.volume_mounts,
    )
    if s.env_from:
        cont["envFrom"] = [*cont.get("envFrom", []), *(dict(e) for e in s.env_from)]
    cont["ports"] = [{"name": PORT_NAME, "containerPort": s.port, "protocol": "TCP"}]
    cont["readinessProbe"] = _probe(flower, 10, 3)
    cont["livenessProbe"] = {**_probe(flower, 30, 4), "initialDelaySeconds": 30}
    if s.lifecycle:
        cont["lifecycle"] = dict(s.lifecycle)
    return c.clone(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": c.metadata(
                c.flower_name(flower.metadata["name"]), flower.metadata["namespace"], labels, owner
            ),
            "spec": {
                # Several Flowers each keep their own in-memory state and disagree.
                "replicas": 1,
                "selector": {"matchLabels": selector_labels(flower)},
                "strategy": {"type": "Recreate"},
                "revisionHistoryLimit": 5,
                "template": {
                    "metadata": pod_meta,
                    "spec": c.pod_spec(
                        app,
                        [cont],
                        volumes=s.volumes,
                        init_containers=s.init_containers,
                        sidecars=s.sidecars,
                    ),
                },
            },
        }
    )


def build_flower_service(
    app: CeleryApp, flower: Flower, owner: dict[str, Any] | None
) -> dict[str, Any]:
    s = flower.spec.service
    return c.clone(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": c.metadata(
                c.flower_name(flower.metadata["name"]),
                flower.metadata["namespace"],
                flower_labels(app, flower),
                owner,
                s.annotations,
            ),
            "spec": {
                "type": s.type,
                "selector": selector_labels(flower),
                "ports": [
                    {"name": PORT_NAME, "port": s.port, "targetPort": PORT_NAME, "protocol": "TCP"}
                ],
            },
        }
    )


def build_flower_ingress(
    app: CeleryApp, flower: Flower, owner: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The Ingress, or None when disabled."""
    ing = flower.spec.ingress
    if not ing.enabled:
        return None
    name = c.flower_name(flower.metadata["name"])
    path = ing.path
    prefix = path_prefix(flower)
    if prefix and path == "/":
        path = prefix
    spec: dict[str, Any] = {
        "rules": [
            {
                "host": ing.host,
                "http": {
                    "paths": [
                        {
                            "path": path,
                            "pathType": "Prefix",
                            "backend": {
                                "service": {
                                    "name": name,
                                    "port": {"number": flower.spec.service.port},
                                }
                            },
                        }
                    ]
                },
            }
        ]
    }
    if ing.class_name:
        spec["ingressClassName"] = ing.class_name
    if ing.tls.secret_name:
        spec["tls"] = [{"hosts": [ing.host], "secretName": ing.tls.secret_name}]
    return c.clone(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": c.metadata(
                name,
                flower.metadata["namespace"],
                flower_labels(app, flower),
                owner,
                ing.annotations,
            ),
            "spec": spec,
        }
    )
