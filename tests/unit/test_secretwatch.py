"""The Secret poller (controllers/secretwatch.py), with a fake apiserver: it reads only
the Secrets that owners reference, once each, answers reconciles from what it read, and
reconciles the owners of a Secret whose resourceVersion moved, once per change."""

from __future__ import annotations

import base64
import threading
from typing import Any

from celery_operator.controllers.secretwatch import SecretWatch, view_of
from celery_operator.k8s.client import ApiError
from celery_operator.plans.secrets import SecretKey, SecretView


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class FakeApi:
    def __init__(self) -> None:
        self.secrets: dict[SecretKey, dict[str, Any]] = {}
        self.gets: list[SecretKey] = []
        self.fail: set[SecretKey] = set()

    def put(self, ns: str, name: str, rv: str, **data: str) -> None:
        self.secrets[(ns, name)] = {
            "metadata": {"name": name, "namespace": ns, "resourceVersion": rv},
            "type": "Opaque",
            "data": {k: b64(v) for k, v in data.items()},
        }

    def get(self, key: SecretKey) -> dict[str, Any] | None:
        self.gets.append(key)
        if key in self.fail:
            raise ApiError(0, "TimeoutError", "timed out")
        return self.secrets.get(key)


def watch(api: FakeApi) -> tuple[SecretWatch, list[tuple[str, Any]]]:
    told: list[tuple[str, Any]] = []
    return SecretWatch(30, on_change=lambda task, key: told.append((task, key)), get=api.get), told


POOL_A = ("pool", ("team-a", "emails"))
APP = ("app", ("shop", "shop"))
BROKER_KEY = ("shop", "shop-broker")


def test_reconciles_read_through_the_poller_which_reads_each_secret_once() -> None:
    api = FakeApi()
    api.put("shop", "shop-broker", "5", url="redis://a")
    w, told = watch(api)
    first = w.read(POOL_A, [BROKER_KEY, ("shop", "missing")])
    assert first[BROKER_KEY] == view_of(api.secrets[BROKER_KEY])
    assert first[("shop", "missing")] == SecretView(exists=False)
    assert w.read(APP, [BROKER_KEY]) == {BROKER_KEY: first[BROKER_KEY]}
    w.read(POOL_A, [BROKER_KEY, ("shop", "missing")])
    assert sorted(api.gets) == [("shop", "missing"), BROKER_KEY]  # one GET each, then cached
    assert w.poll() == set()
    assert told == []


def test_a_changed_secret_reconciles_its_owners_once_per_change() -> None:
    api = FakeApi()
    api.put("shop", "shop-broker", "5", url="redis://a")
    w, told = watch(api)
    w.read(POOL_A, [BROKER_KEY])
    w.read(APP, [BROKER_KEY, ("shop", "other")])
    api.put("shop", "shop-broker", "6", url="redis://b")
    assert w.poll() == {POOL_A, APP}
    assert sorted(told) == [APP, POOL_A]
    assert w.read(POOL_A, [BROKER_KEY])[BROKER_KEY].data["url"] == b64("redis://b")
    told.clear()
    assert w.poll() == set()
    # A Secret that appears, or goes away, is a change too.
    api.put("shop", "other", "7", k="v")
    assert w.poll() == {APP}
    del api.secrets[BROKER_KEY]
    assert w.poll() == {POOL_A, APP}
    assert w.read(APP, [BROKER_KEY, ("shop", "other")])[BROKER_KEY] == SecretView(exists=False)


def test_references_are_dropped_when_no_owner_names_them() -> None:
    api = FakeApi()
    api.put("shop", "shop-broker", "5", url="redis://a")
    api.put("team-a", "env", "5", k="v")
    w, _ = watch(api)
    w.read(POOL_A, [BROKER_KEY, ("team-a", "env")])
    w.read(APP, [BROKER_KEY])
    w.read(POOL_A, [BROKER_KEY])  # the pool no longer names team-a/env
    assert w.referenced() == {BROKER_KEY: {POOL_A, APP}}
    w.forget(APP)
    assert w.referenced() == {BROKER_KEY: {POOL_A}}
    w.read(POOL_A, [])
    assert w.referenced() == {}
    api.gets.clear()
    api.put("shop", "shop-broker", "6", url="redis://b")
    assert w.poll() == set()
    assert api.gets == []  # nothing referenced, nothing read


def test_a_failed_read_changes_nothing_and_one_never_read_says_why() -> None:
    api = FakeApi()
    api.put("shop", "shop-broker", "5", url="redis://a")
    w, _ = watch(api)
    known = w.read(POOL_A, [BROKER_KEY])[BROKER_KEY]
    api.fail.add(BROKER_KEY)
    assert w.poll() == set()
    assert w.read(POOL_A, [BROKER_KEY])[BROKER_KEY] == known
    api.fail.add(("shop", "new"))
    unknown = w.read(APP, [("shop", "new")])[("shop", "new")]
    assert unknown.error == "cannot read it: 0 TimeoutError"
    assert not unknown.known
    api.fail.clear()
    api.put("shop", "new", "9", k="v")
    assert w.poll() == {APP}  # readable at last: its owner reconciles
    assert w.read(APP, [("shop", "new")])[("shop", "new")].known


def test_the_poller_runs_in_the_background_until_stopped() -> None:
    api = FakeApi()
    api.put("shop", "shop-broker", "5", url="redis://a")
    seen = threading.Event()
    w = SecretWatch(0.01, on_change=lambda task, key: seen.set(), get=api.get)
    w.read(POOL_A, [BROKER_KEY])
    w.start()
    try:
        api.put("shop", "shop-broker", "6", url="redis://b")
        assert seen.wait(5)
    finally:
        w.stop()
