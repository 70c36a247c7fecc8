"""Property-based fuzzing of AdmissionReview bodies: never a 5xx, never a crash; always a
well-formed AdmissionReview response, or a 400 for a body that is not one."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_operator.webhooks.app import create_app
from tests.support.admission import FixedLookup, review
from tests.support.objects import example

CLIENT = TestClient(create_app(FixedLookup()), raise_server_exceptions=True)
PATHS = [
    f"/{w}/{p}"
    for w in ("mutate", "validate")
    for p in ("celeryapps", "celeryworkerpools", "flowers")
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


def _check(path: str, body: bytes) -> None:
    r = CLIENT.post(path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code in (200, 400), (r.status_code, r.text)
    data = r.json()
    if r.status_code == 200:
        assert data["apiVersion"] == "admission.k8s.io/v1"
        assert data["kind"] == "AdmissionReview"
        resp = data["response"]
        assert isinstance(resp["uid"], str)
        assert isinstance(resp["allowed"], bool)
        if not resp["allowed"]:
            assert resp["status"]["message"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), body=json_values)
def test_arbitrary_json(path: str, body: Any) -> None:
    _check(path, json.dumps(body).encode())


@settings(max_examples=100, deadline=None)
@given(path=st.sampled_from(PATHS), body=st.binary(max_size=200))
def test_arbitrary_bytes(path: str, body: bytes) -> None:
    _check(path, body)


BASES = [
    example("celeryapp/examples/shop.yaml"),
    example("celeryworkerpool/examples/team-a-emails.yaml"),
    example("flower/examples/shop.yaml"),
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.sampled_from(PATHS),
    base=st.sampled_from(BASES),
    spec_patch=st.dictionaries(
        st.sampled_from(
            [
                "app",
                "image",
                "broker",
                "queues",
                "concurrency",
                "pool",
                "autoscaling",
                "appRef",
                "shutdown",
                "ingress",
                "urlPrefix",
                "replicas",
                "env",
            ]
        ),
        json_values,
        max_size=3,
    ),
    operation=st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT"]),
    dry_run=st.booleans(),
)
def test_mangled_reviews_of_real_objects(
    path: str, base: dict[str, Any], spec_patch: dict[str, Any], operation: str, dry_run: bool
) -> None:
    obj = json.loads(json.dumps(base))
    obj["spec"].update(spec_patch)
    body = review(
        obj, operation=operation, old=base if operation == "UPDATE" else None, dryRun=dry_run
    )
    _check(path, json.dumps(body).encode())
