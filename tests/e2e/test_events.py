"""Kubernetes Events on the real control plane, read as a user reads them (`kubectl get
events --field-selector involvedObject.name=...`, `kubectl describe`): each decision on
the right object with the right reason, repeats aggregated into one Event with a count,
and never a password."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.test_controllers import app, pool, secret, wait_ready
from tests.support.cluster import Cluster, wait_for
from tests.support.operator import OperatorProcess

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

PASSWORD = "hunter2-evts"
URL = f"redis://:{PASSWORD}@redis:6379/0"
CONTROLLER = "celeryproject.org/celery-operator"


def events_of(cluster: Cluster, ns: str, name: str, kind: str) -> list[dict[str, Any]]:
    """The object's Events as kubectl describe finds them: core/v1, by involvedObject."""
    selector = f"involvedObject.name={name},involvedObject.kind={kind}"
    out = cluster.kubectl("get", "events", "-n", ns, "--field-selector", selector, "-o", "json")
    return list(json.loads(out)["items"])


def reasons(events: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(e["type"], e["reason"]) for e in events}


def wait_event(
    cluster: Cluster, ns: str, name: str, kind: str, reason: str, timeout: float = 60
) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        return next((e for e in events_of(cluster, ns, name, kind) if e["reason"] == reason), None)

    return wait_for(f"a {reason} Event on {kind} {ns}/{name}", found, timeout=timeout)


def count_of(e: dict[str, Any]) -> int:
    return int((e.get("series") or {}).get("count") or e.get("count") or 1)


@pytest.fixture
def team(cluster: Cluster) -> Iterator[str]:
    name = cluster.create_namespace("team", labels={"celeryproject.org/attach-to-shop": "true"})
    yield name
    cluster.run("delete", "namespace", name, "--wait=false")


def test_a_pools_decisions_are_events_on_the_right_object(
    cluster: Cluster, operator: OperatorProcess, namespace: str, team: str
) -> None:
    # A bad spec: a literal broker URL with a password (past admission: no webhook here).
    bad = app(namespace, broker={"url": {"value": URL}})
    bad["spec"]["broker"]["url"].pop("secretKeyRef", None)
    cluster.apply(
        [secret(namespace, url=URL), bad, pool(team, "emails", app_ns=namespace, replicas=1)]
    )
    invalid = wait_event(cluster, namespace, "shop", "CeleryApp", "InvalidSpec")
    assert invalid["type"] == "Warning"
    assert invalid["message"].startswith("spec.broker.url.value: a URL with a password")
    app_uid = cluster.get("celeryapp", "shop", namespace)["metadata"]["uid"]
    assert invalid["involvedObject"]["uid"] == app_uid
    assert invalid["reportingComponent"] == CONTROLLER
    blocked = wait_event(cluster, team, "emails", "CeleryWorkerPool", "AppInvalid")
    assert blocked["type"] == "Warning"

    # The spec fixed: the pool runs, its children are Events on the pool, the beat's on the app.
    cluster.apply(app(namespace))
    wait_ready(cluster, "celeryworkerpool", "emails", team)
    wait_event(cluster, team, "emails", "CeleryWorkerPool", "RolloutFinished")
    pool_events = events_of(cluster, team, "emails", "CeleryWorkerPool")
    notes = {(e["reason"], e["message"]) for e in pool_events}
    assert ("Created", "Created Deployment shop-emails") in notes, notes
    assert ("Created", "Created PodDisruptionBudget shop-emails") in notes, notes
    assert (
        "SecretMirrored",
        f"Mirrored the connection Secret of CeleryApp {namespace}/shop into namespace {team} "
        "as Secret shop-emails-connection",
    ) in notes, notes
    assert ("Normal", "Bound") in reasons(pool_events)
    pool_uid = cluster.get("cwp", "emails", team)["metadata"]["uid"]
    assert {e["involvedObject"]["uid"] for e in pool_events} == {pool_uid}
    created = next(e for e in pool_events if e["message"] == "Created Deployment shop-emails")
    assert created["related"]["kind"] == "Deployment"
    wait_event(cluster, namespace, "shop", "CeleryApp", "Created")
    app_notes = {e["message"] for e in events_of(cluster, namespace, "shop", "CeleryApp")}
    assert "Created Deployment shop-beat" in app_notes, app_notes

    # A scale change: from, to and why.
    cluster.kubectl("scale", "cwp/emails", "-n", team, "--replicas=3")
    scaled = wait_event(cluster, team, "emails", "CeleryWorkerPool", "Scaled")
    assert scaled["message"] == (
        "Scaled up Deployment shop-emails from 1 to 3 replicas (spec.replicas is 3)"
    )

    # A new pod template: a rollout, started and finished.
    cluster.kubectl(
        "patch", "cwp", "emails", "-n", team, "--type=merge", "-p", '{"spec":{"concurrency":6}}'
    )
    started = wait_event(cluster, team, "emails", "CeleryWorkerPool", "RolloutStarted")
    assert started["message"].startswith(
        "Rolling out a new pod template of Deployment shop-emails (generation "
    ), started
    wait_for(
        "RolloutFinished for the new template",
        lambda: any(
            e["reason"] == "RolloutFinished"
            and e["message"].startswith("Rolled out Deployment shop-emails: 3/3")
            for e in events_of(cluster, team, "emails", "CeleryWorkerPool")
        ),
    )
    assert "Updated" not in {
        e["reason"] for e in events_of(cluster, team, "emails", "CeleryWorkerPool")
    }

    # A child deleted by hand, 20 times: restored each time, one Event counting 20.
    for i in range(20):
        old = cluster.get("pdb", "shop-emails", team)["metadata"]["uid"]
        cluster.kubectl("delete", "pdb", "shop-emails", "-n", team, "--wait=false")
        wait_for(
            f"the PDB back ({i + 1})",
            lambda old=old: (
                cluster.exists("pdb", "shop-emails", team)
                and cluster.get("pdb", "shop-emails", team)["metadata"]["uid"] != old
            ),
            timeout=30,
        )

    def repaired() -> list[dict[str, Any]] | None:
        found = [
            e
            for e in events_of(cluster, team, "emails", "CeleryWorkerPool")
            if e["reason"] == "DriftRepaired"
        ]
        return found if sum(count_of(e) for e in found) >= 20 else None

    try:
        found = wait_for("the DriftRepaired Event to count 20", repaired, timeout=60)
    except AssertionError:
        mine = events_of(cluster, team, "emails", "CeleryWorkerPool")
        log = [line for line in operator.tail(3000).splitlines() if "vent" in line]
        raise AssertionError(json.dumps(mine, indent=1) + "\n".join(log[-80:])) from None
    assert len(found) == 1, found
    [drift] = found
    assert drift["message"] == (
        "Recreated PodDisruptionBudget shop-emails: it was deleted by someone else"
    )
    assert count_of(drift) == 20
    assert drift["series"]["count"] == 20
    described = cluster.kubectl("describe", "cwp", "emails", "-n", team)
    assert "(x20 over" in described, described
    assert "DriftRepaired" in described, described
    assert "Scaled" in described, described

    # Never a credential, in any Event of either namespace, through either API.
    for ns in (namespace, team):
        for resource in ("events", "events.events.k8s.io"):
            text = cluster.kubectl("get", resource, "-n", ns, "-o", "json")
            assert PASSWORD not in text
    # A full reconcile that changes nothing (a label: no spec change) posts nothing new.
    applied = {"Created", "Updated", "Deleted", "DriftRepaired", "SecretMirrored", "Scaled"}

    def posted() -> set[tuple[str, int]]:
        return {
            (e["metadata"]["name"], count_of(e))
            for e in events_of(cluster, team, "emails", "CeleryWorkerPool")
            if e["reason"] in applied
        }

    before = posted()
    cluster.kubectl("label", "cwp", "emails", "-n", team, "touched=yes")
    time.sleep(5)
    assert posted() == before


def test_blocked_pools_say_why(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    refused = cluster.create_namespace("team")
    try:
        cluster.apply(
            [secret(namespace), app(namespace), pool(refused, "emails", app_ns=namespace)]
        )
        e = wait_event(cluster, refused, "emails", "CeleryWorkerPool", "NamespaceNotAllowed")
        assert e["type"] == "Warning"
        assert f"does not admit pools from namespace {refused}" in e["message"]
        # Admitted: Bound, and it runs.
        cluster.kubectl("label", "namespace", refused, "celeryproject.org/attach-to-shop=true")
        wait_event(cluster, refused, "emails", "CeleryWorkerPool", "Bound")
        wait_event(cluster, refused, "emails", "CeleryWorkerPool", "Created")
        # The app goes: AppNotFound, and its workers stop (Deleted, with why).
        cluster.kubectl("delete", "celeryapp", "shop", "-n", namespace)
        wait_event(cluster, refused, "emails", "CeleryWorkerPool", "AppNotFound")
        deleted = wait_event(cluster, refused, "emails", "CeleryWorkerPool", "Deleted")
        assert deleted["message"].endswith("the pool is not accepted (AppNotFound)")
    finally:
        cluster.run("delete", "namespace", refused, "--wait=false")
