"""Upgrade from the last release (v0.1.0) to HEAD, on the real control plane.

v0.1.0 is installed as users have it: its CRDs, its chart (`helm install`: the operator
Deployment at 0 replicas and no webhook, since kwok's pods run no containers; both
operators run here as processes, authenticated as the release's ServiceAccount, so under
the RBAC that each chart installed), and its operator (v0.1.0's source, from a git
worktree) managing 3 apps, each with a pool, and a Flower. Then the upgrade as
docs/operations.md says: HEAD's CRDs first (v0.1.0's operator still running on them),
v0.1.0's operator stopped (it takes no part in HEAD's Lease, so it must not overlap with
HEAD's), `helm upgrade` to HEAD's chart, and HEAD's operator started (what the chart's new
pods do). Proved:

(a) no Deployment rolls unless its pod template really changed. What HEAD's plans render
    for the live specs, server-side applied in a dry run as the operator applies it, is
    compared with the Deployment the old operator wrote: where nothing changes, the
    Deployment's ReplicaSets stay as they were after HEAD's operator has reconciled
    everything, and so does its generation unless its own annotations moved (a Secret
    checksum baseline: no pod rolls for it); where the template changes, exactly one new
    ReplicaSet (the fields that differ are printed);
(b) every app (and pool) stays Ready throughout: watches see the writes to the apps and
    pools from before the CRDs are upgraded to the end; none is seen not Ready, and no
    app's, pool's or Flower's Ready condition has a new lastTransitionTime (which also
    covers the moment the CRD update ends the watches);
(c) the CRDs are upgraded: spec.scaleDown (CeleryWorkerPool) and
    spec.broker.transportOptions (CeleryApp), new in HEAD, are refused (strict field
    validation) or pruned before, accepted and kept after; the pools created before the
    upgrade read HEAD's defaults.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from celery_operator.api.base import API_VERSION
from celery_operator.api.celeryapp import CeleryApp
from celery_operator.api.celeryworkerpool import CeleryWorkerPool
from celery_operator.api.flower import Flower
from celery_operator.api.kinds import flower_app_key, pool_app_key
from celery_operator.api.labels import FIELD_MANAGER
from celery_operator.controllers.secretwatch import view_of
from celery_operator.plans.celeryapp import AppInputs, plan_app
from celery_operator.plans.celeryapp import secret_reads as app_secret_reads
from celery_operator.plans.celeryworkerpool import BROKER, Connection, PoolInputs, plan_pool
from celery_operator.plans.celeryworkerpool import secret_reads as pool_secret_reads
from celery_operator.plans.common import parse, parse_app
from celery_operator.plans.flower import FlowerInputs, plan_flower
from celery_operator.plans.flower import secret_reads as flower_secret_reads
from celery_operator.plans.secrets import SecretKey, SecretView
from tests.e2e.test_controllers import FLOWER, app, deep_merge, pool, secret
from tests.e2e.test_crash_recovery import managed
from tests.e2e.test_failover import role
from tests.support.cluster import Cluster, wait_for
from tests.support.operator import OperatorProcess, new_workdir
from tests.support.upgrade import (
    ROOT,
    ConditionWatch,
    Release,
    ReleaseOperator,
    resolves,
    worktree,
)

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

# The last release: the tag v0.1.0, which names this commit. A clone without tags still
# has the commit (a shallow one has neither: the test says so).
OLD_TAG = "v0.1.0"
OLD_COMMIT = "6d1fe79f52893ee52d86bb1a3c4ac377ec50a6aa"
OLD = OLD_TAG if resolves(OLD_TAG) else OLD_COMMIT
CHART = Path("charts") / "celery-operator"
# kwok's pods run no containers: the operators run as local processes, not in the release.
VALUES = ("--set", "operator.replicas=0", "--set", "webhook.enabled=false")
N = 3
BROKER_URL = "redis://:pw@redis:6379/0"  # secret()'s: no broker answers there
KINDS = ("celeryapps", "celeryworkerpools", "flowers")
# Fields that only HEAD's CRDs have.
SCALE_DOWN = {"protectBusyWorkers": False, "drainTimeoutSeconds": 30}
SCALE_DOWN_DEFAULT = {"protectBusyWorkers": True, "drainTimeoutSeconds": 600}
TRANSPORT_OPTIONS = {"global_keyprefix": "shop:"}


# ---- fixtures ---------------------------------------------------------------------------
@pytest.fixture
def old_source() -> Iterator[Path]:
    with worktree(OLD) as path:
        yield path


def apply_crds(cluster: Cluster, files: list[Path]) -> None:
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", *[a for f in files for a in ("-f", str(f))]
    )
    cluster.wait_established(*[f.name.removesuffix(".yaml") for f in files])


def crd_files(root: Path) -> list[Path]:
    return sorted(root.glob("crds/*/*.celeryproject.org.yaml"))


@pytest.fixture
def release(cluster: Cluster, alone: None, crds: list[str], old_source: Path) -> Iterator[Release]:
    """A release namespace; afterwards the release is uninstalled and HEAD's CRDs are back
    (before the session's operator starts again)."""
    rel = Release(cluster, f"up-{uuid.uuid4().hex[:6]}", cluster.create_namespace("upgrade"))
    try:
        yield rel
    finally:
        try:
            if rel.installed():
                rel.uninstall()
        finally:
            cluster.run("delete", "namespace", rel.namespace, "--wait=false")
            apply_crds(cluster, crd_files(ROOT))


# ---- what runs --------------------------------------------------------------------------
def desired_objects(ns: str) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = [secret(ns, url=BROKER_URL)]
    for i in range(N):
        objs += [app(ns, f"app{i}"), pool(ns, f"workers{i}", app_name=f"app{i}")]
    flower = deep_merge(
        FLOWER,
        {"metadata": {"name": "flower0", "namespace": ns}, "spec": {"appRef": {"name": "app0"}}},
    )
    flower["spec"].pop("basicAuth", None)
    return [*objs, flower]


def items(cluster: Cluster, kind: str, ns: str) -> list[dict[str, Any]]:
    return list(json.loads(cluster.kubectl("get", kind, "-n", ns, "-o", "json"))["items"])


def wait_all_ready(cluster: Cluster, ns: str) -> None:
    names = [f"celeryapp/app{i}" for i in range(N)] + [
        f"celeryworkerpool/workers{i}" for i in range(N)
    ]
    for name in [*names, "flower/flower0"]:
        cluster.wait("--for=condition=Ready", name, "-n", ns, timeout=120)


def ready_condition(obj: dict[str, Any]) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == "Ready":
            return dict(c)
    return {}


def ready_since(cluster: Cluster, ns: str) -> dict[str, str]:
    """Each object's Ready condition, as status@lastTransitionTime."""
    out = {}
    for kind in KINDS:
        for obj in items(cluster, kind, ns):
            c = ready_condition(obj)
            out[f"{kind}/{obj['metadata']['name']}"] = (
                f"{c.get('status')}@{c.get('lastTransitionTime')}"
            )
    return out


# ---- Deployments: as they are, and as HEAD would apply them ------------------------------
@dataclass(frozen=True)
class DeploymentState:
    generation: int
    spec: dict[str, Any]
    replicasets: frozenset[str]
    # The Deployment's own annotations (a change bumps its generation, as a spec change
    # does, since they are copied to its ReplicaSets; no pod rolls for it).
    annotations: dict[str, str] = dataclasses.field(default_factory=dict, compare=False)


def deployments(cluster: Cluster, ns: str) -> dict[str, DeploymentState]:
    owned: dict[str, set[str]] = {}
    for rs in items(cluster, "replicasets", ns):
        for ref in rs["metadata"].get("ownerReferences") or []:
            owned.setdefault(ref["uid"], set()).add(rs["metadata"]["name"])
    return {
        d["metadata"]["name"]: DeploymentState(
            d["metadata"]["generation"],
            d["spec"],
            frozenset(owned.get(d["metadata"]["uid"], set())),
            dict(d["metadata"].get("annotations") or {}),
        )
        for d in managed(cluster, "deployments", ns)
    }


def secret_views(cluster: Cluster, keys: tuple[SecretKey, ...]) -> dict[SecretKey, SecretView]:
    """The Secrets as the controllers' Secret poller reads them."""
    return {
        (ns, name): view_of(
            cluster.get("secret", name, ns) if cluster.exists("secret", name, ns) else None
        )
        for ns, name in keys
    }


def live(cluster: Cluster, ns: str, plan: Any) -> dict[str, Any] | None:
    """The live Deployment a plan renders, as the controllers gather it (a Deployment the
    old operator made carries no Secret checksum: HEAD adopts it without a roll)."""
    names = [c["metadata"]["name"] for c in plan.children or () if c["kind"] == "Deployment"]
    if not names or not cluster.exists("deployment", names[0], ns):
        return None
    return cluster.get("deployment", names[0], ns)


def head_deployments(cluster: Cluster, ns: str) -> dict[str, dict[str, Any]]:
    """The Deployments HEAD's plans render for the objects as they are now (read through
    HEAD's CRDs, with their defaults), given what the controllers would gather (the
    Secrets their pods read, and the live Deployments: their Secret checksums)."""
    apps = {a["metadata"]["name"]: a for a in items(cluster, "celeryapps", ns)}
    pools = items(cluster, "celeryworkerpools", ns)
    flowers = items(cluster, "flowers", ns)
    labels = cluster.get("namespace", ns)["metadata"].get("labels") or {}
    children: list[tuple[str, tuple[dict[str, Any], ...] | None]] = []
    for name, body in apps.items():
        app_inputs = AppInputs(
            key=(ns, name),
            body=body,
            app=parse(CeleryApp, body),
            pools=[],
            flowers=[],
            beat=None,
            now="",
        )
        secrets = secret_views(cluster, app_secret_reads(app_inputs))
        app_inputs = dataclasses.replace(app_inputs, secrets=secrets)
        app_inputs = dataclasses.replace(app_inputs, beat=live(cluster, ns, plan_app(app_inputs)))
        plan = plan_app(app_inputs)
        children.append((f"app {name}", plan.children))
    for body in pools:
        pool_inputs = PoolInputs(
            key=(ns, body["metadata"]["name"]),
            body=body,
            pool=parse(CeleryWorkerPool, body),
            app=parse_app(apps.get(pool_app_key(body)[1])),
            namespace_labels=labels,
            deployment=None,
            now="",
            connections={BROKER: Connection(url=BROKER_URL)},
        )
        secrets = secret_views(cluster, pool_secret_reads(pool_inputs))
        pool_inputs = dataclasses.replace(pool_inputs, secrets=secrets)
        pool_inputs = dataclasses.replace(
            pool_inputs, deployment=live(cluster, ns, plan_pool(pool_inputs))
        )
        pool_plan = plan_pool(pool_inputs)
        children.append((f"pool {body['metadata']['name']}", pool_plan.children))
    for body in flowers:
        same_app = [f for f in flowers if flower_app_key(f) == flower_app_key(body)]
        flower_inputs = FlowerInputs(
            key=(ns, body["metadata"]["name"]),
            body=body,
            flower=parse(Flower, body),
            app=parse_app(apps.get(flower_app_key(body)[1])),
            siblings=[
                (f["metadata"]["creationTimestamp"], f["metadata"]["name"]) for f in same_app
            ],
            deployment=None,
            now="",
        )
        secrets = secret_views(cluster, flower_secret_reads(flower_inputs))
        flower_inputs = dataclasses.replace(flower_inputs, secrets=secrets)
        flower_inputs = dataclasses.replace(
            flower_inputs, deployment=live(cluster, ns, plan_flower(flower_inputs))
        )
        flower_plan = plan_flower(flower_inputs)
        children.append((f"flower {body['metadata']['name']}", flower_plan.children))
    out = {}
    for who, rendered in children:
        assert rendered is not None, f"HEAD's plan for {who} renders nothing"
        for child in rendered:
            if child["kind"] == "Deployment":
                out[child["metadata"]["name"]] = child
    return out


def as_applied(cluster: Cluster, manifest: dict[str, Any]) -> dict[str, Any]:
    """The Deployment as it would be if the operator applied `manifest` now: a server-side
    apply under its field manager, forced as it forces, in a dry run. (Fields the old
    operator owned and HEAD no longer renders are dropped, as they would be.)"""
    out = cluster.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        f"--field-manager={FIELD_MANAGER}",
        "--force-conflicts",
        "-o",
        "json",
        "-f",
        "-",
        input=json.dumps(manifest),
    )
    return dict(json.loads(out))


_ABSENT = object()


def differences(old: Any, new: Any, path: str) -> list[str]:
    """Where `new` differs from `old`: one line per differing leaf (or list of another
    length), with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            d
            for k in sorted(set(old) | set(new))
            for d in differences(old.get(k, _ABSENT), new.get(k, _ABSENT), f"{path}.{k}")
        ]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            d
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for d in differences(a, b, f"{path}[{i}]")
        ]
    if old == new:
        return []

    def show(v: Any) -> str:
        return "<absent>" if v is _ABSENT else json.dumps(v, sort_keys=True)[:300]

    if isinstance(old, list) and isinstance(new, list):  # of another length: the items
        gone = [x for x in old if x not in new]
        added = [x for x in new if x not in old]
        return [f"{path}: removed {show(gone)}, added {show(added)}"]
    return [f"{path}: {show(old)} -> {show(new)}"]


# ---- the schema's new fields --------------------------------------------------------------
def new_fields(ns: str) -> list[tuple[dict[str, Any], tuple[str, ...], Any]]:
    """Each object with a field only HEAD's CRDs have: (object, path, value)."""
    return [
        (
            pool(ns, "workers0", app_name="app0", scaleDown=SCALE_DOWN),
            ("spec", "scaleDown"),
            SCALE_DOWN,
        ),
        (
            app(ns, "app1", broker={"transportOptions": TRANSPORT_OPTIONS}),
            ("spec", "broker", "transportOptions"),
            TRANSPORT_OPTIONS,
        ),
    ]


def dig(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def refused_or_pruned(cluster: Cluster, obj: dict[str, Any], path: tuple[str, ...]) -> str:
    """How the served schema treats the field: the apply (kubectl's strict field
    validation, in a server-side dry run) and the same without validation."""
    text = yaml.safe_dump(obj)
    strict = cluster.run("apply", "--dry-run=server", "-o", "json", "-f", "-", input=text)
    lax = cluster.run(
        "apply", "--dry-run=server", "--validate=false", "-o", "json", "-f", "-", input=text
    )
    assert lax.code == 0, lax.stderr
    field = ".".join(path)
    pruned = dig(json.loads(lax.stdout), path) is None
    refused = strict.code != 0 and f'unknown field "{field}"' in strict.stderr
    assert refused or pruned, f"{field} is served before the upgrade: {strict.stdout[:300]}"
    return ", ".join(w for w, yes in (("refused (strict)", refused), ("pruned", pruned)) if yes)


def applies_by(cluster: Cluster, user: str, ns: str, since: float) -> dict[str, int] | None:
    """Server-side applies to Deployments of `ns` by `user` since `since` (epoch seconds),
    per Deployment, from the local control plane's audit log (None on another cluster)."""
    cp = cluster.control_plane
    if cp is None:
        return None
    out: dict[str, int] = {}
    for e in cp.audit_events():
        ref = e.get("objectRef") or {}
        at = dt.datetime.fromisoformat(e["requestReceivedTimestamp"].replace("Z", "+00:00"))
        if (
            e.get("verb") == "patch"
            and e.get("stage") == "ResponseComplete"
            and (e.get("user") or {}).get("username") == user
            and ref.get("resource") == "deployments"
            and ref.get("namespace") == ns
            and at.timestamp() >= since
        ):
            out[ref["name"]] = out.get(ref["name"], 0) + 1
    return dict(sorted(out.items()))


# ---- the HEAD operator's progress ----------------------------------------------------------
def reconciles(op: OperatorProcess, kind: str) -> float:
    m = re.search(
        rf'^celery_operator_reconciles_total\{{kind="{kind}",result="ok"\}} (\S+)$',
        op.metrics(),
        re.MULTILINE,
    )
    return float(m.group(1)) if m else 0.0


def reconciled_all(op: OperatorProcess) -> bool:
    return (
        reconciles(op, "app") >= N and reconciles(op, "pool") >= N and reconciles(op, "flower") >= 1
    )


def observed(cluster: Cluster, kind: str, name: str, ns: str) -> bool:
    obj = cluster.get(kind, name, ns)
    return bool(ready_condition(obj).get("observedGeneration") == obj["metadata"]["generation"])


# ---- the test ---------------------------------------------------------------------------
def check_rollouts(
    cluster: Cluster, ns: str, was: dict[str, DeploymentState], predicted: dict[str, dict[str, Any]]
) -> list[str]:
    """(a): each Deployment changed exactly as the prediction says. Returns the report."""
    lines = []
    for name, old in sorted(was.items()):
        diff = differences(old.spec, predicted[name]["spec"], "spec")
        template = [d for d in diff if d.startswith("spec.template")]
        if template:
            wait_for(
                f"one new ReplicaSet of {name}",
                lambda n=name, o=old: len(deployments(cluster, ns)[n].replicasets - o.replicasets),
                60,
            )
        now = deployments(cluster, ns)[name]
        new_rs = now.replicasets - old.replicasets
        lines.append(
            f"  {name}: generation {old.generation} -> {now.generation}, ReplicaSets "
            f"{len(old.replicasets)} -> {len(now.replicasets)} ({len(new_rs)} new); HEAD's "
            + ("spec is the same" if not diff else "spec differs:\n      " + "\n      ".join(diff))
        )
        if not diff:
            # Nothing rolls: no new ReplicaSet. The generation moves only with the
            # Deployment's annotations (HEAD adopts a Deployment from before Secret
            # checksums with a baseline annotation on its metadata).
            moved = differences(old.annotations, now.annotations, "metadata.annotations")
            defect = (
                f"UPGRADE DEFECT: {name} changed although HEAD renders the same spec "
                f"(generation {old.generation} -> {now.generation}, new ReplicaSets "
                f"{sorted(new_rs)}): HEAD's operator wrote more than its plans render: "
                f"{differences(old.spec, now.spec, 'spec')}"
            )
            assert now.replicasets == old.replicasets, defect
            assert now.generation == old.generation or moved, defect
            if moved:
                lines.append(f"    its annotations moved (no roll): {moved}")
        elif not template:
            assert now.generation > old.generation, lines[-1]
            assert not new_rs, lines[-1]
        else:
            assert len(new_rs) == 1, lines[-1]
            assert old.replicasets <= now.replicasets, lines[-1]
    return lines


def check_new_fields(cluster: Cluster, ns: str) -> dict[str, str]:
    """(c), after the upgrade: the new fields are accepted (strict validation) and kept."""
    for obj, path, _ in new_fields(ns):
        r = cluster.run("apply", "-f", "-", input=yaml.safe_dump(obj))  # strict validation
        assert r.code == 0, f"{'.'.join(path)} refused after the upgrade: ...{r.stderr[-200:]}"
    wait_for(
        "HEAD's operator to reconcile the changed pool and app",
        lambda: (
            observed(cluster, "celeryworkerpool", "workers0", ns)
            and observed(cluster, "celeryapp", "app1", ns)
        ),
        60,
    )
    out = {}
    for obj, path, value in new_fields(ns):
        live = cluster.get(obj["kind"], obj["metadata"]["name"], ns)
        assert dig(live, path) == value, f"{'.'.join(path)} not kept: {dig(live, path)}"
        out[".".join(path)] = "accepted (strict) and kept"
    for i in (1, 2):  # created under v0.1.0's schema: they read HEAD's defaults
        live = cluster.get("celeryworkerpool", f"workers{i}", ns)
        assert live["spec"].get("scaleDown") == SCALE_DOWN_DEFAULT, live["spec"]
    return out


def check_ready(watch: ConditionWatch, what: str, since: float) -> str:
    """(b): every state the watch saw was Ready. Returns the report."""
    not_ready = [
        f"{s.name} rv {s.resource_version} at +{s.at - since:.1f}s: {s.status} {s.reason} "
        f"{s.message}"
        for s in watch.not_true()
    ]
    assert watch.alive, f"the watch of the {what} died: {watch.failures}"
    assert not not_ready, f"UPGRADE DEFECT: {what} not Ready during the upgrade:\n" + "\n".join(
        not_ready
    )
    counts: dict[str, int] = {}
    for s in watch.seen:
        counts[s.name] = counts.get(s.name, 0) + 1
    return (
        f"{len(watch.seen)} states of the {what} seen ({counts}), every one Ready; "
        f"{watch.watches} watch requests, {watch.relists} lists; "
        f"watch failures: {watch.failures or 'none'}"
    )


def test_upgrade_from_the_last_release(
    cluster: Cluster, release: Release, old_source: Path, namespace: str
) -> None:
    ns = namespace
    started = time.monotonic()
    # v0.1.0, installed: its CRDs, its chart, its operator under the release's account.
    apply_crds(cluster, crd_files(old_source))
    release.install(old_source / CHART, *VALUES)
    account = release.fullname
    old_op = ReleaseOperator(
        cluster,
        new_workdir(),
        release.namespace,
        account,
        f"--namespace={ns}",
        src=old_source / "src",
    )
    head_op = ReleaseOperator(
        cluster, new_workdir(), release.namespace, account, f"--namespace={ns}", lease=account
    )
    try:
        old_op.start()
        cluster.apply(desired_objects(ns))
        wait_all_ready(cluster, ns)
        before_crds = {
            ".".join(path): refused_or_pruned(cluster, obj, path) for obj, path, _ in new_fields(ns)
        }
        before = deployments(cluster, ns)
        since = ready_since(cluster, ns)
        assert all(v.startswith("True@") for v in since.values()), since
        installed = time.monotonic()

        collection = f"/apis/{API_VERSION}/namespaces/{ns}"
        apps = ConditionWatch(cluster, f"{collection}/celeryapps")
        pools = ConditionWatch(cluster, f"{collection}/celeryworkerpools")
        with apps, pools:
            # The upgrade, as docs/operations.md says: the CRDs first, ...
            cluster.kubectl(
                "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / CHART / "crds")
            )
            cluster.wait_established(*[f.name.removesuffix(".yaml") for f in crd_files(ROOT)])
            at_rollout = deployments(cluster, ns)
            assert at_rollout == before, "v0.1.0's operator changed Deployments as the CRDs changed"
            # ... v0.1.0's operator stopped (`kubectl scale --replicas=0`), then the chart.
            old_op.stop()
            release.upgrade(ROOT / CHART, *VALUES)
            history = [(h["revision"], h["status"]) for h in release.history()]
            assert history == [(1, "superseded"), (2, "deployed")], history
            predicted = {
                name: as_applied(cluster, m) for name, m in head_deployments(cluster, ns).items()
            }
            assert sorted(predicted) == sorted(at_rollout), (
                f"HEAD renders Deployments {sorted(predicted)}, v0.1.0 made {sorted(at_rollout)}"
            )
            # HEAD's operator, as the upgraded release's pods run it (under its new RBAC).
            head_started = time.time()
            head_op.start()
            wait_for("HEAD's operator to lead", lambda: role(head_op) == "leader", 30)
            wait_for(
                "HEAD's operator to reconcile every app, pool and Flower",
                lambda: reconciled_all(head_op),
                60,
            )
            upgraded = time.monotonic()

            print("\n(a) Deployments, as v0.1.0 made them -> after HEAD's operator reconciled:")
            print("\n".join(check_rollouts(cluster, ns, at_rollout, predicted)))
            after_a = deployments(cluster, ns)
            applied = applies_by(
                cluster, f"system:serviceaccount:{release.namespace}:{account}", ns, head_started
            )
            if applied is not None:  # the local control plane's audit log: HEAD did apply
                print(f"  HEAD's operator applied each of them (audit log): {applied}")
                assert set(applied) == set(at_rollout), f"HEAD's operator applied {applied}"

            after_crds = check_new_fields(cluster, ns)
            print(f"(c) before the upgrade: {before_crds}; after: {after_crds}")
            wait_all_ready(cluster, ns)
            final = deployments(cluster, ns)
            changed = sorted(n for n in final if final[n] != after_a[n])
            assert not changed, f"UPGRADE DEFECT: fields that change no pod rolled {changed}"
        ended = time.monotonic()

        # (b) Ready at every write the watches saw, and no Ready transition at all.
        apps_report = check_ready(apps, "apps", installed)
        pools_report = check_ready(pools, "pools", installed)
        late = [s for s in apps.seen if s.at > upgraded]
        assert any(s.name == "app1" for s in late), "the watch saw nothing after HEAD took over"
        assert ready_since(cluster, ns) == since, "a Ready condition transitioned"
        assert not head_op.errors(), head_op.errors()
        print(f"(b) over {ended - installed:.1f}s: {apps_report}")
        print(f"    {pools_report}")
        print("    every Ready lastTransitionTime (apps, pools, Flower) unchanged")
        print(
            f"installed in {installed - started:.1f}s; upgraded (CRDs applied -> HEAD's "
            f"operator has reconciled everything) in {upgraded - installed:.1f}s"
        )
    finally:
        for op in (old_op, head_op):
            op.stop()
        print(f"\n--- v0.1.0 operator ---\n{old_op.tail(15)}")
        print(f"--- HEAD operator ---\n{head_op.tail(15)}")
