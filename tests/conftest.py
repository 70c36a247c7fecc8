"""Session fixtures: the cluster every integration and e2e test runs against.

By default the project's own control plane (testenv/) is started once per session and
stopped at the end, also on failure or Ctrl-C. With KUBECONFIG set explicitly, the tests
use that cluster instead (for example kind, on a machine with Docker).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testenv import images  # noqa: E402
from testenv.controlplane import ControlPlane, TestenvError, find_binaries  # noqa: E402
from testenv.realnode import RealNode  # noqa: E402

# The images' refs as built before the session (make images); editing src/ or README.md
# while the tests run must not make them look unbuilt.
images.plan()

from tests.support.cluster import Cluster  # noqa: E402


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    external = os.environ.get("KUBECONFIG")
    if external:
        kubectl = shutil.which("kubectl")
        try:
            b = find_binaries()
            kubectl_path, helm, keda = b.kubectl, b.helm, b.keda_crds
        except TestenvError:
            if kubectl is None:
                pytest.fail("KUBECONFIG is set but no kubectl was found", pytrace=False)
            kubectl_path, helm, keda = Path(kubectl), None, None
        yield Cluster(Path(external), kubectl_path, helm, keda, local=False)
        return
    try:
        cp = ControlPlane()
        cp.start()
    except TestenvError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        assert cp.binaries is not None
        yield Cluster(
            cp.kubeconfig,
            cp.binaries.kubectl,
            cp.binaries.helm,
            cp.binaries.keda_crds,
            control_plane=cp,
        )
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def real_node(cluster: Cluster) -> RealNode:
    """The real node (kubelet + containerd) beside the kwok nodes, started once, on first use.

    Its images (`make images`) are imported; pods reach it with `tests.support.realnode`.
    """
    cp = cluster.control_plane
    if cp is None:
        pytest.fail(
            "the real-node tests run on the local control plane (unset KUBECONFIG)", pytrace=False
        )
    error = None
    if cp.node is None:
        try:
            cp.start_real_node()
        except TestenvError as e:
            error = str(e)
    if error is not None:
        pytest.fail(error, pytrace=False)
    assert cp.node is not None
    return cp.node


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace, deleted (without waiting) after the test."""
    name = cluster.create_namespace()
    yield name
    cluster.run("delete", "namespace", name, "--wait=false")


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> list[str]:
    """The project's CRDs, installed from the committed files, Established."""
    files = sorted(str(p) for p in (ROOT / "crds").glob("*/*.celeryproject.org.yaml"))
    args = [a for f in files for a in ("-f", f)]
    cluster.kubectl("apply", "--server-side", "--force-conflicts", *args)
    names = [f"crd/{Path(f).name.removesuffix('.yaml')}" for f in files]
    cluster.wait_established(*names)
    return names


@pytest.fixture(scope="session")
def keda_crds(cluster: Cluster) -> None:
    """KEDA's real CRDs (from its Go module, extracted by testenv/build.sh)."""
    if cluster.keda_crds is None:
        pytest.fail("KEDA CRDs not found: run `make testenv`", pytrace=False)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(cluster.keda_crds))
    cluster.wait_established("scaledobjects.keda.sh", "triggerauthentications.keda.sh")
