"""The worker Deployment of a CeleryWorkerPool (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from celery_operator.api.celeryapp import CeleryApp
from celery_operator.api.celeryworkerpool import CeleryWorkerPool
from celery_operator.api.labels import (
    LABEL_APP_NAMESPACE,
    LABEL_COMPONENT,
    LABEL_NAME,
    LABEL_POOL,
    MIRROR_OF_ANNOTATION,
    PULL_SECRET_MIRRORS_ANNOTATION,
    label_value,
)
from celery_operator.render import common as c

COMPONENT = "worker"

# The liveness probe: ping this worker, and only this worker, through the broker. When the
# broker itself cannot be reached the probe passes: restarting a healthy worker does not
# bring a broker back, and a broker blip must not restart every worker of the cluster.
# It runs in the app's image with the app's own configuration (transport options, TLS).
# Brokers without broadcast (SQS) cannot carry a ping: there the probe only checks the
# process answers at all.
LIVENESS_SCRIPT = """\
import os, socket, sys
from celery.app.utils import find_app
app = find_app(os.environ["CELERY_APP"])
node = os.environ["CELERY_WORKER_NODE"].replace("%h", socket.gethostname())
timeout = float(os.environ.get("CELERY_PROBE_TIMEOUT", "10"))
try:
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
        broadcast = "fanout" in conn.transport.implements.exchange_type
except Exception as exc:
    print(f"broker unreachable, not restarting: {type(exc).__name__}")
    sys.exit(0)
if not broadcast:
    print("this broker has no remote control (e.g. SQS): the process is alive, that is all")
    sys.exit(0)
replies = app.control.ping(destination=[node], timeout=timeout)
if any(node in r for r in replies):
    sys.exit(0)
print(f"{node} did not answer a ping within {timeout}s")
sys.exit(1)
"""


# The opt-in readiness probe: Ready once this worker answers a ping through the broker.
# Celery answers remote control only from its event loop, which starts after the task
# consumers: a worker that answers consumes its queues. Unlike liveness, a broker that
# cannot be reached fails it: such a worker consumes nothing. A worker told to stop
# consuming (a drain before scale-down) still answers, so drains do not turn the pool
# not Ready. The ping timeout is the script's argument. Without broadcast (SQS) only the
# broker is checked.
READINESS_SCRIPT = """\
import os, socket, sys
from celery.app.utils import find_app
app = find_app(os.environ["CELERY_APP"])
node = os.environ["CELERY_WORKER_NODE"].replace("%h", socket.gethostname())
timeout = float(sys.argv[1])
try:
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
        broadcast = "fanout" in conn.transport.implements.exchange_type
except Exception as exc:
    print(f"broker unreachable, not ready: {type(exc).__name__}")
    sys.exit(1)
if not broadcast:
    print("this broker has no remote control (e.g. SQS): the broker answers, that is all")
    sys.exit(0)
replies = app.control.ping(destination=[node], timeout=timeout)
if any(node in r for r in replies):
    sys.exit(0)
print(f"{node} did not answer a ping within {timeout}s")
sys.exit(1)
"""


# The worker's launcher: Celery's own `celery` command, run in this process, after choosing
# how SIGTERM stops the worker. The soft shutdown (REMAP_SIGTERM=SIGQUIT, then
# worker_soft_shutdown_timeout seconds for running tasks) exists since Celery 5.5. Older
# Celery refuses the setting (the worker would not start) and takes SIGQUIT as a cold
# shutdown that kills running tasks at once: there SIGTERM stays Celery's warm shutdown
# (running tasks get the pod's whole grace period). The timeout goes in before the user's
# own `-- key=value` settings, so those win; a REMAP_SIGTERM in the env is left as it is.
# Until Celery installs its own signal handlers (before it consumes anything), SIGTERM
# ends the process: PID 1 of a container ignores a signal it has no handler for, so a pod
# deleted while its worker boots would otherwise start consuming tasks and be SIGKILLed
# at the end of its grace period, in the middle of them.
LAUNCHER_SCRIPT = """\
import os, signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
import celery
args = sys.argv[1:]
soft = os.environ.pop("CELERY_OPERATOR_SOFT_SHUTDOWN_TIMEOUT", "")
if soft and celery.VERSION >= (5, 5):
    os.environ.setdefault("REMAP_SIGTERM", "SIGQUIT")
    if "--" not in args:
        args.append("--")
    args.insert(args.index("--") + 1, "worker.soft_shutdown_timeout=" + soft)
elif soft:
    print(f"celery-operator: Celery {celery.__version__} has no soft shutdown: SIGTERM is a "
          "warm shutdown (running tasks get terminationGracePeriodSeconds)", flush=True)
sys.argv = ["celery", *args]
from celery.__main__ import main
sys.exit(main())
"""
SOFT_SHUTDOWN_ENV = "CELERY_OPERATOR_SOFT_SHUTDOWN_TIMEOUT"


def worker_node_name(pool: CeleryWorkerPool) -> str:
    """Celery node name, unique per pod and naming its pool: <pool>.<namespace>@<pod>."""
    meta = pool.metadata
    return f"{meta['name']}.{meta['namespace']}@%h"


def selector_labels(pool: CeleryWorkerPool) -> dict[str, str]:
    """The Deployment selector: stable over the pool's life (never includes the app)."""
    return {
        LABEL_NAME: "celery",
        LABEL_COMPONENT: COMPONENT,
        LABEL_POOL: label_value(pool.metadata["name"]),
    }


def worker_labels(app: CeleryApp, pool: CeleryWorkerPool) -> dict[str, str]:
    labels = c.base_labels(app.metadata["name"], COMPONENT)
    labels[LABEL_POOL] = label_value(pool.metadata["name"])
    labels[LABEL_APP_NAMESPACE] = label_value(app.metadata["namespace"])
    return labels


def build_worker_args(app: CeleryApp, pool: CeleryWorkerPool) -> list[str]:
    s = pool.spec
    args = [
        f"--app={app.spec.app}",
        "worker",
        f"--hostname={worker_node_name(pool)}",
        f"--queues={','.join(s.queues)}",
        f"--concurrency={s.concurrency}",
        f"--pool={s.pool}",
        f"--prefetch-multiplier={s.prefetch_multiplier}",
        f"--loglevel={s.log_level}",
    ]
    if s.max_tasks_per_child is not None:
        args.append(f"--max-tasks-per-child={s.max_tasks_per_child}")
    if s.max_memory_per_child is not None:
        args.append(f"--max-memory-per-child={s.max_memory_per_child}")
    # Celery takes configuration after "--" (key=value); the user's own come last and win.
    user_opts, user_config = s.extra_args, []
    if "--" in s.extra_args:
        cut = s.extra_args.index("--")
        user_opts, user_config = s.extra_args[:cut], s.extra_args[cut + 1 :]
    args.extend(user_opts)
    # The soft shutdown timeout is added by the launcher, on Celery >= 5.5 only.
    if user_config:
        args.extend(["--", *user_config])
    return args


def build_worker_env(
    app: CeleryApp, pool: CeleryWorkerPool, connection_secret: str | None = None
) -> list[dict[str, Any]]:
    s = pool.spec
    ours = [
        {"name": "CELERY_APP", "value": app.spec.app},
        {"name": "CELERY_WORKER_NODE", "value": worker_node_name(pool)},
        {"name": "CELERY_PROBE_TIMEOUT", "value": str(s.probes.liveness.timeout_seconds)},
    ]
    if s.shutdown.soft_shutdown_timeout > 0:
        # Kubernetes stops a pod with SIGTERM, which Celery treats as a warm shutdown that
        # waits for running tasks without limit (until the kubelet's SIGKILL). Remapped to
        # a cold shutdown, Celery >= 5.5 gives running tasks worker_soft_shutdown_timeout
        # seconds, then stops them cleanly (acks_late tasks go back to the queue). The
        # launcher remaps only on Celery >= 5.5 (LAUNCHER_SCRIPT).
        ours.append({"name": SOFT_SHUTDOWN_ENV, "value": str(s.shutdown.soft_shutdown_timeout)})
    return c.merge_env(c.app_env(app, connection_secret), ours, s.env)


def build_liveness_probe(pool: CeleryWorkerPool) -> dict[str, Any]:
    p = pool.spec.probes.liveness
    return {
        "exec": {"command": ["python", "-c", LIVENESS_SCRIPT]},
        # The first probe only after a full period: a worker needs time to boot.
        "initialDelaySeconds": p.period_seconds,
        "periodSeconds": p.period_seconds,
        # The probe's own ping timeout is timeoutSeconds; give the process a little more.
        "timeoutSeconds": p.timeout_seconds + 10,
        "failureThreshold": p.failure_threshold,
        "successThreshold": 1,
        # A worker whose main process stopped answering cannot finish or acknowledge its
        # tasks: it need not wait out the pod's grace (meant for a clean shutdown).
        "terminationGracePeriodSeconds": p.termination_grace_period_seconds,
    }


def build_readiness_probe(pool: CeleryWorkerPool) -> dict[str, Any]:
    p = pool.spec.probes.readiness
    return {
        "exec": {"command": ["python", "-c", READINESS_SCRIPT, str(p.timeout_seconds)]},
        "initialDelaySeconds": p.initial_delay_seconds,
        "periodSeconds": p.period_seconds,
        # The ping's own timeout is timeoutSeconds; the process needs a little more to boot.
        "timeoutSeconds": p.timeout_seconds + 10,
        "failureThreshold": p.failure_threshold,
        "successThreshold": 1,
    }


def build_worker_deployment(
    app: CeleryApp,
    pool: CeleryWorkerPool,
    owner: dict[str, Any] | None,
    *,
    replicas: int | None,
    connection_secret: str | None = None,
    pull_secrets: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The worker Deployment. `replicas=None` leaves replicas to an autoscaler;
    `connection_secret` names the operator's mirror of the app's connection Secret, and
    `pull_secrets` the mirrors of its image pull Secrets, for a pool outside its app's
    namespace (the Deployment's metadata names them too)."""
    s = pool.spec
    d = app.spec.pod_defaults
    meta = pool.metadata
    labels = worker_labels(app, pool)
    pod_labels = c.merge_labels(d.labels, s.labels, own=labels)
    annotations = {**d.annotations, **s.annotations}

    cont = c.container(
        "worker",
        s.image or app.spec.image,
        app,
        build_worker_args(app, pool),
        build_worker_env(app, pool, connection_secret),
        s.resources,
        s.volume_mounts,
    )
    cont["command"] = ["python", "-c", LAUNCHER_SCRIPT]
    if s.env_from:
        cont["envFrom"] = [*cont.get("envFrom", []), *(dict(e) for e in s.env_from)]
    if s.probes.liveness.enabled:
        cont["livenessProbe"] = build_liveness_probe(pool)
    if s.probes.readiness.enabled:
        cont["readinessProbe"] = build_readiness_probe(pool)

    pod_template_meta: dict[str, Any] = {"labels": pod_labels}
    if annotations:
        pod_template_meta["annotations"] = annotations
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(pool)},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {
                "maxSurge": s.update_strategy.max_surge,
                "maxUnavailable": s.update_strategy.max_unavailable,
            },
        },
        "revisionHistoryLimit": 5,
        "template": {
            "metadata": pod_template_meta,
            "spec": c.pod_spec(
                app,
                [cont],
                node_selector=s.node_selector,
                tolerations=s.tolerations,
                affinity=s.affinity,
                priority_class_name=s.priority_class_name,
                topology_spread_constraints=s.topology_spread_constraints,
                termination_grace_period_seconds=s.shutdown.termination_grace_period_seconds,
                volumes=s.volumes,
                init_containers=s.init_containers,
                sidecars=s.sidecars,
                image_pull_secrets=pull_secrets,
            ),
        },
    }
    if replicas is not None:
        spec = {"replicas": replicas, **spec}
    mirrors = {PULL_SECRET_MIRRORS_ANNOTATION: ",".join(pull_secrets)} if pull_secrets else None
    return c.clone(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": c.metadata(
                c.worker_deployment_name(app.metadata["name"], meta["name"]),
                meta["namespace"],
                labels,
                owner,
                mirrors,
            ),
            "spec": spec,
        }
    )


def build_worker_pdb(
    app: CeleryApp, pool: CeleryWorkerPool, owner: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The PodDisruptionBudget, or None when `disruptionBudget: null`."""
    budget = pool.spec.disruption_budget
    if budget is None:
        return None
    meta = pool.metadata
    return c.clone(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": c.metadata(
                c.worker_deployment_name(app.metadata["name"], meta["name"]),
                meta["namespace"],
                worker_labels(app, pool),
                owner,
            ),
            "spec": {
                "maxUnavailable": budget.max_unavailable,
                "selector": {"matchLabels": selector_labels(pool)},
                # Evict pods that are not Ready even when the budget is spent, so a
                # crash-looping pool never blocks a node drain.
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
            },
        }
    )


def build_connection_secret(
    app: CeleryApp,
    pool: CeleryWorkerPool,
    broker_url: str | None,
    backend_url: str | None,
    owner: dict[str, Any] | None,
) -> dict[str, Any]:
    """The operator's mirror of an app's connection URLs in a pool's namespace.

    Admitting a namespace through workerPoolPolicy shares the broker with it: its workers
    need the URL, and pods can read only Secrets of their own namespace.
    """
    data = {}
    if broker_url is not None:
        data[c.MIRROR_BROKER_KEY] = c.b64(broker_url)
    if backend_url is not None:
        data[c.MIRROR_BACKEND_KEY] = c.b64(backend_url)
    meta = pool.metadata
    return c.clone(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": c.metadata(
                c.connection_secret_name(app.metadata["name"], meta["name"]),
                meta["namespace"],
                worker_labels(app, pool),
                owner,
            ),
            "type": "Opaque",
            "data": data,
        }
    )


def build_pull_secret_mirror(
    app: CeleryApp,
    pool: CeleryWorkerPool,
    source: str,
    type_: str,
    data: Mapping[str, str],
    owner: dict[str, Any] | None,
) -> dict[str, Any]:
    """The operator's mirror of the app's image pull Secret `source` in a pool's namespace:
    its type (kubernetes.io/dockerconfigjson, or dockercfg) and its data (base64, as read).

    The kubelet reads image pull Secrets in the pod's own namespace only.
    """
    meta = pool.metadata
    app_ns = app.metadata["namespace"]
    return c.clone(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": c.metadata(
                c.pull_secret_mirror_name(app.metadata["name"], meta["name"], source),
                meta["namespace"],
                worker_labels(app, pool),
                owner,
                {MIRROR_OF_ANNOTATION: f"{app_ns}/{source}"},
            ),
            "type": type_ or "Opaque",
            "data": dict(data),
        }
    )
