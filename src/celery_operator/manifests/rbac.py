"""The RBAC the operator and the webhook need, as data: the single source for the Helm
chart, the plain manifests and the e2e tests (which run the operator under exactly this)."""

from __future__ import annotations

from typing import Any

from celery_operator.api.base import GROUP

CHILD_VERBS = ["get", "list", "watch", "create", "patch", "update", "delete"]
READ = ["get", "list", "watch"]


def operator_rules() -> list[dict[str, Any]]:
    return [
        # The three kinds: read them, write only their status.
        {
            "apiGroups": [GROUP],
            "resources": ["celeryapps", "celeryworkerpools", "flowers"],
            "verbs": READ,
        },
        {
            "apiGroups": [GROUP],
            "resources": ["celeryapps/status", "celeryworkerpools/status", "flowers/status"],
            "verbs": ["get", "patch", "update"],
        },
        # Children it creates, repairs and deletes.
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": CHILD_VERBS},
        {"apiGroups": [""], "resources": ["services"], "verbs": CHILD_VERBS},
        {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": CHILD_VERBS},
        {
            "apiGroups": ["autoscaling"],
            "resources": ["horizontalpodautoscalers"],
            "verbs": CHILD_VERBS,
        },
        {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses"], "verbs": CHILD_VERBS},
        {
            "apiGroups": ["keda.sh"],
            "resources": ["scaledobjects", "triggerauthentications"],
            "verbs": CHILD_VERBS,
        },
        # Secrets: read the apps' connection Secrets, write its mirrors and KEDA
        # credentials. Never list or watch: it cannot enumerate the cluster's Secrets.
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "verbs": ["get", "create", "patch", "update", "delete"],
        },
        # Its workers', beat's and Flower's pods: why they cannot run, for the status.
        {"apiGroups": [""], "resources": ["pods"], "verbs": READ},
        # workerPoolPolicy selects namespaces by label.
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": READ},
        # kopf discovers resources (KEDA's may appear later) through CRDs: read only.
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": READ,
        },
    ]


def operator_rbac(namespace: str, name: str = "celery-operator") -> list[dict[str, Any]]:
    labels = {
        "app.kubernetes.io/name": "celery-operator",
        "app.kubernetes.io/component": "operator",
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name, "labels": labels},
            "rules": operator_rules(),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": labels},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    ]


def webhook_cluster_rules(configuration: str = "celery-operator") -> list[dict[str, Any]]:
    return [
        # Admission reads the app a pool names, sibling pools, Flowers and namespace labels,
        # from watch-driven caches (no API round trip per review).
        {
            "apiGroups": [GROUP],
            "resources": ["celeryapps", "celeryworkerpools", "flowers"],
            "verbs": ["get", "list", "watch"],
        },
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
        # The broker URL's scheme decides whether the built-in scaler can read it: get only.
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
        # CA injection into its own two configurations, and nothing else.
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["mutatingwebhookconfigurations", "validatingwebhookconfigurations"],
            "resourceNames": [configuration],
            "verbs": ["get", "patch"],
        },
    ]


def webhook_namespace_rules(ca_secret: str = "celery-operator-webhook-ca") -> list[dict[str, Any]]:
    # The shared CA lives in a Secret of the operator's namespace. `create` cannot be
    # limited by name, so it is granted in this namespace only; the rest by name.
    return [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": [ca_secret],
            "verbs": ["get", "patch"],
        },
    ]


def webhook_rbac(
    namespace: str, name: str = "celery-operator-webhook", configuration: str = "celery-operator"
) -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/name": "celery-operator", "app.kubernetes.io/component": "webhook"}
    meta = {"name": name, "labels": labels}
    subject = [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {**meta, "namespace": namespace},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": meta,
            "rules": webhook_cluster_rules(configuration),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": meta,
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": subject,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {**meta, "namespace": namespace},
            "rules": webhook_namespace_rules(),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {**meta, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": subject,
        },
    ]
