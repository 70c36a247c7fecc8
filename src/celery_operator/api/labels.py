"""The labels, annotations and field manager every layer shares (pure constants).

Children carry the managed-by label (the operator watches only objects with it); pods
carry the component label and the name of their owner; pools and Flowers carry the app
they name (set by the mutating webhook, read by its lookups).
"""

from __future__ import annotations

import hashlib
import re

MANAGED_BY = "celery-operator"
# The one field manager of the operator's server-side applies and status patches.
FIELD_MANAGER = "celery-operator"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_APP = "celeryproject.org/app"
LABEL_APP_NAMESPACE = "celeryproject.org/app-namespace"
LABEL_POOL = "celeryproject.org/pool"
LABEL_FLOWER = "celeryproject.org/flower"

# What the operator watches of its children and pods: only what it labelled.
OWNED_LABELS = {LABEL_MANAGED_BY: MANAGED_BY}

# A hash of the manifest the operator last applied to a child (the applied-hash skip).
HASH_ANNOTATION = "celeryproject.org/applied-hash"
# On the pod template (and the metadata) of the worker, beat and Flower Deployments: a
# checksum of the Secret data their containers read at start (env, envFrom). It changes
# when that data changes, so the pods roll once, through the Deployment's own rollout.
SECRET_CHECKSUM_ANNOTATION = "celeryproject.org/secret-checksum"
# On the metadata of a Deployment made before the operator put checksums on pod templates
# (an upgrade): the checksum of the data its pods read then. Adopting it rolls nothing;
# only a change from it puts the checksum on the template (and rolls the pods once).
SECRET_BASELINE_ANNOTATION = "celeryproject.org/secret-checksum-baseline"
# On the worker Deployment of a pool outside its app's namespace: the names of the
# operator's mirrors of the app's image pull Secrets (Secrets are not watched: after a
# restart, this says which ones to delete when they are no longer wanted).
PULL_SECRET_MIRRORS_ANNOTATION = "celeryproject.org/pull-secret-mirrors"
# On such a mirror: the Secret it copies ("<namespace>/<name>").
MIRROR_OF_ANNOTATION = "celeryproject.org/mirror-of"

MAX_LABEL_VALUE = 63
_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def digest(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def fit(name: str, limit: int) -> str:
    """`name` if it fits, else a prefix of it plus a hash of the whole (stable, unique)."""
    if len(name) <= limit:
        return name
    suffix = digest(name)
    prefix = name[: limit - len(suffix) - 1].rstrip("-.")
    return f"{prefix}-{suffix}"


def label_value(value: str) -> str:
    """A valid label value for `value` (<= 63 chars, alphanumeric at both ends)."""
    fitted = fit(value, MAX_LABEL_VALUE)
    if _LABEL_VALUE_RE.match(fitted):
        return fitted
    cleaned = re.sub(r"[^-A-Za-z0-9_.]", "-", fitted).strip("-_.")
    return fit(f"{cleaned}-{digest(value)}" if cleaned else digest(value), MAX_LABEL_VALUE)


def selector(labels: dict[str, str]) -> str:
    """A label selector string matching exactly these labels."""
    return ",".join(f"{k}={v}" for k, v in labels.items())
