"""Builders against golden YAML: one file per builder and significant option.

Regenerate after an intended change with `UPDATE_GOLDEN=1 pytest tests/unit` and review
the diff like code.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from celery_operator.brokerurl import parse_broker_url
from celery_operator.render import autoscaling, celeryapp, celeryworkerpool, flower
from celery_operator.render.common import owner_reference, with_secret_checksum
from tests.support import objects as o
from tests.support import yamlio

GOLDEN = Path(__file__).parent / "golden"


def _app_owner(a: Any) -> dict[str, Any]:
    return owner_reference(a.model_dump(by_alias=True), "CeleryApp")


def _pool_owner(p: Any) -> dict[str, Any]:
    return owner_reference(p.model_dump(by_alias=True), "CeleryWorkerPool")


TEAM = "celeryworkerpool/examples/team-a-emails.yaml"


def _keda(url: str, scaling: dict[str, Any]) -> list[dict[str, Any]]:
    pool = o.pool(TEAM, spec={"autoscaling": scaling})
    objs = autoscaling.build_keda_objects(o.app(), pool, parse_broker_url(url), _pool_owner(pool))
    assert objs is not None
    return [x for x in (objs.secret, objs.trigger_authentication, objs.scaled_object) if x]


REPORTS = "celeryworkerpool/examples/shop-reports.yaml"

# What users add to pods: what Pod Security "restricted" needs of a container the operator
# does not own (the pod-level securityContext covers runAsNonRoot and seccomp).
RESTRICTED = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
CA_BUNDLE = {
    "podDefaults": {
        "volumes": [{"name": "shop-ca", "configMap": {"name": "shop-ca"}}],
        "volumeMounts": [{"name": "shop-ca", "mountPath": "/etc/ssl/shop", "readOnly": True}],
    }
}
WAIT_FOR_DB = {
    "name": "wait-for-db",
    "image": "busybox:1.37",
    "command": ["sh", "-c", "until nc -z db.shop 5432; do sleep 2; done"],
    "securityContext": RESTRICTED,
}
SQL_PROXY = {
    "name": "cloud-sql-proxy",
    "image": "gcr.io/cloud-sql-connectors/cloud-sql-proxy:2.14.1",
    "args": ["--port=5432", "--max-sigterm-delay=30s", "shop:europe-west1:shop"],
    "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
    "securityContext": RESTRICTED,
}
POD_ADDITIONS = {
    "volumes": [
        {"name": "worker-config", "configMap": {"name": "worker-config"}},
        {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}},
    ],
    "volumeMounts": [
        {"name": "worker-config", "mountPath": "/etc/worker", "readOnly": True},
        {"name": "scratch", "mountPath": "/scratch"},
    ],
    "initContainers": [
        {**WAIT_FOR_DB, "volumeMounts": [{"name": "worker-config", "mountPath": "/config"}]}
    ],
    "sidecars": [SQL_PROXY],
}

CASES: dict[str, Callable[[], Any]] = {
    "worker-default": lambda: celeryworkerpool.build_worker_deployment(
        o.app(), o.pool(), _pool_owner(o.pool()), replicas=2
    ),
    "worker-team-autoscaled": lambda: celeryworkerpool.build_worker_deployment(
        o.app(), o.pool(TEAM), _pool_owner(o.pool(TEAM)), replicas=None
    ),
    "worker-options": lambda: celeryworkerpool.build_worker_deployment(
        o.app(
            spec={
                "resultBackend": None,
                "env": [{"name": "SHARED", "value": "app"}, {"name": "MODE", "value": "app"}],
                "podDefaults": {
                    "serviceAccountName": "shop-workers",
                    "nodeSelector": {"pool": "general"},
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 4242},
                    "annotations": {"a": "from-app"},
                },
                "imagePullSecrets": [{"name": "regcred"}],
                "imagePullPolicy": "Always",
            }
        ),
        o.pool(
            spec={
                "image": "ghcr.io/example/shop-worker:2.0.0",
                "pool": "solo",
                "concurrency": 1,
                "maxTasksPerChild": 50,
                "maxMemoryPerChild": 200000,
                "logLevel": "DEBUG",
                "extraArgs": ["--without-gossip"],
                "env": [{"name": "MODE", "value": "pool"}],
                "envFrom": [{"configMapRef": {"name": "worker-config"}}],
                "nodeSelector": {"pool": "cpu-heavy"},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "celery"}],
                "annotations": {"a": "from-pool", "b": "pool"},
                "labels": {"tier": "batch"},
                "probes": {"liveness": {"enabled": False}},
                "updateStrategy": {"maxSurge": 1, "maxUnavailable": "10%"},
            }
        ),
        None,
        replicas=3,
    ),
    "worker-literal-broker": lambda: celeryworkerpool.build_worker_deployment(
        o.app(spec={"broker": {"url": {"value": "redis://redis.shop:6379/0"}}}),
        o.pool(),
        None,
        replicas=1,
    ),
    "beat-default": lambda: celeryapp.build_beat_deployment(o.app(), _app_owner(o.app())),
    "beat-scheduler": lambda: celeryapp.build_beat_deployment(
        o.app(
            spec={
                "beat": {
                    "enabled": True,
                    "scheduler": "redbeat.RedBeatScheduler",
                    "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}},
                    "extraArgs": ["--max-interval=30"],
                }
            }
        ),
        None,
    ),
    "flower-deployment": lambda: flower.build_flower_deployment(
        o.app(), o.flower(), _app_owner(o.app())
    ),
    "flower-service": lambda: flower.build_flower_service(o.app(), o.flower(), None),
    "flower-prefix-deployment": lambda: flower.build_flower_deployment(
        o.app(), o.flower(spec={"urlPrefix": "tools/flower", "basicAuth": None}), None
    ),
    "flower-ingress": lambda: flower.build_flower_ingress(
        o.app(),
        o.flower(
            spec={
                "urlPrefix": "flower",
                "service": {"port": 80},
                "ingress": {
                    "enabled": True,
                    "className": "nginx",
                    "host": "flower.shop.example.com",
                    "tls": {"secretName": "flower-tls"},
                    "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "300"},
                },
            }
        ),
        None,
    ),
    "worker-team-mirrored-connection": lambda: celeryworkerpool.build_worker_deployment(
        o.app(), o.pool(TEAM), None, replicas=None, connection_secret="shop-emails-connection"
    ),
    "worker-soft-shutdown-off-user-config": lambda: celeryworkerpool.build_worker_deployment(
        o.app(),
        o.pool(
            spec={
                "shutdown": {"softShutdownTimeout": 0},
                "extraArgs": ["--without-mingle", "--", "worker.enable_soft_shutdown_on_idle=True"],
            }
        ),
        None,
        replicas=1,
    ),
    "worker-team-pull-secret-mirrors": lambda: with_secret_checksum(
        celeryworkerpool.build_worker_deployment(
            o.app(spec={"imagePullSecrets": [{"name": "regcred"}, {"name": "mirror-of-ecr"}]}),
            o.pool(TEAM),
            None,
            replicas=None,
            connection_secret="shop-emails-connection",
            pull_secrets=["shop-emails-pull-regcred", "shop-emails-pull-mirror-of-ecr"],
        ),
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    ),
    "pull-secret-mirror": lambda: celeryworkerpool.build_pull_secret_mirror(
        o.app(spec={"imagePullSecrets": [{"name": "regcred"}]}),
        o.pool(TEAM),
        "regcred",
        "kubernetes.io/dockerconfigjson",
        {".dockerconfigjson": "eyJhdXRocyI6IHt9fQ=="},
        _pool_owner(o.pool(TEAM)),
    ),
    "connection-secret": lambda: celeryworkerpool.build_connection_secret(
        o.app(),
        o.pool(TEAM),
        "redis://:pw@redis.shop:6379/0",
        "redis://:pw@redis.shop:6379/1",
        None,
    ),
    "keda-redis": lambda: _keda(
        "rediss://worker:s3cr%40t@redis.shop:6380/2", {"queueLength": {"engine": "keda"}}
    ),
    "keda-rabbitmq-cpu": lambda: _keda(
        "pyamqp://shop:pw@rabbitmq.shop:5672/shop",
        {"minReplicas": 2, "cpu": {"averageUtilization": 70}, "queueLength": {"engine": "keda"}},
    ),
    "keda-sqs": lambda: _keda(
        "sqs://AKIAEXAMPLE:secret%2Bkey@",
        {
            "minReplicas": 0,
            "queueLength": {
                "engine": "keda",
                "activation": 5,
                "sqs": {
                    "region": "eu-west-1",
                    "queueUrlPrefix": "https://sqs.eu-west-1.amazonaws.com/123456789012/shop-",
                },
            },
        },
    ),
    "keda-sqs-workload-identity": lambda: _keda(
        "sqs://",
        {
            "queueLength": {
                "engine": "keda",
                "sqs": {
                    "region": "eu-west-1",
                    "queueUrlPrefix": "https://sqs.eu-west-1.amazonaws.com/123456789012/",
                    "identityOwner": "workload",
                },
            }
        },
    ),
    "worker-pod-additions": lambda: celeryworkerpool.build_worker_deployment(
        o.app(spec=CA_BUNDLE),
        o.pool(spec={**POD_ADDITIONS, "probes": {"readiness": {"enabled": True}}}),
        None,
        replicas=2,
    ),
    "beat-pod-additions": lambda: celeryapp.build_beat_deployment(
        o.app(
            spec={
                **CA_BUNDLE,
                "beat": {
                    "enabled": True,
                    "volumes": [{"name": "schedule", "configMap": {"name": "beat-schedule"}}],
                    "volumeMounts": [{"name": "schedule", "mountPath": "/etc/beat"}],
                    "sidecars": [SQL_PROXY],
                },
            }
        ),
        None,
    ),
    "flower-pod-additions": lambda: flower.build_flower_deployment(
        o.app(spec=CA_BUNDLE),
        o.flower(
            spec={
                "extraArgs": [
                    "--auth=.*@example\\.com",
                    "--auth_provider=flower.views.auth.GoogleAuth2LoginHandler",
                ],
                "env": [
                    {"name": "FLOWER_OAUTH2_KEY", "value": "shop-flower.apps.example.com"},
                    {
                        "name": "FLOWER_OAUTH2_SECRET",
                        "valueFrom": {"secretKeyRef": {"name": "flower-oauth", "key": "secret"}},
                    },
                    {
                        "name": "FLOWER_OAUTH2_REDIRECT_URI",
                        "value": "https://flower.example.com/login",
                    },
                ],
                "envFrom": [{"configMapRef": {"name": "flower-settings"}}],
                "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
                "volumes": [{"name": "static", "emptyDir": {}}],
                "volumeMounts": [{"name": "static", "mountPath": "/srv/static"}],
                "initContainers": [WAIT_FOR_DB],
            }
        ),
        None,
    ),
    "pdb-default": lambda: celeryworkerpool.build_worker_pdb(o.app(), o.pool(), None),
    "hpa-cpu": lambda: autoscaling.build_hpa(o.app(), o.pool(REPORTS), None),
    "hpa-cpu-memory-behavior": lambda: autoscaling.build_hpa(
        o.app(),
        o.pool(
            REPORTS,
            spec={
                "autoscaling": {
                    "memory": {"averageUtilization": 70},
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}},
                }
            },
        ),
        None,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    rendered = CASES[case]()
    text = yamlio.dump(rendered)
    path = GOLDEN / f"{case}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"no golden file {path.name}: run UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == path.read_text(), f"{case} differs from {path}; if intended, UPDATE_GOLDEN=1"


def test_every_golden_file_has_a_case() -> None:
    assert {p.stem for p in GOLDEN.glob("*.yaml")} == set(CASES)


def test_builders_are_deterministic() -> None:
    for case, build in CASES.items():
        assert build() == build(), case


def _scribble(x: Any) -> None:
    """Writes into every map and list of a rendered object, as a caller might."""
    if isinstance(x, dict):
        for v in list(x.values()):
            _scribble(v)
        x["scribbled"] = True
    elif isinstance(x, list):
        for v in list(x):
            _scribble(v)
        x.append("scribbled")


SHARED_INPUTS: dict[str, Callable[[Any, Any, Any], dict[str, Any]]] = {
    "worker": lambda app, pool, fl: celeryworkerpool.build_worker_deployment(
        app, pool, None, replicas=2
    ),
    "beat": lambda app, pool, fl: celeryapp.build_beat_deployment(app, None),
    "flower": lambda app, pool, fl: flower.build_flower_deployment(app, fl, None),
}


@pytest.mark.parametrize("build", list(SHARED_INPUTS.values()), ids=list(SHARED_INPUTS))
def test_what_a_builder_returns_shares_nothing_with_its_inputs(
    build: Callable[[Any, Any, Any], dict[str, Any]],
) -> None:
    """A builder copies its whole output once, at its end: the models, their podDefaults
    and the module's defaults (security contexts, the tmp volume) are never handed out."""
    beat = {"enabled": True, "volumeMounts": [{"name": "shop-ca", "mountPath": "/b"}]}
    app = o.app(spec={**CA_BUNDLE, "beat": {**beat, "sidecars": [SQL_PROXY]}})
    pool = o.pool(spec=POD_ADDITIONS)
    fl = o.flower(spec={"lifecycle": {"preStop": {"sleep": {"seconds": 5}}}, **POD_ADDITIONS})
    first = build(app, pool, fl)
    before = yamlio.dump(first)
    _scribble(first)
    assert yamlio.dump(build(app, pool, fl)) == before
