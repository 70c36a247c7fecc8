"""The RBAC the operator and the webhook need, as data: the single source for the Helm
chart, the plain manifests and the e2e tests (which run the operator under exactly this)."""

from __future__ import annotations

from typing import Any

from celery_operator.api.kinds import KINDS, LIMIT_RANGE, NAMESPACE, POD, Resource, child_kinds

CHILD_VERBS = ["get", "list", "watch", "create", "patch", "update", "delete"]
UNWATCHED_CHILD_VERBS = ["get", "create", "patch", "update", "delete"]
READ = ["get", "list", "watch"]


def _by_group(resources: list[Resource], suffix: str = "") -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for r in resources:
        groups.setdefault(r.group, []).append(r.plural + suffix)
    return groups


def operator_rules() -> list[dict[str, Any]]:
    """From the table of kinds: read the kinds and write their status; create, repair and
    delete every child kind (never list or watch an unwatched one: Secrets); read what the
    operator only observes."""
    kinds = [k.resource for k in KINDS]
    rules: list[dict[str, Any]] = [
        # The kinds: read them, write only their status.
        *(
            {"apiGroups": [g], "resources": p, "verbs": list(READ)}
            for g, p in _by_group(kinds).items()
        ),
        *(
            {"apiGroups": [g], "resources": p, "verbs": ["get", "patch", "update"]}
            for g, p in _by_group(kinds, "/status").items()
        ),
    ]
    # Children it creates, repairs and deletes. An unwatched kind (Secrets: the apps'
    # connection Secrets are read, mirrors and KEDA credentials written) gets no list or
    # watch: the operator cannot enumerate the cluster's Secrets.
    for watched in (True, False):
        children = [c.resource for c in child_kinds() if c.watched == watched]
        verbs = CHILD_VERBS if watched else UNWATCHED_CHILD_VERBS
        rules += (
            {"apiGroups": [g], "resources": p, "verbs": list(verbs)}
            for g, p in _by_group(children).items()
        )
    return [
        *rules,
        # Its workers', beat's and Flower's pods: why they cannot run, for the status, and
        # the workers' deletion costs and drain marks (annotations only: patch, never
        # create or delete); namespaces: workerPoolPolicy selects them by label.
        {"apiGroups": [POD.group], "resources": [POD.plural], "verbs": [*READ, "patch"]},
        {"apiGroups": [NAMESPACE.group], "resources": [NAMESPACE.plural], "verbs": list(READ)},
        # Its Events on the users' objects (events.k8s.io/v1 only; kopf's core/v1 posting
        # is off): create, and patch a repeat's series count. Never read or delete.
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        # kopf discovers resources (KEDA's may appear later) through CRDs: read only.
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": list(READ),
        },
    ]


def operator_namespace_rules() -> list[dict[str, Any]]:
    """In the operator's own namespace: the leader election Lease. `create` cannot be
    limited by name, so it is granted in this namespace only."""
    return [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "create", "update"],
        }
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
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "rules": operator_namespace_rules(),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    ]


def webhook_cluster_rules(configuration: str = "celery-operator") -> list[dict[str, Any]]:
    return [
        # Admission reads the app a pool names, sibling pools, Flowers and namespace labels,
        # from watch-driven caches (no API round trip per review).
        *(
            {"apiGroups": [g], "resources": p, "verbs": list(READ)}
            for g, p in _by_group([*(k.resource for k in KINDS), NAMESPACE]).items()
        ),
        # A CPU/memory utilization target without a request passes when a LimitRange of
        # the namespace gives one: read them then.
        {"apiGroups": [LIMIT_RANGE.group], "resources": [LIMIT_RANGE.plural], "verbs": ["list"]},
        # The broker URL's scheme decides whether the built-in scaler can read it: get only.
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
        # May the requesting user get the Secrets a spec names? (No confused deputy.)
        {
            "apiGroups": ["authorization.k8s.io"],
            "resources": ["subjectaccessreviews"],
            "verbs": ["create"],
        },
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
