"""Pods for the real node: placed there, from the locally built images, Pod Security
"restricted" compliant unless a test says otherwise."""

from __future__ import annotations

from typing import Any

from testenv import images
from testenv.realnode import NODE_LABEL, TAINT

PLACEMENT: dict[str, Any] = {
    "nodeSelector": {NODE_LABEL: "true"},
    "tolerations": [{**TAINT, "operator": "Equal"}],
}

RESTRICTED_CONTAINER: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def image(name: str) -> str:
    """The ref of a locally built image (testenv/images.py): example-app, operator, pause."""
    return images.plan()[name].ref


def pod(
    name: str,
    command: list[str],
    *,
    image_name: str = "example-app",
    env: dict[str, str] | None = None,
    restart: str = "Never",
    grace: int | None = None,
    container: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A pod on the real node running `command`, with a writable emptyDir at /tmp."""
    c: dict[str, Any] = {
        "name": "main",
        "image": image(image_name),
        "imagePullPolicy": "Never",
        "command": command,
        "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
        "securityContext": RESTRICTED_CONTAINER,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        **(container or {}),
    }
    spec: dict[str, Any] = {
        **PLACEMENT,
        "restartPolicy": restart,
        "automountServiceAccountToken": False,
        "containers": [c],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
