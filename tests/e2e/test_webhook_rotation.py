"""Certificates rotate under a serving webhook: with short validities, the serving
certificate and the CA both change while the apiserver keeps getting answers, and the
caBundle follows the CA."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator

import pytest
import yaml
from cryptography import x509

from tests.e2e.test_controllers import pool
from tests.e2e.test_webhooks import ca_bundles
from tests.support.cluster import Cluster, wait_for
from tests.support.operator import OperatorProcess, WebhookProcess, new_workdir

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]


def serving_serial(port: int) -> int:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # we read the certificate, we do not trust it here
    import socket

    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


@pytest.fixture
def short_lived_webhook(
    cluster: Cluster, crds: list[str], operator: OperatorProcess
) -> Iterator[WebhookProcess]:
    wh = WebhookProcess(
        cluster,
        new_workdir(),
        "--ca-validity-seconds=24",
        "--cert-validity-seconds=9",
        "--rotation-check-seconds=0.5",
    )
    cluster.apply(wh.configurations())
    wh.start()
    try:
        wait_for("the caBundle to be injected", lambda: all(ca_bundles(cluster)), timeout=60)
        yield wh
    finally:
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
            cluster.run("delete", kind, "celery-operator", "--ignore-not-found")
        cluster.run(
            "delete",
            "secret",
            "rotation-test-ca",
            "-n",
            "celery-operator-system",
            "--ignore-not-found",
        )
        wh.stop()


def test_rotation_keeps_the_apiserver_answered(
    cluster: Cluster, short_lived_webhook: WebhookProcess, namespace: str
) -> None:
    wh = short_lived_webhook
    serials: set[int] = set()
    bundles: set[str] = set()
    answered = failed = 0
    failures: list[str] = []
    probe = yaml.safe_dump(pool(namespace, "probe"))
    deadline = time.monotonic() + 90
    # Until the serving certificate rotated twice and the CA once (bounded).
    while (len(serials) < 3 or len(bundles) < 2) and time.monotonic() < deadline:
        r = cluster.run("create", "--dry-run=server", "-o", "json", "-f", "-", input=probe)
        labels = json.loads(r.stdout)["metadata"].get("labels", {}) if r.code == 0 else {}
        if labels.get("celeryproject.org/app") == "shop":
            answered += 1
        else:
            failed += 1
            failures.append(r.stderr.strip()[-300:])
        serials.add(serving_serial(wh.port))
        bundles.add(ca_bundles(cluster)[0])
    print(
        f"\nrotation: {answered} answered, {failed} failed, {len(serials)} serving certs, {len(bundles)} CA bundles"
    )
    assert len(serials) >= 3, "the serving certificate did not rotate twice"
    assert len(bundles) >= 2, "the caBundle did not follow a CA rotation"
    assert failed == 0, failures[:3]
    assert set(ca_bundles(cluster)) == {ca_bundles(cluster)[0]}, (
        "every webhook carries the same bundle"
    )
    assert wh.errors() == [], wh.tail(40)
