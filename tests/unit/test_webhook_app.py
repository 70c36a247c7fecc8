"""The webhook app through its ASGI interface, with fixed answers about other objects."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from celery_operator.webhooks.app import create_app
from celery_operator.webhooks.lookup import app_ref_of
from celery_operator.webhooks.review import set_labels
from tests.support.admission import FixedLookup, decoded_patch, review
from tests.support.objects import deep_merge, example

APP = deep_merge(example("celeryapp/examples/shop.yaml"), {})
POOL = example("celeryworkerpool/examples/shop-default.yaml")
TEAM_POOL = example("celeryworkerpool/examples/team-a-emails.yaml")
FLOWER = example("flower/examples/shop.yaml")


def lookup(**kw: Any) -> FixedLookup:
    base = FixedLookup(
        apps={("shop", "shop"): APP},
        labels={"team-a": {"celeryproject.org/attach-to-shop": "true"}, "team-b": {}},
        secrets={("shop", "shop-broker", "url"): "redis://:pw@redis:6379/0"},
    )
    for k, v in kw.items():
        setattr(base, k, v)
    return base


def post(path: str, body: Any, lk: FixedLookup | None = None) -> tuple[int, dict[str, Any]]:
    client = TestClient(create_app(lk or lookup()))
    r = (
        client.post(path, json=body)
        if not isinstance(body, bytes)
        else client.post(path, content=body)
    )
    return r.status_code, r.json()


def verdict(
    path: str, obj: dict[str, Any], lk: FixedLookup | None = None, **kw: Any
) -> dict[str, Any]:
    code, body = post(path, review(obj, **kw), lk)
    assert code == 200
    assert body["apiVersion"] == "admission.k8s.io/v1"
    return dict(body["response"])


# ---- mutation -------------------------------------------------------------------------
def test_mutating_defaults_app_namespace_labels_and_queues() -> None:
    pool = deep_merge(POOL, {"spec": {"queues": [" celery", "celery", "emails "]}})
    resp = verdict("/mutate/celeryworkerpools", pool)
    assert resp["allowed"]
    ops = decoded_patch({"response": resp})
    assert {"op": "add", "path": "/spec/appRef/namespace", "value": "shop"} in ops
    assert {
        "op": "add",
        "path": "/metadata/labels",
        "value": {"celeryproject.org/app": "shop", "celeryproject.org/app-namespace": "shop"},
    } in ops
    assert {"op": "replace", "path": "/spec/queues", "value": ["celery", "emails"]} in ops


def test_app_labels_follow_the_spec_and_other_labels_are_left_alone() -> None:
    # The app labels are derived from spec.appRef: a value set by hand (or left from an
    # earlier appRef) is corrected; the user's own labels are not touched.
    pool = deep_merge(
        TEAM_POOL, {"metadata": {"labels": {"celeryproject.org/app": "mine", "team": "a"}}}
    )
    ops = decoded_patch({"response": verdict("/mutate/celeryworkerpools", pool)})
    assert ops == [
        {"op": "replace", "path": "/metadata/labels/celeryproject.org~1app", "value": "shop"},
        {"op": "add", "path": "/metadata/labels/celeryproject.org~1app-namespace", "value": "shop"},
    ]


def test_app_labels_follow_an_app_ref_changed_on_update() -> None:
    labelled = deep_merge(
        POOL,
        {
            "spec": {"appRef": {"namespace": "shop"}},
            "metadata": {
                "labels": {
                    "celeryproject.org/app": "shop",
                    "celeryproject.org/app-namespace": "shop",
                }
            },
        },
    )
    moved = deep_merge(labelled, {"spec": {"appRef": {"name": "billing"}}})
    resp = verdict("/mutate/celeryworkerpools", moved, operation="UPDATE", old=labelled)
    assert decoded_patch({"response": resp}) == [
        {"op": "replace", "path": "/metadata/labels/celeryproject.org~1app", "value": "billing"}
    ]
    flower = deep_merge(FLOWER, {"metadata": {"labels": {"celeryproject.org/app": "shop"}}})
    moved_flower = deep_merge(flower, {"spec": {"appRef": {"name": "billing"}}})
    resp = verdict("/mutate/flowers", moved_flower, operation="UPDATE", old=flower)
    assert decoded_patch({"response": resp}) == [
        {"op": "replace", "path": "/metadata/labels/celeryproject.org~1app", "value": "billing"},
        {"op": "add", "path": "/metadata/labels/celeryproject.org~1app-namespace", "value": "shop"},
    ]


def test_set_labels() -> None:
    want = {"a": "1", "b": "2"}
    assert set_labels({"metadata": {}}, want) == [
        {"op": "add", "path": "/metadata/labels", "value": want}
    ]
    assert set_labels({"metadata": {"labels": {"a": "1", "b": "2", "c": "3"}}}, want) == []
    assert set_labels({"metadata": {"labels": {"a": "0", "c": "3"}}}, want) == [
        {"op": "replace", "path": "/metadata/labels/a", "value": "1"},
        {"op": "add", "path": "/metadata/labels/b", "value": "2"},
    ]
    assert set_labels({"metadata": {}}, {}) == []


def test_siblings_are_found_by_spec_app_ref() -> None:
    # Labels may be missing or stale (written while the mutating webhook was down); the
    # sibling lookup reads the spec. The namespace defaults to the pool's own.
    assert app_ref_of(POOL) == ("shop", "shop")
    assert app_ref_of(TEAM_POOL) == ("shop", "shop")
    assert app_ref_of({"spec": {"appRef": {"name": "b"}}, "metadata": {"namespace": "t"}}) == (
        "t",
        "b",
    )
    assert app_ref_of({"spec": None, "metadata": []}) == ("", "")


def test_mutation_is_idempotent() -> None:
    once = decoded_patch({"response": verdict("/mutate/celeryworkerpools", POOL)})
    import jsonpatch

    patched = jsonpatch.apply_patch(POOL, once)
    assert decoded_patch({"response": verdict("/mutate/celeryworkerpools", patched)}) == []


def test_flower_gets_app_labels() -> None:
    ops = decoded_patch({"response": verdict("/mutate/flowers", FLOWER)})
    assert ops == [
        {
            "op": "add",
            "path": "/metadata/labels",
            "value": {"celeryproject.org/app": "shop", "celeryproject.org/app-namespace": "shop"},
        }
    ]


# ---- validation -----------------------------------------------------------------------
def test_valid_objects_are_allowed() -> None:
    for path, obj in (
        ("celeryapps", APP),
        ("celeryworkerpools", POOL),
        ("celeryworkerpools", TEAM_POOL),
        ("flowers", FLOWER),
    ):
        resp = verdict(f"/validate/{path}", obj)
        assert resp["allowed"], resp


def test_all_errors_of_one_object_in_one_message() -> None:
    bad = deep_merge(
        POOL,
        {
            "spec": {
                "pool": "solo",
                "concurrency": 3,
                "shutdown": {"terminationGracePeriodSeconds": 10, "softShutdownTimeout": 20},
            }
        },
    )
    resp = verdict("/validate/celeryworkerpools", bad)
    assert not resp["allowed"]
    msg = resp["status"]["message"]
    assert msg.startswith("CeleryWorkerPool shop/default is invalid: ")
    assert "spec.concurrency: concurrency must be 1 when pool is solo" in msg
    assert (
        "spec.shutdown.softShutdownTimeout: shutdown.softShutdownTimeout must be less than" in msg
    )
    assert resp["status"]["code"] == 422


def test_pool_from_namespace_not_admitted_is_rejected() -> None:
    pool = deep_merge(TEAM_POOL, {"metadata": {"namespace": "team-b"}})
    resp = verdict("/validate/celeryworkerpools", pool)
    assert not resp["allowed"]
    assert (
        "spec.appRef: CeleryApp shop/shop does not admit pools from namespace team-b"
        in resp["status"]["message"]
    )


def test_missing_app_is_a_warning() -> None:
    resp = verdict("/validate/celeryworkerpools", POOL, lookup(apps={}))
    assert resp["allowed"]
    assert any("does not exist (yet)" in w for w in resp["warnings"])


def test_literal_url_with_password_is_rejected() -> None:
    app = deep_merge(APP, {})
    app["spec"]["broker"]["url"] = {"value": "amqp://user:secret@rabbit:5672//"}
    resp = verdict("/validate/celeryapps", app)
    assert not resp["allowed"]
    assert (
        "spec.broker.url.value: a URL with a password must not be written in the spec"
        in resp["status"]["message"]
    )
    assert "secret" not in resp["status"]["message"].split("spec")[0]


def test_builtin_engine_with_sqs_broker_is_rejected() -> None:
    lk = lookup(secrets={("shop", "shop-broker", "url"): "sqs://AKIA:key@"})
    resp = verdict("/validate/celeryworkerpools", TEAM_POOL, lk)
    assert not resp["allowed"]
    assert (
        "spec.autoscaling.queueLength.engine: builtin reads Redis and RabbitMQ queues, not a sqs:// broker"
        in resp["status"]["message"]
    )


def test_keda_engine_without_keda_is_rejected() -> None:
    pool = deep_merge(TEAM_POOL, {"spec": {"autoscaling": {"queueLength": {"engine": "keda"}}}})
    resp = verdict("/validate/celeryworkerpools", pool, lookup(keda=False))
    assert not resp["allowed"]
    assert "the KEDA CRDs" in resp["status"]["message"]


def test_second_flower_is_rejected() -> None:
    other = deep_merge(FLOWER, {"metadata": {"name": "first"}})
    resp = verdict("/validate/flowers", FLOWER, lookup(flower_list=[other]))
    assert not resp["allowed"]
    assert "already has a Flower (first)" in resp["status"]["message"]


def test_shared_queue_and_latest_image_are_warnings() -> None:
    sibling = deep_merge(POOL, {"metadata": {"name": "other"}})
    pool = deep_merge(POOL, {"spec": {"image": "shop:latest"}})
    resp = verdict("/validate/celeryworkerpools", pool, lookup(pools=[sibling]))
    assert resp["allowed"]
    assert any("also consumed by pool shop/other" in w for w in resp["warnings"])
    assert any("tagged latest" in w for w in resp["warnings"])


def test_delete_and_metadata_only_updates_are_never_blocked() -> None:
    bad = deep_merge(POOL, {"spec": {"pool": "solo", "concurrency": 3}})
    assert verdict("/validate/celeryworkerpools", None, operation="DELETE", old=bad)["allowed"]
    with_finalizer = deep_merge(bad, {"metadata": {"finalizers": ["x"]}})
    assert verdict("/validate/celeryworkerpools", with_finalizer, operation="UPDATE", old=bad)[
        "allowed"
    ]


def test_lookup_failure_allows_with_a_warning() -> None:
    resp = verdict("/validate/celeryworkerpools", POOL, lookup(fail=True))
    assert resp["allowed"]
    assert "could not check" in resp["warnings"][0]


def test_model_errors_name_their_field() -> None:
    bad = deep_merge(POOL, {"spec": {"concurrency": "many"}})
    resp = verdict("/validate/celeryworkerpools", bad)
    assert not resp["allowed"]
    assert "spec.concurrency: Input should be a valid integer" in resp["status"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}',
        b"\xff\xfe",
    ],
)
def test_a_body_that_is_not_a_review_gets_400(body: bytes) -> None:
    code, resp = post("/validate/celeryapps", body)
    assert code == 400
    assert "not an AdmissionReview" in resp["error"]


def test_health_and_metrics() -> None:
    client = TestClient(create_app(lookup()))
    assert client.get("/healthz").text == "ok"
    assert client.get("/readyz").status_code == 200
    client.post("/validate/celeryapps", json=review(APP))
    text = client.get("/metrics").text
    assert (
        'celery_operator_webhook_reviews_total{allowed="true",kind="CeleryApp",operation="CREATE",webhook="validate"} 1.0'
        in text
    )
    not_ready = TestClient(create_app(lookup(), ready=lambda: False))
    assert not_ready.get("/readyz").status_code == 503


def test_a_cpu_target_without_requests_is_refused_unless_a_limit_range_gives_them() -> None:
    """Admission looks at the namespace's LimitRanges only when a request is missing; if
    they cannot be read it warns instead of refusing what one of them may fix."""
    no_requests = {"resources": {"requests": None, "limits": {"memory": "1Gi"}}}
    hpa = {"autoscaling": {"minReplicas": 1, "maxReplicas": 3, "cpu": {"averageUtilization": 60}}}
    pool = deep_merge(POOL, {"spec": {**no_requests, **hpa}})
    resp = verdict("/validate/celeryworkerpools", pool)
    assert not resp["allowed"]
    assert "spec.autoscaling.cpu: a cpu utilization target" in resp["status"]["message"]
    assert "set spec.resources.requests.cpu" in resp["status"]["message"]
    defaults = lookup(limit_defaults={"shop": frozenset({"cpu", "memory"})})
    assert verdict("/validate/celeryworkerpools", pool, defaults)["allowed"]
    unreadable = verdict("/validate/celeryworkerpools", pool, lookup(limit_defaults=None))
    assert unreadable["allowed"]
    assert any("LimitRanges could not be read" in w for w in unreadable["warnings"])
