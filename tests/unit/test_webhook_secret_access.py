"""No confused deputy: the Secrets a spec names, what counts as changed, and the verdicts
through the webhook's ASGI app (the SubjectAccessReview answered by a FixedLookup; the
apiserver's real answers are tested in tests/e2e/test_confused_deputy.py)."""

from __future__ import annotations

import copy
from typing import Any

from fastapi.testclient import TestClient

from celery_operator.webhooks.app import create_app
from celery_operator.webhooks.lookup import Access, access_of, access_review_spec
from celery_operator.webhooks.review import UserInfo, parse_review, parse_user_info
from celery_operator.webhooks.secretaccess import SecretRef, changed_refs, secret_refs
from tests.support.admission import FixedLookup, review
from tests.support.objects import deep_merge, example

APP = example("celeryapp/examples/shop.yaml")
POOL = example("celeryworkerpool/examples/shop-default.yaml")
FLOWER = example("flower/examples/shop.yaml")

FULL_APP = deep_merge(
    APP,
    {
        "spec": {
            "imagePullSecrets": [{"name": "regcred"}],
            "env": [
                {"name": "PLAIN", "value": "x"},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}},
                {"name": "CM", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
            ],
            "envFrom": [{"configMapRef": {"name": "cm"}}, {"secretRef": {"name": "bulk"}}],
        }
    },
)


def paths(refs: list[SecretRef]) -> list[tuple[str, str]]:
    return [(r.path, r.name) for r in refs]


# ---- which fields name Secrets (pure) -----------------------------------------------------
def test_every_secret_an_app_names() -> None:
    assert paths(secret_refs("CeleryApp", FULL_APP)) == [
        ("spec.broker.url.secretKeyRef.name", "shop-broker"),
        ("spec.resultBackend.url.secretKeyRef.name", "shop-backend"),
        ("spec.imagePullSecrets[0].name", "regcred"),
        ("spec.env[1].valueFrom.secretKeyRef.name", "api"),
        ("spec.envFrom[1].secretRef.name", "bulk"),
    ]


def test_every_secret_a_flower_and_a_pool_name() -> None:
    flower = deep_merge(FLOWER, {"spec": {"ingress": {"tls": {"secretName": "flower-tls"}}}})
    assert paths(secret_refs("Flower", flower)) == [
        ("spec.basicAuth.secretRef.name", "shop-flower-auth"),
        ("spec.ingress.tls.secretName", "flower-tls"),
    ]
    pool = deep_merge(POOL, {"spec": {"envFrom": [{"secretRef": {"name": "team-creds"}}]}})
    assert paths(secret_refs("CeleryWorkerPool", pool)) == [
        ("spec.envFrom[0].secretRef.name", "team-creds")
    ]
    assert secret_refs("CeleryWorkerPool", POOL) == []


POD_SECRETS = {
    "volumes": [
        {"name": "cfg", "configMap": {"name": "cm"}},
        {"name": "certs", "secret": {"secretName": "tls-certs"}},
        {
            "name": "bundle",
            "projected": {
                "sources": [{"configMap": {"name": "cm"}}, {"secret": {"name": "projected"}}]
            },
        },
        {"name": "csi", "csi": {"driver": "d", "nodePublishSecretRef": {"name": "kubelet-only"}}},
    ],
    "initContainers": [
        {"name": "init", "envFrom": [{"secretRef": {"name": "init-env"}}]},
    ],
    "sidecars": [
        {
            "name": "proxy",
            "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "proxy", "key": "k"}}}],
        }
    ],
}
POD_SECRET_PATHS = [
    ("volumes[1].secret.secretName", "tls-certs"),
    ("volumes[2].projected.sources[1].secret.name", "projected"),
    ("initContainers[0].envFrom[0].secretRef.name", "init-env"),
    ("sidecars[0].env[0].valueFrom.secretKeyRef.name", "proxy"),
]


def test_secrets_in_what_users_add_to_pods() -> None:
    """Secret volumes and the env of init containers and sidecars hand Secrets to pods too."""
    pool = deep_merge(POOL, {"spec": POD_SECRETS})
    assert paths(secret_refs("CeleryWorkerPool", pool)) == [
        (f"spec.{p}", n) for p, n in POD_SECRET_PATHS
    ]
    flower = deep_merge(
        FLOWER,
        {
            "spec": {
                **POD_SECRETS,
                "env": [
                    {"name": "S", "valueFrom": {"secretKeyRef": {"name": "oauth", "key": "s"}}}
                ],
            }
        },
    )
    assert paths(secret_refs("Flower", flower)) == [
        ("spec.basicAuth.secretRef.name", "shop-flower-auth"),
        ("spec.env[0].valueFrom.secretKeyRef.name", "oauth"),
        *((f"spec.{p}", n) for p, n in POD_SECRET_PATHS),
    ]
    app = deep_merge(
        APP,
        {
            "spec": {
                "podDefaults": {"volumes": POD_SECRETS["volumes"]},
                "beat": {"sidecars": POD_SECRETS["sidecars"]},
            }
        },
    )
    assert paths(secret_refs("CeleryApp", app))[2:] == [
        ("spec.podDefaults.volumes[1].secret.secretName", "tls-certs"),
        ("spec.podDefaults.volumes[2].projected.sources[1].secret.name", "projected"),
        ("spec.beat.sidecars[0].env[0].valueFrom.secretKeyRef.name", "proxy"),
    ]


def test_a_sidecar_naming_a_secret_the_user_may_not_get_is_forbidden() -> None:
    pool = deep_merge(POOL, {"spec": {"sidecars": POD_SECRETS["sidecars"]}})
    resp = validate("celeryworkerpools", pool, FixedLookup(secret_readers={}))
    assert not resp["allowed"]
    assert resp["status"]["code"] == 403
    assert (
        'spec.sidecars[0].env[0].valueFrom.secretKeyRef.name: user "alice" may not get secret '
        '"shop/proxy"' in resp["status"]["message"]
    )


def test_literal_urls_and_malformed_specs_name_nothing() -> None:
    literal = copy.deepcopy(APP)
    literal["spec"]["broker"]["url"] = {"value": "redis://r:6379/0"}
    literal["spec"].pop("resultBackend")
    assert secret_refs("CeleryApp", literal) == []
    for spec in (None, [], "x", {"env": "x", "envFrom": [1, None], "broker": {"url": []}}):
        assert secret_refs("CeleryApp", {"spec": spec}) == []
    assert secret_refs("CeleryApp", None) == []


# ---- what counts as changed (pure) ---------------------------------------------------------
def test_create_checks_every_reference() -> None:
    assert changed_refs("CeleryApp", FULL_APP, None) == secret_refs("CeleryApp", FULL_APP)


def test_an_unrelated_change_checks_nothing() -> None:
    new = deep_merge(FULL_APP, {"spec": {"image": "ghcr.io/example/shop:1.5.0", "paused": True}})
    assert changed_refs("CeleryApp", new, FULL_APP) == []


def test_reordering_or_inserting_list_entries_checks_nothing_new() -> None:
    new = copy.deepcopy(FULL_APP)
    new["spec"]["env"].insert(0, {"name": "NEW", "value": "1"})
    new["spec"]["envFrom"].reverse()
    assert changed_refs("CeleryApp", new, FULL_APP) == []


def test_a_new_name_key_or_use_is_checked() -> None:
    renamed = deep_merge(FULL_APP, {"spec": {"broker": {"url": {"secretKeyRef": {"name": "x"}}}}})
    assert paths(changed_refs("CeleryApp", renamed, FULL_APP)) == [
        ("spec.broker.url.secretKeyRef.name", "x")
    ]
    rekeyed = deep_merge(FULL_APP, {"spec": {"broker": {"url": {"secretKeyRef": {"key": "pw"}}}}})
    assert paths(changed_refs("CeleryApp", rekeyed, FULL_APP)) == [
        ("spec.broker.url.secretKeyRef.name", "shop-broker")
    ]
    # regcred was only pulled with; in envFrom its keys reach the pods.
    moved = copy.deepcopy(FULL_APP)
    moved["spec"]["envFrom"].append({"secretRef": {"name": "regcred"}})
    assert paths(changed_refs("CeleryApp", moved, FULL_APP)) == [
        ("spec.envFrom[2].secretRef.name", "regcred")
    ]


def test_a_new_worker_pool_policy_rechecks_the_mirrored_secrets_only() -> None:
    # The policy decides which namespaces get mirrors of the broker, backend and image
    # pull Secrets.
    wider = copy.deepcopy(FULL_APP)
    wider["spec"]["workerPoolPolicy"] = {"namespaceSelector": {}}
    assert paths(changed_refs("CeleryApp", wider, FULL_APP)) == [
        ("spec.broker.url.secretKeyRef.name", "shop-broker"),
        ("spec.resultBackend.url.secretKeyRef.name", "shop-backend"),
        ("spec.imagePullSecrets[0].name", "regcred"),
    ]


def test_flower_tls_and_basic_auth_changes() -> None:
    tls = deep_merge(FLOWER, {"spec": {"ingress": {"tls": {"secretName": "flower-tls"}}}})
    assert paths(changed_refs("Flower", tls, FLOWER)) == [
        ("spec.ingress.tls.secretName", "flower-tls")
    ]
    assert changed_refs("Flower", deep_merge(FLOWER, {"spec": {"port": 6000}}), FLOWER) == []


# ---- the SubjectAccessReview (pure) ------------------------------------------------------
def test_the_review_asks_about_exactly_the_requesting_user() -> None:
    user = parse_user_info(
        {
            "username": "alice",
            "uid": "u-1",
            "groups": ["team-a", "system:authenticated", 7],
            "extra": {"scopes": ["a", "b"], "bad": "not-a-list"},
        }
    )
    assert user == UserInfo(
        "alice", "u-1", ("team-a", "system:authenticated"), {"scopes": ("a", "b")}
    )
    assert access_review_spec(user, "shop", "shop-broker") == {
        "resourceAttributes": {
            "namespace": "shop",
            "verb": "get",
            "group": "",
            "version": "v1",
            "resource": "secrets",
            "name": "shop-broker",
        },
        "user": "alice",
        "groups": ["team-a", "system:authenticated"],
        "uid": "u-1",
        "extra": {"scopes": ["a", "b"]},
    }
    assert parse_user_info(None) == UserInfo()
    assert parse_review(review(APP)).user == UserInfo("alice")


def test_only_allowed_true_allows() -> None:
    assert access_of({"allowed": True}) == Access(True)
    assert access_of({"allowed": False, "reason": "no rule"}) == Access(False, "no rule")
    assert access_of({}) == Access(False)
    assert access_of({"allowed": "true", "evaluationError": "boom"}) == Access(False, "boom")


# ---- verdicts through the ASGI app --------------------------------------------------------
def validate(plural: str, obj: dict[str, Any], lk: FixedLookup, **kw: Any) -> dict[str, Any]:
    r = TestClient(create_app(lk)).post(f"/validate/{plural}", json=review(obj, **kw))
    assert r.status_code == 200
    return dict(r.json()["response"])


def readers(*entries: tuple[str, str, str]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for user, ns, name in entries:
        out.setdefault((ns, name), set()).add(user)
    return out


def test_naming_a_secret_the_user_may_not_get_is_forbidden() -> None:
    lk = FixedLookup(secret_readers=readers(("alice", "shop", "shop-backend")))
    resp = validate("celeryapps", APP, lk)
    assert not resp["allowed"]
    assert resp["status"]["code"] == 403
    assert resp["status"]["reason"] == "Forbidden"
    msg = resp["status"]["message"]
    assert msg.startswith(
        'CeleryApp shop/shop is invalid: spec.broker.url.secretKeyRef.name: user "alice" may '
        'not get secret "shop/shop-broker"'
    )
    assert 'ask for "get" on that Secret' in msg
    assert "shop-backend" not in msg
    assert lk.access_checks == [("alice", "shop", "shop-broker"), ("alice", "shop", "shop-backend")]


def test_a_user_who_may_get_the_secrets_is_admitted() -> None:
    lk = FixedLookup(
        secret_readers=readers(("alice", "shop", "shop-broker"), ("alice", "shop", "shop-backend"))
    )
    assert validate("celeryapps", APP, lk)["allowed"]


def test_one_review_per_secret_and_every_field_named() -> None:
    app = deep_merge(
        APP, {"spec": {"resultBackend": {"url": {"secretKeyRef": {"name": "shop-broker"}}}}}
    )
    lk = FixedLookup(secret_readers={})
    resp = validate("celeryapps", app, lk)
    msg = resp["status"]["message"]
    assert "spec.broker.url.secretKeyRef.name: user" in msg
    assert "spec.resultBackend.url.secretKeyRef.name: user" in msg
    assert lk.access_checks == [("alice", "shop", "shop-broker")]


def test_an_update_that_names_no_new_secret_makes_no_review() -> None:
    lk = FixedLookup(secret_readers={})
    new = deep_merge(APP, {"spec": {"paused": True}})
    assert validate("celeryapps", new, lk, operation="UPDATE", old=APP)["allowed"]
    relabelled = deep_merge(APP, {"metadata": {"labels": {"x": "y"}}})
    assert validate("celeryapps", relabelled, lk, operation="UPDATE", old=APP)["allowed"]
    assert lk.access_checks == []


def test_an_update_to_a_secret_the_user_may_not_get_is_forbidden() -> None:
    lk = FixedLookup(secret_readers={})
    new = deep_merge(APP, {"spec": {"broker": {"url": {"secretKeyRef": {"name": "other"}}}}})
    resp = validate("celeryapps", new, lk, operation="UPDATE", old=APP)
    assert not resp["allowed"]
    assert (
        'spec.broker.url.secretKeyRef.name: user "alice" may not get secret "shop/other"'
        in (resp["status"]["message"])
    )
    assert lk.access_checks == [("alice", "shop", "other")]


def test_errors_and_forbidden_secrets_come_in_one_message() -> None:
    bad = deep_merge(
        FLOWER,
        {
            "spec": {
                "ingress": {"enabled": True, "host": ""},
                "basicAuth": {"secretRef": {"name": "a"}},
            }
        },
    )
    resp = validate("flowers", bad, FixedLookup(secret_readers={}))
    msg = resp["status"]["message"]
    assert "spec.ingress.host: ingress.host is required" in msg
    assert 'spec.basicAuth.secretRef.name: user "alice" may not get secret "shop/a"' in msg
    assert resp["status"]["code"] == 403


def test_a_failed_review_refuses_the_request() -> None:
    resp = validate("celeryapps", APP, FixedLookup(access_fail=True))
    assert not resp["allowed"]
    msg = resp["status"]["message"]
    assert 'could not check whether user "alice" may get secret "shop/shop-broker"' in msg
    assert "the SubjectAccessReview failed (apiserver unreachable)" in msg
    assert "refused until the check succeeds" in msg


def test_a_failed_lookup_does_not_let_a_forbidden_secret_through() -> None:
    # Other lookups failing allow with a warning; the Secret check still holds.
    pool = deep_merge(POOL, {"spec": {"envFrom": [{"secretRef": {"name": "db"}}]}})
    resp = validate("celeryworkerpools", pool, FixedLookup(fail=True, secret_readers={}))
    assert not resp["allowed"]
    assert (
        'spec.envFrom[0].secretRef.name: user "alice" may not get secret "shop/db"'
        in (resp["status"]["message"])
    )
    ok = FixedLookup(fail=True, secret_readers=readers(("alice", "shop", "db")))
    resp = validate("celeryworkerpools", pool, ok)
    assert resp["allowed"]
    assert "could not check" in resp["warnings"][0]


def test_groups_reach_the_review() -> None:
    seen: list[UserInfo] = []

    class Recording(FixedLookup):
        def may_get_secret(self, user: UserInfo, namespace: str, name: str) -> Access:
            seen.append(user)
            return Access(True)

    user_info = {"username": "bob", "uid": "7", "groups": ["team-a"], "extra": {"k": ["v"]}}
    assert validate("flowers", FLOWER, Recording(), userInfo=user_info)["allowed"]
    assert seen == [UserInfo("bob", "7", ("team-a",), {"k": ("v",)})]
