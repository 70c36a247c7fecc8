"""Flower: the monitoring UI of one CeleryApp. Always exactly one replica."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from celery_operator.api.base import (
    API_VERSION,
    DNS_SUBDOMAIN,
    Conditions,
    Container,
    EnvFromSource,
    EnvVar,
    Lifecycle,
    Model,
    ResourceRequirements,
    SecretKeySelector,
    Volume,
    VolumeMount,
    containers_field,
    distinct_containers,
    pod_additions_descriptions,
    rules,
    sub,
    volume_mounts_field,
    volumes_field,
)

MSG_INGRESS_HOST = "ingress.host is required when ingress.enabled is true"
MSG_INGRESS_PATH = "ingress.path must start with '/'"
MSG_URL_PREFIX = "urlPrefix must not start or end with '/' (e.g. flower or tools/flower)"
MAIN_CONTAINER = "flower"
KIND = "Flower"
PLURAL = "flowers"


class FlowerAppRef(Model):
    """The CeleryApp to monitor, in the Flower's own namespace."""

    name: str = Field(
        description="Name of the CeleryApp.", min_length=1, max_length=253, pattern=DNS_SUBDOMAIN
    )


class BasicAuth(Model):
    secret_ref: SecretKeySelector = Field(
        description="Secret key holding 'user:password[,user:password]'."
    )


class ServiceSpec(Model):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(
        default="ClusterIP", description="Service type."
    )
    port: int = Field(default=5555, ge=1, le=65535, description="Service port.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Service annotations.")


class IngressTLS(Model):
    secret_name: str = Field(default="", description="TLS Secret; empty: no TLS.")


class IngressSpec(Model):
    model_config = Model.model_config | {
        "json_schema_extra": rules(
            (
                "!self.enabled || self.host != ''",
                MSG_INGRESS_HOST,
            ),
            ("self.path.startsWith('/')", MSG_INGRESS_PATH),
        )
    }

    enabled: bool = Field(default=False, description="Create an Ingress.")
    class_name: str = Field(default="", description="IngressClass; empty: the cluster default.")
    host: str = Field(default="", max_length=253, description="Host name of the Ingress rule.")
    path: str = Field(default="/", max_length=1024, description="Path of the Ingress rule.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Ingress annotations.")
    tls: IngressTLS = sub(IngressTLS, "TLS of the Ingress.")


_POD = pod_additions_descriptions(MAIN_CONTAINER, "Flower")


class FlowerSpec(Model):
    model_config = Model.model_config | {
        "json_schema_extra": rules(
            (
                "self.urlPrefix == '' || (!self.urlPrefix.startsWith('/') && !self.urlPrefix.endsWith('/'))",
                MSG_URL_PREFIX,
            ),
            distinct_containers("self"),
        )
    }

    app_ref: FlowerAppRef = Field(description="The CeleryApp to monitor (same namespace).")
    image: str = Field(
        default="", max_length=1024, description="Image; empty: the app's image (must have flower)."
    )
    port: int = Field(default=5555, ge=1024, le=65535, description="Port Flower listens on.")
    url_prefix: str = Field(
        default="", max_length=256, description="Serve Flower under this path prefix."
    )
    basic_auth: BasicAuth | None = Field(default=None, description="HTTP basic authentication.")
    service: ServiceSpec = sub(ServiceSpec, "The Service.")
    ingress: IngressSpec = sub(IngressSpec, "An optional Ingress.")
    resources: ResourceRequirements | None = Field(
        default=None, description="Compute resources of the Flower container."
    )
    extra_args: list[str] = Field(
        default_factory=list,
        description=(
            "Extra arguments appended to `celery flower`, e.g. --auth=.*@example\\.com "
            "--auth_provider=flower.views.auth.GoogleAuth2LoginHandler (Flower's own options)."
        ),
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        description=(
            "Environment variables of the flower container, added to the app's env (a name "
            "given again here wins), e.g. Flower's FLOWER_OAUTH2_KEY, FLOWER_OAUTH2_SECRET "
            "(from a Secret, with valueFrom.secretKeyRef) and FLOWER_OAUTH2_REDIRECT_URI."
        ),
    )
    env_from: list[EnvFromSource] = Field(
        default_factory=list, description="Environment sources added to the app's envFrom."
    )
    lifecycle: Lifecycle | None = Field(
        default=None,
        description=(
            "Lifecycle hooks of the flower container (core/v1 Lifecycle, verbatim), e.g. a "
            "preStop sleep so that an Ingress controller stops sending requests before Flower "
            "stops."
        ),
    )
    volumes: list[Volume] = volumes_field(_POD["volumes"])
    volume_mounts: list[VolumeMount] = volume_mounts_field(_POD["volumeMounts"])
    init_containers: list[Container] = containers_field(MAIN_CONTAINER, _POD["initContainers"])
    sidecars: list[Container] = containers_field(MAIN_CONTAINER, _POD["sidecars"], sidecars=True)


class FlowerStatus(Model):
    observed_generation: int | None = Field(default=None, description="Generation last reconciled.")
    conditions: Conditions
    url: str | None = Field(default=None, description="In-cluster URL of the UI.")
    ready_replicas: int = Field(default=0, description="Ready replicas (0 or 1).")


class Flower(Model):
    """Flower, the monitoring UI of one CeleryApp."""

    api_version: str = API_VERSION
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: FlowerSpec
    status: FlowerStatus | None = None
