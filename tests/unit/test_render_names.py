"""Property tests: whatever names users choose, builders emit valid names and labels."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from celery_operator.render import celeryapp, celeryworkerpool, flower
from celery_operator.render import common as c
from tests.support import objects as o

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

# Names Kubernetes accepts for our custom resources: DNS-1123 subdomains up to 253 chars.
_label = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True)
subdomain = st.lists(_label, min_size=1, max_size=4).map(".".join).filter(lambda s: len(s) <= 253)
namespace = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True)


def _check_labels(labels: dict[str, str]) -> None:
    for key, value in labels.items():
        assert len(value) <= 63, (key, value)
        assert LABEL_VALUE.match(value), (key, value)


def _check_object(obj: dict[str, Any], max_name: int = 63) -> None:
    name = obj["metadata"]["name"]
    assert len(name) <= max_name, name
    assert DNS_LABEL.match(name), name
    _check_labels(obj["metadata"]["labels"])
    spec = obj["spec"]
    if "template" in spec:
        _check_labels(spec["template"]["metadata"]["labels"])
        _check_labels(spec["selector"]["matchLabels"])
        # Pod names: <deployment>-<10-char rs hash>-<5 chars> must stay a DNS label.
        assert len(name) + 17 <= 63 + 1, name


@settings(max_examples=200, deadline=None)
@given(app_name=subdomain, pool_name=subdomain, ns=namespace)
def test_worker_objects_have_valid_names(app_name: str, pool_name: str, ns: str) -> None:
    app = o.app(metadata={"name": app_name, "namespace": ns})
    pool = o.pool(metadata={"name": pool_name, "namespace": ns})
    deploy = celeryworkerpool.build_worker_deployment(app, pool, None, replicas=1)
    _check_object(deploy, c.MAX_DEPLOYMENT_NAME)
    pdb = celeryworkerpool.build_worker_pdb(app, pool, None)
    assert pdb is not None
    _check_object(pdb)
    # The selector is a subset of the pod labels (or the Deployment is rejected).
    selector = deploy["spec"]["selector"]["matchLabels"]
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()


@settings(max_examples=200, deadline=None)
@given(app_name=subdomain, flower_name=subdomain, ns=namespace)
def test_flower_and_beat_objects_have_valid_names(app_name: str, flower_name: str, ns: str) -> None:
    app = o.app(metadata={"name": app_name, "namespace": ns})
    fl = o.flower(
        metadata={"name": flower_name, "namespace": ns},
        spec={"ingress": {"enabled": True, "host": "f.example.com"}},
    )
    _check_object(celeryapp.build_beat_deployment(app, None), c.MAX_DEPLOYMENT_NAME)
    svc = flower.build_flower_service(app, fl, None)
    _check_object(svc)
    assert DNS_1035.match(svc["metadata"]["name"]), "Service names must start with a letter"
    _check_object(flower.build_flower_deployment(app, fl, None), c.MAX_DEPLOYMENT_NAME)
    ingress = flower.build_flower_ingress(app, fl, None)
    assert ingress is not None
    assert (
        ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"]
        == (svc["metadata"]["name"])
    )


@given(a=subdomain, b=subdomain)
def test_distinct_pools_get_distinct_deployment_names(a: str, b: str) -> None:
    if a != b:
        assert c.worker_deployment_name("app", a) != c.worker_deployment_name("app", b) or (
            a.replace(".", "-") == b.replace(".", "-")
        )


@given(st.text(min_size=1, max_size=300))
def test_label_value_is_always_valid(value: str) -> None:
    out = c.label_value(value)
    assert len(out) <= 63
    assert LABEL_VALUE.match(out)
