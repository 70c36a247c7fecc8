"""Admission through kubectl on the real control plane: the webhook runs as a subprocess
under its own ServiceAccount, with certificates it issues and a caBundle it injects."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.e2e.test_controllers import app, pool, secret
from tests.support.cluster import Cluster, wait_for
from tests.support.objects import deep_merge, example
from tests.support.operator import OperatorProcess, WebhookProcess, new_workdir

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

FLOWER = example("flower/examples/shop.yaml")
ADMIT_LABEL = "celeryproject.org/attach-to-shop"


def ca_bundles(cluster: Cluster) -> list[str]:
    out = []
    for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
        cfg = cluster.get(kind, "celery-operator")
        out += [w["clientConfig"].get("caBundle", "") for w in cfg["webhooks"]]
    return out


def wait_webhook_serving(cluster: Cluster, namespace: str) -> None:
    """Until the apiserver calls the webhook: a dry-run pool comes back with its labels."""

    def mutated() -> bool:
        r = cluster.run(
            "create",
            "--dry-run=server",
            "-o",
            "json",
            "-f",
            "-",
            input=yaml.safe_dump(pool(namespace, "probe")),
        )
        labels = json.loads(r.stdout)["metadata"].get("labels", {}) if r.code == 0 else {}
        return labels.get("celeryproject.org/app") == "shop"

    wait_for("the apiserver to call the webhook", mutated, timeout=60)


@pytest.fixture(scope="module")
def webhook(
    cluster: Cluster, crds: list[str], operator: OperatorProcess
) -> Iterator[WebhookProcess]:
    wh = WebhookProcess(cluster, new_workdir())
    cluster.apply(wh.configurations())  # URL mode, no caBundle: the webhook injects it
    wh.start()
    try:
        wait_for("the caBundle to be injected", lambda: all(ca_bundles(cluster)), timeout=60)
        probe_ns = cluster.create_namespace("probe")
        wait_webhook_serving(cluster, probe_ns)
        yield wh
    finally:
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
            cluster.run("delete", kind, "celery-operator", "--ignore-not-found")
        wh.stop()
        print(f"\n--- webhook log tail ---\n{wh.tail(30)}")


def rejected(cluster: Cluster, obj: dict[str, Any] | list[dict[str, Any]], *extra: str) -> str:
    docs = obj if isinstance(obj, list) else [obj]
    r = cluster.run("apply", *extra, "-f", "-", input=yaml.safe_dump_all(docs))
    assert r.code != 0, f"accepted: {r.stdout}"
    return r.stderr


def test_pool_from_a_namespace_the_app_does_not_admit(
    cluster: Cluster, webhook: WebhookProcess, namespace: str
) -> None:
    team = cluster.create_namespace("team")
    cluster.apply([secret(namespace), app(namespace)])
    err = rejected(cluster, pool(team, "emails", app_ns=namespace))
    assert 'admission webhook "vceleryworkerpool.celeryproject.org" denied the request' in err
    assert (
        f"spec.appRef: CeleryApp {namespace}/shop does not admit pools from namespace {team}" in err
    )
    assert "workerPoolPolicy.namespaceSelector" in err
    cluster.kubectl("label", "namespace", team, f"{ADMIT_LABEL}=true")
    cluster.apply(pool(team, "emails", app_ns=namespace))  # admitted now


def test_second_flower_for_one_app(
    cluster: Cluster, webhook: WebhookProcess, namespace: str
) -> None:
    cluster.apply(
        [
            secret(namespace),
            app(namespace),
            deep_merge(FLOWER, {"metadata": {"namespace": namespace}, "spec": {"basicAuth": None}}),
        ]
    )
    second = deep_merge(
        FLOWER,
        {"metadata": {"namespace": namespace, "name": "another"}, "spec": {"basicAuth": None}},
    )
    err = rejected(cluster, second)
    assert (
        "spec.appRef.name: CeleryApp shop already has a Flower (shop); an app has at most one"
        in err
    )


def test_literal_url_with_password(
    cluster: Cluster, webhook: WebhookProcess, namespace: str
) -> None:
    bad = app(namespace)
    bad["spec"]["broker"]["url"] = {"value": "redis://:hunter2@redis:6379/0"}
    err = rejected(cluster, bad)
    assert (
        "spec.broker.url.value: a URL with a password must not be written in the spec; put it in a Secret"
        in err
    )
    assert "hunter2" not in err


def test_builtin_engine_with_an_sqs_broker(
    cluster: Cluster, webhook: WebhookProcess, namespace: str
) -> None:
    cluster.apply([secret(namespace, url="sqs://AKIAEXAMPLE:key@"), app(namespace)])
    scaled = pool(namespace, autoscaling={"maxReplicas": 5, "queueLength": {"engine": "builtin"}})
    err = rejected(cluster, scaled)
    assert (
        "spec.autoscaling.queueLength.engine: builtin reads Redis and RabbitMQ queues, not a sqs:// broker"
        in err
    )


def test_keda_engine_follows_keda_installation(
    cluster: Cluster, webhook: WebhookProcess, namespace: str
) -> None:
    crds = ("scaledobjects.keda.sh", "triggerauthentications.keda.sh")
    installed = all(cluster.exists("crd", c) for c in crds)
    cluster.apply([secret(namespace), app(namespace)])
    keda_pool = pool(namespace, autoscaling={"maxReplicas": 5, "queueLength": {"engine": "keda"}})
    try:
        for c in crds:
            cluster.run("delete", "crd", c, "--ignore-not-found", "--wait=true")
        try:
            wait_for(
                "keda.sh to leave discovery",
                lambda: (
                    "scaledobjects"
                    not in cluster.run("get", "--raw", "/apis/keda.sh/v1alpha1").stdout
                ),
            )
        except AssertionError as e:
            state = cluster.run("get", "crd", *crds, "-o", "jsonpath={.items[*].status.conditions}")
            left = cluster.run(
                "get", "scaledobjects.keda.sh,triggerauthentications.keda.sh", "-A", "-o", "wide"
            )
            raise AssertionError(
                f"{e}; CRDs: {state.stdout} {state.stderr}; left: {left.stdout} {left.stderr}"
            ) from None
        err = rejected(cluster, keda_pool)
        assert (
            "spec.autoscaling.queueLength.engine: keda: the KEDA CRDs (keda.sh/v1alpha1 ScaledObject) are not installed"
            in err
        )
        assert cluster.keda_crds is not None
        cluster.kubectl("apply", "--server-side", "-f", str(cluster.keda_crds))
        cluster.wait_established(*crds)
        wait_for(
            "keda.sh in discovery",
            lambda: cluster.run("get", "--raw", "/apis/keda.sh/v1alpha1").code == 0,
        )
        cluster.apply(keda_pool)  # accepted once KEDA is there
    finally:
        if installed and cluster.keda_crds is not None:
            cluster.kubectl(
                "apply", "--server-side", "--force-conflicts", "-f", str(cluster.keda_crds)
            )
            cluster.wait_established(*crds)


def test_warnings_are_printed_and_the_object_is_created(
    cluster: Cluster, webhook: WebhookProcess, namespace: str
) -> None:
    # An app that does not exist yet: CRs applied together arrive in any order.
    r = cluster.run("apply", "-f", "-", input=yaml.safe_dump(pool(namespace, "early")))
    assert r.code == 0, r.stderr
    assert f"Warning: spec.appRef: CeleryApp {namespace}/shop does not exist (yet)" in r.stderr
    assert cluster.exists("cwp", "early", namespace)

    cluster.apply([secret(namespace), app(namespace)])
    twin = pool(namespace, "twin", image="ghcr.io/example/shop:latest")
    r = cluster.run("apply", "-f", "-", input=yaml.safe_dump(twin))
    assert r.code == 0, r.stderr
    assert (
        f"Warning: spec.queues: queue(s) celery also consumed by pool {namespace}/early of the same app"
        in r.stderr
    )
    assert "Warning: spec.image: image 'ghcr.io/example/shop:latest' is tagged latest" in r.stderr
    assert cluster.exists("cwp", "twin", namespace)


def test_mutating_defaults_and_labels(
    cluster: Cluster, webhook: WebhookProcess, namespace: str
) -> None:
    cluster.apply(
        [
            secret(namespace),
            app(namespace),
            pool(namespace, queues=["celery", " celery ", "emails"]),
        ]
    )
    obj = cluster.get("cwp", "default", namespace)
    assert obj["spec"]["appRef"] == {"name": "shop", "namespace": namespace}
    assert obj["spec"]["queues"] == ["celery", "emails"]
    assert obj["metadata"]["labels"]["celeryproject.org/app"] == "shop"
    assert obj["metadata"]["labels"]["celeryproject.org/app-namespace"] == namespace
    names = cluster.kubectl(
        "get", "cwp", "-n", namespace, "-l", "celeryproject.org/app=shop", "-o", "name"
    )
    assert names.split() == ["celeryworkerpool.celeryproject.org/default"]


def test_server_dry_run_gives_the_same_verdicts_and_persists_nothing(
    cluster: Cluster, webhook: WebhookProcess, namespace: str
) -> None:
    team = cluster.create_namespace("team")
    cluster.apply([secret(namespace), app(namespace)])
    err = rejected(cluster, pool(team, "emails", app_ns=namespace), "--dry-run=server")
    assert "does not admit pools from namespace" in err
    r = cluster.run(
        "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(pool(namespace, "dry"))
    )
    assert r.code == 0, r.stderr
    assert not cluster.exists("cwp", "dry", namespace)


def test_changing_an_immutable_field_is_rejected(
    cluster: Cluster, webhook: WebhookProcess, namespace: str
) -> None:
    cluster.apply([secret(namespace), app(namespace), pool(namespace)])
    moved = pool(namespace, app_ns="elsewhere")
    err = rejected(cluster, moved)
    assert "appRef.namespace is immutable" in err


def test_deletes_are_never_blocked(
    cluster: Cluster, webhook: WebhookProcess, namespace: str
) -> None:
    cluster.apply([secret(namespace), app(namespace), pool(namespace)])
    cluster.kubectl("delete", "celeryapp", "shop", "-n", namespace)
    cluster.kubectl("delete", "cwp", "default", "-n", namespace)


def test_webhook_log_is_clean(webhook: WebhookProcess) -> None:
    assert webhook.errors() == [], webhook.tail(60)
