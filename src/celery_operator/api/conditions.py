"""Condition types and reasons: the words of `status.conditions` (pure constants).

`status` and the plans set them; `manifests/reference.py` documents them from here; the
plan tests check that every reason set is documented and every documented one is set.
"""

from __future__ import annotations

from typing import NamedTuple


class Outcome(NamedTuple):
    """A condition's verdict: Accepted (is the object bound?), ScalingActive ..."""

    ok: bool
    reason: str
    message: str


class Blocker(NamedTuple):
    """Why something is not running as its spec says: a reason and a message. Blocking a
    reconcile (nothing could be applied), or a pod that cannot run."""

    reason: str
    message: str


# ---- types ------------------------------------------------------------------------------
READY = "Ready"
RECONCILING = "Reconciling"
DEGRADED = "Degraded"
ACCEPTED = "Accepted"
SCALING_ACTIVE = "ScalingActive"
LOAD_OBSERVED = "LoadObserved"

# ---- why an object is not (yet) running what its spec says --------------------------------
INVALID_SPEC = "InvalidSpec"
APP_NOT_FOUND = "AppNotFound"
NAMESPACE_NOT_ALLOWED = "NamespaceNotAllowed"
APP_INVALID = "AppInvalid"
BROKER_UNREADABLE = "BrokerUnreadable"
CHILD_CONFLICT = "ChildConflict"
CHILD_REJECTED = "ChildRejected"  # the apiserver refuses a rendered child (422 Invalid)
# An image pull Secret of the app cannot be mirrored into a pool's namespace (missing or
# unreadable): everything else is applied, its mirror is kept as it was.
PULL_SECRET_UNREADABLE = "PullSecretUnreadable"

# ---- binding ------------------------------------------------------------------------------
BOUND = "Bound"

# ---- a Deployment's rollout -----------------------------------------------------------------
CREATING = "Creating"
AVAILABLE = "Available"
SCALED_TO_ZERO = "ScaledToZero"
PROGRESSING = "Progressing"
ROLLOUT_FAILED = "RolloutFailed"
FAILED_CREATE = "FailedCreate"  # the ReplicaSet cannot create pods (Pod Security, quota ...)
ROLLING_OUT = "RollingOut"
COMPLETE = "Complete"
PAUSED = "Paused"
DRAINING = "Draining"

# ---- the app's roll-up ----------------------------------------------------------------------
ALL_COMPONENTS_READY = "AllComponentsReady"
COMPONENTS_NOT_READY = "ComponentsNotReady"
COMPONENTS_UNAVAILABLE = "ComponentsUnavailable"
AS_EXPECTED = "AsExpected"

# ---- the built-in scaler ----------------------------------------------------------------------
POLLING = "Polling"
QUEUE_LENGTH_READ = "QueueLengthRead"
BROKER_UNREACHABLE = "BrokerUnreachable"

# ---- HPA and KEDA, as their own objects say (ScalingActive of hpa and keda pools) --------------
AUTOSCALER_ACTIVE = "AutoscalerActive"
AUTOSCALER_FAILING = "AutoscalerFailing"

# ---- the workers' heartbeats ------------------------------------------------------------------
HEARTBEATS_RECEIVED = "HeartbeatsReceived"
CONNECTING = "Connecting"
NOT_SUPPORTED = "NotSupported"

# Waiting reasons of a container that will not start or keeps stopping by itself (and the
# pod's own Unschedulable): Ready carries them instead of "0/1 replicas ready".
POD_PROBLEM_REASONS = (
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "Unschedulable",
)
