"""The Mutating- and ValidatingWebhookConfiguration of the operator (pure).

Service mode (`service:` reference) for clusters; URL mode (`url:` + caBundle) for the
local control plane, where the webhook listens on 127.0.0.1.
"""

from __future__ import annotations

from typing import Any

from celery_operator.api.base import GROUP, VERSION
from celery_operator.api.kinds import KINDS, Kind

NAME = "celery-operator"
SERVICE = "celery-operator-webhook"
DEFAULT_NAMESPACE = "celery-operator-system"


def _client_config(
    path: str, namespace: str, url_base: str | None, ca_bundle: str | None
) -> dict[str, Any]:
    cfg: dict[str, Any]
    if url_base is not None:
        cfg = {"url": f"{url_base.rstrip('/')}{path}"}
    else:
        cfg = {"service": {"name": SERVICE, "namespace": namespace, "path": path, "port": 443}}
    if ca_bundle:
        cfg["caBundle"] = ca_bundle
    return cfg


def _webhook(
    what: str, kind: Kind, namespace: str, url_base: str | None, ca_bundle: str | None
) -> dict[str, Any]:
    mutating = what == "mutate"
    return {
        "name": f"{'m' if mutating else 'v'}{kind.singular}.{GROUP}",
        "clientConfig": _client_config(f"/{what}/{kind.plural}", namespace, url_base, ca_bundle),
        "rules": [
            {
                "apiGroups": [GROUP],
                "apiVersions": [VERSION],
                "operations": ["CREATE", "UPDATE"],
                "resources": [kind.plural],
                "scope": "Namespaced",
            }
        ],
        # Mutation only adds defaults; losing it must not block users. Validation fails
        # closed: the controllers would reject the object anyway, but later and quietly.
        "failurePolicy": "Ignore" if mutating else "Fail",
        "sideEffects": "None",
        "timeoutSeconds": 5,
        "matchPolicy": "Equivalent",
        "admissionReviewVersions": ["v1"],
        "namespaceSelector": {
            "matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [namespace]}
            ]
        },
        **({"reinvocationPolicy": "IfNeeded"} if mutating else {}),
    }


def build_webhook_configurations(
    namespace: str = DEFAULT_NAMESPACE, url_base: str | None = None, ca_bundle: str | None = None
) -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/name": "celery-operator", "app.kubernetes.io/component": "webhook"}
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": NAME, "labels": labels},
            "webhooks": [_webhook("mutate", k, namespace, url_base, ca_bundle) for k in KINDS],
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": NAME, "labels": labels},
            "webhooks": [_webhook("validate", k, namespace, url_base, ca_bundle) for k in KINDS],
        },
    ]


def webhook_dns_names(namespace: str = DEFAULT_NAMESPACE) -> list[str]:
    return [
        SERVICE,
        f"{SERVICE}.{namespace}",
        f"{SERVICE}.{namespace}.svc",
        f"{SERVICE}.{namespace}.svc.cluster.local",
    ]
