"""`contains`: whether a live object still holds what the operator applied (drift by content)."""

from __future__ import annotations

from typing import Any

import pytest

from celery_operator.k8s.objects import contains, parse_quantity, repair_patch

HPA = {
    "spec": {
        "minReplicas": 1,
        "maxReplicas": 5,
        "metrics": [
            {"type": "Resource", "resource": {"name": "cpu", "target": {"averageUtilization": 70}}}
        ],
    }
}


def edited(path: list[Any], value: Any, base: dict[str, Any] = HPA) -> dict[str, Any]:
    import copy

    out = copy.deepcopy(base)
    at: Any = out
    for p in path[:-1]:
        at = at[p]
    if value is DELETE:
        del at[path[-1]]
    else:
        at[path[-1]] = value
    return out


DELETE = object()


@pytest.mark.parametrize(
    ("live", "holds"),
    [
        (HPA, True),
        (edited(["spec", "behavior"], {"scaleDown": {"selectPolicy": "Max"}}), True),  # defaulted
        (edited(["spec", "maxReplicas"], 50), False),  # the hand edit of the issue
        (edited(["spec", "minReplicas"], DELETE), False),
        (edited(["spec", "metrics"], []), False),
        (
            edited(["spec", "metrics"], HPA["spec"]["metrics"] * 2),
            False,
        ),  # atomic list: an added item
        (edited(["spec", "maxReplicas"], "5"), False),  # a string is not the number
        (edited(["spec", "maxReplicas"], 5.0), False),
    ],
)
def test_an_hpa(live: dict[str, Any], holds: bool) -> None:
    assert contains(live, HPA) is holds


def test_quantities_compare_by_value_and_empty_desired_may_be_absent() -> None:
    assert contains({"cpu": "500m"}, {"cpu": "0.5"})
    assert contains({"memory": "1Gi"}, {"memory": "1024Mi"})
    assert not contains({"memory": "1G"}, {"memory": "1Gi"})
    assert not contains({"name": "http"}, {"name": "https"})  # strings that are no quantity
    assert contains({}, {"labels": {}, "items": [], "x": None})
    assert not contains({"x": 1}, {"x": None})
    assert not contains({}, {"labels": {"a": "b"}})
    assert not contains({"spec": "text"}, {"spec": {"a": 1}})


def test_the_repair_patch_replaces_what_differs_whole_and_nothing_else() -> None:
    desired = {
        "metadata": {"labels": {"a": "1"}},
        "spec": {"ports": [{"port": 5555, "targetPort": 5555}], "selector": {"app": "f"}},
    }
    live = {
        "metadata": {"labels": {"a": "1", "hand": "made"}, "uid": "u"},
        "spec": {
            "ports": [{"port": 8081, "targetPort": 5555}, {"port": 5555, "targetPort": 5555}],
            "selector": {"app": "f"},
            "clusterIP": "10.0.0.1",
        },
    }
    assert repair_patch(live, desired) == {"spec": {"ports": desired["spec"]["ports"]}}
    assert repair_patch(desired, desired) == {}
    assert repair_patch({}, desired) == desired
    assert repair_patch(
        {"spec": {"selector": {"app": "g"}}}, {"spec": {"selector": {"app": "f"}}}
    ) == {"spec": {"selector": {"app": "f"}}}


QUANTITIES = [
    "0", "1", "500m", "0.5", "1.5", ".5", "1.", "+1", "-1", "100n", "100u", "1k", "1M",
    "1G", "1T", "1P", "1E", "1Ki", "1Mi", "1Gi", "1Ti", "1Pi", "1Ei", "1024Mi", "1e3",
    "1E3", "1e-3", "2.5e+2", "12345678901234567890", "0.000000001",
]  # fmt: skip
NOT_QUANTITIES = ["", "m", "1KiB", "Gi", "1e", "1.2.3", "http", "--1", "1ki", "0x10", "1Ki "]
# The kubernetes package reads these too (1/1024, 1Gi, 1); the apiserver refuses them.
REFUSED_BY_THE_APISERVER = ["1mi", "1 Gi", " 1"]


@pytest.mark.parametrize("text", QUANTITIES)
def test_quantities_read_as_the_kubernetes_package_reads_them(text: str) -> None:
    from kubernetes.utils import parse_quantity as reference  # the oracle (not in the operator)

    assert parse_quantity(text) == reference(text)


@pytest.mark.parametrize("text", NOT_QUANTITIES)
def test_what_is_no_quantity(text: str) -> None:
    from kubernetes.utils import parse_quantity as reference

    assert parse_quantity(text) is None
    with pytest.raises((ValueError, ArithmeticError)):
        reference(text)


@pytest.mark.parametrize("text", REFUSED_BY_THE_APISERVER)
def test_what_the_apiserver_refuses_is_no_quantity(text: str) -> None:
    assert parse_quantity(text) is None
