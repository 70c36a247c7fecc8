"""The operator, run once for the e2e session under its shipped ServiceAccount and RBAC."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cluster import Cluster
from tests.support.operator import OperatorProcess, new_workdir


@pytest.fixture(scope="session")
def operator(cluster: Cluster, crds: list[str]) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster, new_workdir())
    op.start()
    try:
        yield op
    finally:
        op.stop()
        print(f"\n--- operator log tail ---\n{op.tail(40)}")


@pytest.fixture
def alone(operator: OperatorProcess) -> Iterator[None]:
    """The session's operator stops (and gives up its Lease) for the test's own ones, and
    starts again after."""
    operator.stop()
    try:
        yield
    finally:
        operator.start()
