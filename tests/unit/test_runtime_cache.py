"""The operator's cache: its index by app, its order of writes and watch events, what it keeps."""

from __future__ import annotations

import copy
from typing import Any

from celery_operator.controllers.cache import Cache
from celery_operator.k8s.objects import LAST_APPLIED, compare_resource_versions


def pool(ns: str, name: str, app: str, app_ns: str | None = None) -> dict[str, Any]:
    ref = {"name": app} | ({"namespace": app_ns} if app_ns else {})
    return {"metadata": {"namespace": ns, "name": name}, "spec": {"appRef": ref}}


def flower(ns: str, name: str, app: str) -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name}, "spec": {"appRef": {"name": app}}}


def names(objs: list[dict[str, Any]]) -> list[str]:
    return [o["metadata"]["name"] for o in objs]


def test_pools_are_found_by_their_app_including_other_namespaces() -> None:
    c = Cache()
    c.put("CeleryWorkerPool", ("a", "p1"), pool("a", "p1", "shop"))
    c.put("CeleryWorkerPool", ("team", "p2"), pool("team", "p2", "shop", app_ns="a"))
    c.put("CeleryWorkerPool", ("a", "p3"), pool("a", "p3", "other"))
    c.put("CeleryWorkerPool", ("b", "p4"), pool("b", "p4", "shop"))  # app b/shop, not a/shop
    assert names(c.of_app("CeleryWorkerPool", ("a", "shop"))) == ["p1", "p2"]
    assert names(c.of_app("CeleryWorkerPool", ("b", "shop"))) == ["p4"]
    assert c.keys_of_app("CeleryWorkerPool", ("a", "shop")) == [("a", "p1"), ("team", "p2")]
    assert c.of_app("CeleryWorkerPool", ("a", "nothing")) == []


def test_a_pool_that_moves_to_another_app_leaves_the_first() -> None:
    c = Cache()
    c.put("CeleryWorkerPool", ("a", "p1"), pool("a", "p1", "shop"))
    c.put("CeleryWorkerPool", ("a", "p1"), pool("a", "p1", "billing"))
    assert c.of_app("CeleryWorkerPool", ("a", "shop")) == []
    assert names(c.of_app("CeleryWorkerPool", ("a", "billing"))) == ["p1"]
    assert c.by_app["CeleryWorkerPool"] == {("a", "billing"): {("a", "p1")}}


def test_deleted_objects_leave_the_index() -> None:
    c = Cache()
    c.put("CeleryWorkerPool", ("a", "p1"), pool("a", "p1", "shop"))
    c.put("Flower", ("a", "f"), flower("a", "f", "shop"))
    c.put("CeleryWorkerPool", ("a", "p1"), None)
    c.put("Flower", ("a", "f"), None)
    assert c.of_app("CeleryWorkerPool", ("a", "shop")) == []
    assert c.of_app("Flower", ("a", "shop")) == []
    assert c.by_app == {"CeleryWorkerPool": {}, "Flower": {}}


def test_the_latest_body_is_returned() -> None:
    c = Cache()
    c.put("Flower", ("a", "f"), flower("a", "f", "shop"))
    newer = flower("a", "f", "shop") | {"status": {"readyReplicas": 1}}
    c.put("Flower", ("a", "f"), newer)
    assert c.of_app("Flower", ("a", "shop")) == [newer]


def test_apps_are_not_indexed() -> None:
    c = Cache()
    c.put("CeleryApp", ("a", "shop"), {"metadata": {"namespace": "a", "name": "shop"}, "spec": {}})
    assert c.get("CeleryApp", ("a", "shop")) is not None
    assert set(c.by_app) == {"CeleryWorkerPool", "Flower"}


def child(rv: str, uid: str = "c1", ready: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "namespace": "a",
            "name": "w",
            "uid": uid,
            "resourceVersion": rv,
            "generation": 1,
            "ownerReferences": [{"uid": "owner", "controller": True, "name": "p"}],
        },
    }
    if ready is not None:
        body["status"] = {"readyReplicas": ready}
    return body


IDENT = ("apps/v1/Deployment", "a", "w")


def test_resource_versions_compare_as_kep_5504_says() -> None:
    assert compare_resource_versions("9", "10") == -1
    assert compare_resource_versions("100", "99") == 1
    assert compare_resource_versions("123", "123") == 0
    assert compare_resource_versions("124", "123") == 1
    for bad in ("", "0", "012", "12a", "-1", "١٢"):  # the last: Arabic-Indic digits
        assert compare_resource_versions(bad, "5") is None
        assert compare_resource_versions("5", bad) is None


def test_the_answer_to_a_write_never_replaces_a_newer_watch_event() -> None:
    c = Cache()
    c.put_child(child("20", ready=1), deleted=False)  # the watch: Deployment is ready
    c.put_child(child("15"), deleted=False, from_write=True)  # our apply's late answer
    assert c.child("owner", *IDENT) == child("20", ready=1)
    c.put_child(child("25", ready=0), deleted=False, from_write=True)  # newer: taken
    assert c.child("owner", *IDENT) == child("25", ready=0)
    c.put_child(child("24", ready=1), deleted=False)  # the watch is always believed
    assert c.child("owner", *IDENT) == child("24", ready=1)


def test_the_answer_to_a_write_does_not_revive_a_deleted_child() -> None:
    c = Cache()
    c.put_child(child("20"), deleted=True)
    c.put_child(child("15"), deleted=False, from_write=True)
    assert c.child("owner", *IDENT) is None
    assert c.owned("owner") == {}
    # The same name with a new uid (re-created) is a different object.
    c.put_child(child("30", uid="c2"), deleted=False, from_write=True)
    assert c.child("owner", *IDENT) == child("30", uid="c2")


def test_unordered_versions_fall_back_to_the_latest_call() -> None:
    c = Cache()
    c.put_child(child("abc", ready=1), deleted=False)
    c.put_child(child("abd"), deleted=False, from_write=True)
    assert c.child("owner", *IDENT) == child("abd")


def test_the_cache_keeps_bodies_without_other_managers_fields_last_applied_or_template() -> None:
    ours = {"manager": "celery-operator", "operation": "Apply", "fieldsV1": {"f:spec": {}}}
    body = child("7", ready=1)
    body["metadata"]["managedFields"] = [
        ours,
        {"manager": "kube-controller-manager", "operation": "Update", "fieldsV1": {}},
        {"manager": "celery-operator", "operation": "Update", "fieldsV1": {}},
    ]
    body["metadata"]["annotations"] = {LAST_APPLIED: "{...}", "keep": "me"}
    body["spec"] = {"replicas": 2, "template": {"spec": {"containers": []}}}
    original = copy.deepcopy(body)
    c = Cache()
    c.put_child(body, deleted=False)
    c.put("CeleryWorkerPool", ("a", "w"), body)
    cached_child = c.child("owner", *IDENT)
    assert cached_child is not None
    assert cached_child["spec"] == {"replicas": 2}  # a child's pod template is not kept
    primary = c.get("CeleryWorkerPool", ("a", "w"))
    assert primary is not None
    assert primary["spec"] == original["spec"]  # a primary's spec is whole
    for kept in (c.child("owner", *IDENT), c.get("CeleryWorkerPool", ("a", "w"))):
        assert kept is not None
        assert kept["metadata"]["managedFields"] == [ours]  # what the replica hand-off reads
        assert kept["metadata"]["annotations"] == {"keep": "me"}
        assert kept["status"] == {"readyReplicas": 1}
    assert body == original  # the watch's body is not changed
    del body["metadata"]["managedFields"][0]
    body["metadata"]["resourceVersion"] = "8"  # every write is a new version
    c.put_child(body, deleted=False)
    assert "managedFields" not in (c.child("owner", *IDENT) or {})["metadata"]


def test_cached_bodies_share_their_keys_and_short_strings() -> None:
    import json

    c = Cache()
    a = json.loads(json.dumps(child("1", ready=1)))
    b = json.loads(
        json.dumps({**child("2", ready=1), "metadata": {**child("2")["metadata"], "name": "v"}})
    )
    assert next(iter(a)) is not next(iter(b))  # json.loads gives each body its own keys
    c.put_child(a, deleted=False)
    c.put_child(b, deleted=False)
    x, y = c.child("owner", *IDENT), c.child("owner", "apps/v1/Deployment", "a", "v")
    assert x is not None
    assert y is not None
    assert next(k for k in x if k == "metadata") is next(k for k in y if k == "metadata")
    assert x["kind"] is y["kind"]
    assert x == a  # equal, only shared
    assert y == b


def test_a_child_shares_with_its_applied_manifest_what_they_hold_alike() -> None:
    import json

    c = Cache()
    desired = service(5555)
    live = json.loads(json.dumps(desired))  # its own copy of everything, as from the watch
    live["spec"]["clusterIP"] = "10.0.0.7"  # the spec differs: a map of its own
    live["metadata"]["resourceVersion"] = "6"
    c.note_applied(live, desired)
    c.put_child(live, deleted=False)
    kept, manifest = c.child("owner", "v1/Service", "a", "shop-flower"), c.applied["s1"].desired
    assert kept is not None
    assert kept == live  # equal to what came, only shared
    assert kept["metadata"]["labels"] is manifest["metadata"]["labels"]
    assert kept["metadata"]["ownerReferences"] is manifest["metadata"]["ownerReferences"]
    assert kept["spec"]["ports"] is manifest["spec"]["ports"]
    assert kept["spec"] is not manifest["spec"]
    assert kept["metadata"] is not manifest["metadata"]
    # A re-apply of the same manifest shares with the one before it.
    c.note_applied(live, json.loads(json.dumps(desired)))
    assert c.applied["s1"].desired["metadata"]["labels"] is manifest["metadata"]["labels"]


def test_sharing_is_exact_about_types_and_lengths() -> None:
    from celery_operator.k8s.objects import compact

    like = compact({"a": {"n": 1}, "b": [1, 2], "c": {"x": 1.0}, "d": {"k": 1}})
    out = compact({"a": {"n": True}, "b": [1, 2, 3], "c": {"x": 1}, "d": {"k": 1, "j": 2}}, like)
    assert out == {"a": {"n": True}, "b": [1, 2, 3], "c": {"x": 1}, "d": {"k": 1, "j": 2}}
    assert type(out["a"]["n"]) is bool
    assert type(out["c"]["x"]) is int
    assert out["a"] is not like["a"]
    assert out["b"] is not like["b"]
    assert out["d"] is not like["d"]
    same = compact({"a": {"n": 1}, "b": [1, 2], "c": {"x": 1.0}, "d": {"k": 1}}, like)
    assert same is like


# ---- drift by content ---------------------------------------------------------------------
def service(port: int, uid: str = "s1", rv: str = "5", **extra_meta: Any) -> dict[str, Any]:
    """A Flower Service: Services have no generation that moves when their spec changes."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "namespace": "a",
            "name": "shop-flower",
            "uid": uid,
            "resourceVersion": rv,
            "ownerReferences": [{"controller": True, "uid": "owner", "kind": "Flower"}],
            "labels": {"app.kubernetes.io/name": "flower"},
            **extra_meta,
        },
        "spec": {"ports": [{"name": "http", "port": port, "targetPort": 5555}]},
    }


def test_a_hand_edit_of_a_service_is_drift_though_its_generation_never_moves() -> None:
    c = Cache()
    desired = service(5555)
    live = copy.deepcopy(desired)
    live["spec"]["ports"][0]["protocol"] = "TCP"  # defaulted by the server: not drift
    live["spec"]["clusterIP"] = "10.0.0.7"
    c.note_applied(live, desired)
    assert c.put_child(live, deleted=False) == ("owner", False)
    assert c.holds_applied(live)
    edited = copy.deepcopy(live)
    edited["spec"]["ports"][0]["port"] = 8080
    edited["metadata"]["resourceVersion"] = "6"
    assert c.put_child(edited, deleted=False) == ("owner", True)
    assert not c.holds_applied(edited)


def test_a_generation_moved_by_someone_else_is_drift_and_a_child_never_applied_is_not() -> None:
    c = Cache()
    body = child("7")
    body["metadata"]["generation"] = 3
    assert c.put_child(body, deleted=False) == ("owner", False)  # never applied: no opinion
    assert not c.holds_applied(body)  # ... and the next reconcile applies it
    c.note_applied(body, {"metadata": {"name": "w"}, "spec": {"template": {"x": 1}}})
    assert c.holds_applied(body)
    later = copy.deepcopy(body)
    later["metadata"]["generation"] = 4  # the pod template, which the cache does not keep
    later["metadata"]["resourceVersion"] = "8"  # every write is a new version
    assert c.put_child(later, deleted=False) == ("owner", True)


def test_the_echo_of_a_version_already_kept_is_not_kept_again() -> None:
    c = Cache()
    body = child("7", ready=1)
    c.put_child(body, deleted=False, from_write=True)  # the answer to our apply
    kept = c.child("owner", *IDENT)
    assert c.put_child(copy.deepcopy(body), deleted=False) == ("owner", False)  # its echo
    assert c.child("owner", *IDENT) is kept
    newer = child("8", ready=1)
    c.put_child(newer, deleted=False)
    assert c.child("owner", *IDENT) is not kept


def test_a_deleted_child_forgets_what_was_applied() -> None:
    c = Cache()
    live = service(5555)
    c.note_applied(live, live)
    c.put_child(live, deleted=True)
    assert c.applied == {}


def test_our_apply_entry_is_kept_only_as_far_as_spec_replicas() -> None:
    from celery_operator.k8s.children import owns_field

    fields = {
        "f:metadata": {"f:labels": {"f:app": {}}},
        "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {}}}},
    }
    body = child("7", ready=1)
    body["metadata"]["managedFields"] = [
        {"manager": "celery-operator", "operation": "Apply", "time": "t", "fieldsV1": fields}
    ]
    c = Cache()
    c.put_child(body, deleted=False)
    kept = c.child("owner", *IDENT)
    assert kept is not None
    assert kept["metadata"]["managedFields"] == [
        {
            "manager": "celery-operator",
            "operation": "Apply",
            "fieldsV1": {"f:spec": {"f:replicas": {}}},
        }
    ]
    assert owns_field(kept, "celery-operator", "spec", "replicas")
    del fields["f:spec"]["f:replicas"]  # an autoscaler's pool: the operator leaves replicas
    c.put_child({**body, "metadata": {**body["metadata"], "resourceVersion": "8"}}, deleted=False)
    kept = c.child("owner", *IDENT)
    assert kept is not None
    assert not owns_field(kept, "celery-operator", "spec", "replicas")


def test_what_is_kept_of_our_apply_entries_is_one_object_for_every_body() -> None:
    entry = {
        "manager": "celery-operator",
        "operation": "Apply",
        "fieldsV1": {"f:spec": {"f:replicas": {}, "f:selector": {}}},
    }
    c = Cache()
    for rv, name in (("7", "w"), ("8", "v")):
        body = child(rv, ready=1)
        body["metadata"]["name"] = name
        body["metadata"]["managedFields"] = [copy.deepcopy(entry)]
        c.put_child(body, deleted=False)
    w, v = c.child("owner", *IDENT), c.child("owner", "apps/v1/Deployment", "a", "v")
    assert w is not None
    assert v is not None
    assert w["metadata"]["managedFields"] is v["metadata"]["managedFields"]
