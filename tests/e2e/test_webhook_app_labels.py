"""The app labels of pools and Flowers follow spec.appRef, on the real control plane:
set at CREATE, corrected at every UPDATE (also when only the labels were edited), and the
webhook's sibling-queue check follows the new app."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml

from tests.e2e.test_controllers import app, pool, secret
from tests.e2e.test_webhooks import FLOWER
from tests.support.cluster import Cluster, Result, wait_for
from tests.support.objects import deep_merge
from tests.support.operator import OperatorProcess, WebhookProcess
from tests.support.webhook import serving_webhook

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

APP_LABEL = "celeryproject.org/app"
APP_NS_LABEL = "celeryproject.org/app-namespace"


@pytest.fixture(scope="module")
def webhook(
    cluster: Cluster, crds: list[str], operator: OperatorProcess
) -> Iterator[WebhookProcess]:
    yield from serving_webhook(cluster)


def labels(cluster: Cluster, kind: str, name: str, ns: str) -> dict[str, str]:
    return dict(cluster.get(kind, name, ns)["metadata"].get("labels") or {})


def merge_patch(cluster: Cluster, kind: str, name: str, ns: str, patch: str) -> Result:
    r = cluster.run("patch", kind, name, "-n", ns, "--type=merge", "-p", patch)
    assert r.code == 0, r.stderr
    return r


def shared_queue_warnings(cluster: Cluster, obj: dict[str, object]) -> str:
    """The warnings a server-side dry run of `obj` prints (nothing is stored)."""
    r = cluster.run("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(obj))
    assert r.code == 0, r.stderr
    return r.stderr


def test_pool_app_label_follows_app_ref(
    cluster: Cluster, webhook: WebhookProcess, namespace: str
) -> None:
    emails = {"queues": ["emails"]}
    cluster.apply(
        [
            secret(namespace),
            app(namespace, "shop"),
            app(namespace, "billing"),
            pool(namespace, "shop-emails", app_name="shop", **emails),
            pool(namespace, "billing-emails", app_name="billing", **emails),
        ]
    )
    r = cluster.run(
        "apply", "-f", "-", input=yaml.safe_dump(pool(namespace, "moving", "shop", **emails))
    )
    assert r.code == 0, r.stderr
    assert f"also consumed by pool {namespace}/shop-emails" in r.stderr
    assert labels(cluster, "cwp", "moving", namespace)[APP_LABEL] == "shop"

    # appRef.name changes: the label follows, and the UPDATE is checked against billing's pools.
    r = merge_patch(
        cluster, "cwp", "moving", namespace, '{"spec": {"appRef": {"name": "billing"}}}'
    )
    assert f"also consumed by pool {namespace}/billing-emails" in r.stderr
    assert "shop-emails" not in r.stderr
    moved = labels(cluster, "cwp", "moving", namespace)
    assert moved[APP_LABEL] == "billing"
    assert moved[APP_NS_LABEL] == namespace
    found = cluster.kubectl(
        "get", "cwp", "-n", namespace, "-l", f"{APP_LABEL}=billing", "-o", "name"
    )
    assert sorted(found.split()) == [
        "celeryworkerpool.celeryproject.org/billing-emails",
        "celeryworkerpool.celeryproject.org/moving",
    ]

    # The sibling check of other pools sees the move too (the webhook's cache follows it).
    wait_for(
        "a new billing pool to be warned about the moved pool",
        lambda: (
            f"pool {namespace}/moving "
            in shared_queue_warnings(cluster, pool(namespace, "probe-billing", "billing", **emails))
        ),
    )
    shop_warnings = shared_queue_warnings(cluster, pool(namespace, "probe-shop", "shop", **emails))
    assert f"pool {namespace}/shop-emails " in shop_warnings
    assert f"pool {namespace}/moving " not in shop_warnings

    # A hand-edited label is put back: it is derived from the spec.
    r = cluster.run("label", "cwp", "moving", "-n", namespace, f"{APP_LABEL}=shop", "--overwrite")
    assert r.code == 0, r.stderr
    assert labels(cluster, "cwp", "moving", namespace)[APP_LABEL] == "billing"


def test_flower_app_label_follows_app_ref(
    cluster: Cluster, webhook: WebhookProcess, namespace: str
) -> None:
    flower = deep_merge(FLOWER, {"metadata": {"namespace": namespace}})
    flower["spec"].pop("basicAuth")
    cluster.apply([secret(namespace), app(namespace, "shop"), app(namespace, "billing"), flower])
    assert labels(cluster, "flower", "shop", namespace)[APP_LABEL] == "shop"
    merge_patch(cluster, "flower", "shop", namespace, '{"spec": {"appRef": {"name": "billing"}}}')
    assert labels(cluster, "flower", "shop", namespace)[APP_LABEL] == "billing"


def test_webhook_log_is_clean(webhook: WebhookProcess) -> None:
    assert webhook.errors() == [], webhook.tail(60)
