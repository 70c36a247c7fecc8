"""The webhook as a subprocess on 127.0.0.1, its configurations in URL mode: for e2e
modules that each run their own (a module-scoped fixture per module)."""

from __future__ import annotations

from collections.abc import Iterator

from celery_operator.certs.manager import DEFAULT_SECRET_NAME
from tests.support.cluster import Cluster, wait_for
from tests.support.operator import NAMESPACE, WebhookProcess, new_workdir


def serving_webhook(cluster: Cluster) -> Iterator[WebhookProcess]:
    """Starts the webhook, waits until the apiserver calls it, and stops it afterwards,
    leaving no trace: its configurations go (later modules are not gated by a dead
    webhook), and so does the CA Secret it created (a later webhook started with short
    validities, as in test_webhook_rotation, would otherwise adopt this year-long CA)."""
    from tests.e2e.test_webhooks import ca_bundles, wait_webhook_serving

    wh = WebhookProcess(cluster, new_workdir())
    cluster.apply(wh.configurations())  # URL mode, no caBundle: the webhook injects it
    wh.start()
    try:
        wait_for("the caBundle to be injected", lambda: all(ca_bundles(cluster)), timeout=60)
        wait_webhook_serving(cluster, cluster.create_namespace("probe"))
        yield wh
    finally:
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
            cluster.run("delete", kind, "celery-operator", "--ignore-not-found")
        wh.stop()
        cluster.run("delete", "secret", DEFAULT_SECRET_NAME, "-n", NAMESPACE, "--ignore-not-found")
        print(f"\n--- webhook log tail ---\n{wh.tail(30)}")
