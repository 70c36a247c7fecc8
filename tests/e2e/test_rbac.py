"""The operator and webhook run (in every e2e test) under the Helm chart's ServiceAccounts
and RBAC; here `kubectl auth can-i` shows what they can NOT do."""

from __future__ import annotations

import pytest

from tests.support.cluster import Cluster
from tests.support.operator import NAMESPACE, OperatorProcess, chart_rbac

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

OPERATOR = f"system:serviceaccount:{NAMESPACE}:celery-operator"
WEBHOOK = f"system:serviceaccount:{NAMESPACE}:celery-operator-webhook"


def can(cluster: Cluster, who: str, *args: str) -> bool:
    r = cluster.run("auth", "can-i", *args, f"--as={who}")
    return r.stdout.strip() == "yes"


@pytest.fixture(scope="module")
def installed(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.apply(chart_rbac(cluster, "webhook-rbac.yaml"))  # the operator fixture applied its own


@pytest.mark.parametrize(
    ("who", "verb", "resource", "extra", "allowed"),
    [
        # What they need ...
        (OPERATOR, "get", "secrets", ("-n", "shop"), True),
        (OPERATOR, "patch", "deployments.apps", ("-n", "team-a"), True),
        (
            OPERATOR,
            "patch",
            "celeryworkerpools.celeryproject.org",
            ("-n", "team-a", "--subresource=status"),
            True,
        ),
        (WEBHOOK, "get", "secrets", ("-n", "shop"), True),
        (
            WEBHOOK,
            "patch",
            "validatingwebhookconfigurations.admissionregistration.k8s.io/celery-operator",
            (),
            True,
        ),
        # ... and not more: no enumerating Secrets anywhere,
        (OPERATOR, "list", "secrets", ("-A",), False),
        (OPERATOR, "watch", "secrets", ("-n", "shop"), False),
        (WEBHOOK, "list", "secrets", ("-A",), False),
        (WEBHOOK, "patch", "secrets", ("-n", "shop"), False),
        (WEBHOOK, "patch", "secrets/other", ("-n", NAMESPACE), False),
        # no writing the users' custom resources (status only), no other CRDs,
        (OPERATOR, "update", "celeryapps.celeryproject.org", ("-n", "shop"), False),
        (OPERATOR, "delete", "celeryworkerpools.celeryproject.org", ("-n", "team-a"), False),
        (OPERATOR, "create", "customresourcedefinitions.apiextensions.k8s.io", (), False),
        (OPERATOR, "get", "certificates.cert-manager.io", ("-n", "shop"), False),
        (WEBHOOK, "create", "celeryapps.celeryproject.org", ("-n", "shop"), False),
        # no pods, no RBAC, no other webhook configurations, no nodes.
        (OPERATOR, "create", "pods", ("-n", "shop"), False),
        (OPERATOR, "create", "clusterrolebindings.rbac.authorization.k8s.io", (), False),
        (
            WEBHOOK,
            "patch",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io/someone-else",
            (),
            False,
        ),
        (OPERATOR, "patch", "nodes", (), False),
        # Events: its own, in events.k8s.io (create, and patch a series), nothing more.
        (OPERATOR, "create", "events.events.k8s.io", ("-n", "shop"), True),
        (OPERATOR, "patch", "events.events.k8s.io", ("-n", "team-a"), True),
        (OPERATOR, "delete", "events.events.k8s.io", ("-n", "shop"), False),
        (OPERATOR, "list", "events.events.k8s.io", ("-A",), False),
        (OPERATOR, "create", "events", ("-n", "shop"), False),  # core/v1: not used
        (WEBHOOK, "create", "events.events.k8s.io", ("-n", "shop"), False),
    ],
)
def test_least_privilege(
    cluster: Cluster,
    installed: None,
    who: str,
    verb: str,
    resource: str,
    extra: tuple[str, ...],
    allowed: bool,
) -> None:
    assert can(cluster, who, verb, resource, *extra) is allowed
