"""The chart's monitoring objects (metrics.prometheusRule, metrics.podMonitor.flower,
metrics.dashboard), with testenv's helm and promtool and no cluster:

- the PrometheusRule's groups pass `promtool check rules`, and `promtool test rules` runs the
  alert unit tests of promrules/alerts_test.yaml on them (input series -> expected alerts);
- every query of the Grafana dashboard (its variables substituted) parses, through
  `promtool check rules` as recording rules;
- the rules and the dashboard name only metrics, and labels, of tests/support/metrics_contract.py;
- each toggle renders its objects with the fields they need, and with all off none render.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from testenv import paths

from tests.support import metrics_contract as contract

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "celery-operator"
DASHBOARD = CHART / "dashboards" / "celery.json"
PROMRULES = Path(__file__).resolve().parent / "promrules"
NAMESPACE = "celery-operator-system"
RELEASE = "celery-operator"
MONITORING_KINDS = {"PrometheusRule", "PodMonitor", "ConfigMap"}
ALL_ON: dict[str, Any] = {
    "metrics": {
        "prometheusRule": {"enabled": True},
        "podMonitor": {"flower": {"enabled": True}},
        "dashboard": {"enabled": True},
    }
}
ALERTS = {
    "CeleryQueueBacklogGrowing",
    "CeleryWorkerPoolNotReady",
    "CeleryAppNotReady",
    "CeleryFlowerNotReady",
    "CeleryBrokerUnreachable",
    "CeleryOperatorNoLeader",
}


def _binary(path: Path, component: str) -> Path:
    if not path.exists():
        pytest.fail(
            f"{component} not found at {path}: run `testenv/build.sh {component}` (or `make testenv`)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="module")
def promtool() -> Path:
    return _binary(paths.promtool(), "promtool")


@pytest.fixture(scope="module")
def helm() -> Path:
    return _binary(paths.helm(), "helm")


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd or ROOT)}
    return subprocess.run(
        [str(a) for a in args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _template(helm: Path, tmp: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    """`helm template` offline (no kubeconfig): the documents it renders."""
    f = tmp / "values.yaml"
    f.write_text(yaml.safe_dump(values))
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "KUBECONFIG": str(home / "no-such-kubeconfig"),
    }
    r = subprocess.run(
        [str(helm), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", str(f)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def _rule(docs: list[dict[str, Any]]) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert len(found) == 1, [d["kind"] for d in docs]
    return found[0]


def _rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for g in _rule(docs)["spec"]["groups"] for r in g["rules"]]


@pytest.fixture(scope="module")
def rules_file(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The PrometheusRule's groups, as Prometheus reads a rule file, with the default values."""
    tmp = tmp_path_factory.mktemp("rules")
    rule = _rule(_template(helm, tmp, {"metrics": {"prometheusRule": {"enabled": True}}}))
    path = tmp / "celery-operator.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


# ---- the alerts --------------------------------------------------------------------------


def test_rules_pass_promtool_check(promtool: Path, rules_file: Path) -> None:
    r = _run(promtool, "check", "rules", rules_file)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in r.stdout, r.stdout


def test_alert_unit_tests(promtool: Path, rules_file: Path) -> None:
    """promrules/alerts_test.yaml: a growing backlog fires, a steady or small one does not; a
    pool fires only after its `for` (a rollout never, a change of reason does not restart
    the clock); apps and Flowers; a broker down per app; no leader, and no operator at all."""
    shutil.copy(PROMRULES / "alerts_test.yaml", rules_file.parent / "alerts_test.yaml")
    r = _run(promtool, "test", "rules", "alerts_test.yaml", cwd=rules_file.parent)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout, r.stdout


def test_unit_tests_cover_every_alert() -> None:
    tests = yaml.safe_load((PROMRULES / "alerts_test.yaml").read_text())
    covered = {
        t["alertname"]
        for group in tests["tests"]
        for t in group.get("alert_rule_test", [])
        if t.get("exp_alerts")
    }
    assert covered == ALERTS


def test_every_alert_has_severity_summary_description(helm: Path, tmp_path: Path) -> None:
    values = {
        "metrics": {
            "prometheusRule": {
                "enabled": True,
                "labels": {"release": "prometheus"},
                "alertLabels": {"team": "platform", "severity": "ignored"},
                "runbookUrl": "https://example.com/docs/troubleshooting.md",
                "alerts": {"noLeader": {"severity": "page"}},
            }
        }
    }
    docs = _template(helm, tmp_path, values)
    rule = _rule(docs)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == NAMESPACE
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    rules = _rules(docs)
    assert {r["alert"] for r in rules} == ALERTS
    for r in rules:
        assert r["labels"]["team"] == "platform"
        assert r["labels"]["severity"] in {"info", "warning", "critical", "page"}
        assert re.fullmatch(r"[0-9]+[smh]", r["for"]), r
        a = r["annotations"]
        assert a["summary"]
        assert "docs/troubleshooting.md" in a["description"], r["alert"]
        assert a["runbook_url"] == (
            f"https://example.com/docs/troubleshooting.md#{r['alert'].lower()}"
        )
    assert next(r for r in rules if r["alert"] == "CeleryOperatorNoLeader")["labels"] == {
        "severity": "page",
        "team": "platform",
    }


def test_runbook_anchors_exist() -> None:
    """Each alert has its heading in docs/troubleshooting.md (the runbook_url anchors)."""
    text = (ROOT / "docs" / "troubleshooting.md").read_text()
    headings = set(re.findall(r"^### (\w+)$", text, re.MULTILINE))
    assert headings >= ALERTS, ALERTS - headings


def test_alerts_can_be_disabled_and_tuned(helm: Path, tmp_path: Path) -> None:
    values = {
        "metrics": {
            "prometheusRule": {
                "enabled": True,
                "alerts": {
                    "flowerNotReady": {"enabled": False},
                    "backlogGrowing": {"threshold": 5000, "window": "30m", "for": "1h"},
                },
            }
        }
    }
    rules = {r["alert"]: r for r in _rules(_template(helm, tmp_path, values))}
    assert set(rules) == ALERTS - {"CeleryFlowerNotReady"}
    backlog = rules["CeleryQueueBacklogGrowing"]
    assert "> 5000" in backlog["expr"]
    assert "[30m]" in backlog["expr"]
    assert backlog["for"] == "1h"


def test_every_alert_disabled_leaves_an_empty_group(helm: Path, tmp_path: Path) -> None:
    off = {
        key: {"enabled": False}
        for key in yaml.safe_load((CHART / "values.yaml").read_text())["metrics"]["prometheusRule"][
            "alerts"
        ]
    }
    docs = _template(
        helm, tmp_path, {"metrics": {"prometheusRule": {"enabled": True, "alerts": off}}}
    )
    assert _rule(docs)["spec"]["groups"] == [{"name": "celery-operator", "rules": []}]


# ---- the dashboard -----------------------------------------------------------------------

# Grafana's variables, as a query with "All" selected sends them.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$datasource": "prometheus",
}


def _panels(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for p in items:
        out.append(p)
        out.extend(_panels(p.get("panels", [])))
    return out


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable."""
    d = _dashboard()
    out = []
    for p in _panels(d["panels"]):
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r} {t['refId']}", t["expr"]))
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q)
            assert m, f"variable {v['name']}: {q}"
            out.append((f"variable {v['name']}", m.group(1)))
    return out


def _substitute(expr: str) -> str:
    for k, v in GRAFANA_VARIABLES.items():
        expr = expr.replace(k, v)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)  # $app, ${pool}: "All" is .*


def test_dashboard_queries_parse(promtool: Path, tmp_path: Path) -> None:
    queries = _dashboard_queries()
    assert len(queries) > 20
    rules = [
        {"record": f"dashboard:query_{i}", "expr": _substitute(expr)}
        for i, (_, expr) in enumerate(queries)
    ]
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = _run(promtool, "check", "rules", path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dashboard_shape() -> None:
    d = _dashboard()
    assert d["schemaVersion"] >= 39
    assert d["uid"] == "celery-operator"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"app_namespace", "app", "namespace", "pool"} <= set(variables)
    panels = _panels(d["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        for t in p["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
    assert any(p.get("repeat") == "app" for p in panels), "a row per app"


# ---- the contract ------------------------------------------------------------------------


def _all_expressions(rules: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(f"alert {r['alert']}", r["expr"]) for r in rules] + _dashboard_queries()


def test_rules_and_dashboard_use_only_contract_metrics(helm: Path, tmp_path: Path) -> None:
    docs = _template(helm, tmp_path, {"metrics": {"prometheusRule": {"enabled": True}}})
    exprs = _all_expressions(_rules(docs))
    used: set[str] = set()
    problems = []
    for where, expr in exprs:
        for name, labels in contract.selector_labels(expr).items():
            if name not in contract.CONTRACT:
                problems.append(f"{where}: {name or 'a selector without a metric name'}")
                continue
            used.add(name)
            unknown = labels - contract.labels_of(name)
            if unknown:
                problems.append(f"{where}: {name} has no label {sorted(unknown)}")
        known = set().union(*(contract.labels_of(n) for n in contract.metric_names(expr)))
        if unknown := contract.grouping_labels(expr) - known - {"le"}:
            problems.append(f"{where}: groups by unknown labels {sorted(unknown)}")
    assert not problems, "\n".join(problems)
    # Every operator pool metric is shown somewhere.
    assert {n for n in contract.CONTRACT if n.startswith("celery_operator_pool_")} <= used


def test_rules_and_dashboard_compare_only_known_label_values(helm: Path, tmp_path: Path) -> None:
    docs = _template(helm, tmp_path, {"metrics": {"prometheusRule": {"enabled": True}}})
    problems = []
    for where, expr in _all_expressions(_rules(docs)):
        for (metric, label), allowed in contract.LABEL_VALUES.items():
            for m in re.finditer(rf'{metric}\{{[^}}]*\b{label}(=~?)"([^"]*)"', expr):
                values = m.group(2).split("|") if m.group(1) == "=~" else [m.group(2)]
                if bad := set(values) - allowed:
                    problems.append(f"{where}: {metric}{{{label}}} is never {sorted(bad)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            "max(celery_operator_leader) < 1 or absent(celery_operator_leader)",
            {"celery_operator_leader"},
        ),
        (
            'sum by (le, task) (rate(flower_task_runtime_seconds_bucket{app=~"$app"}[$__rate_interval]))',
            {"flower_task_runtime_seconds_bucket"},
        ),
        ("sum(a) without (b) and on (c) group_left (d) e offset 1h30m > bool 1e3", {"a", "e"}),
        ("rate(x:y:z[5m:1m]) * 60 unless ignoring (q) w", {"x:y:z", "w"}),
        ('count_values("value", f{g="h(i)"}) or vector(0)', {"f"}),
    ],
)
def test_metric_names_of_promql(expr: str, names: set[str]) -> None:
    assert contract.metric_names(expr) == names


def test_selector_and_grouping_labels() -> None:
    expr = 'max by (namespace, pool) (a{app=~"$app", which="desired"}) and on (pool) b'
    assert contract.selector_labels(expr) == {"a": {"app", "which"}, "b": set()}
    assert contract.grouping_labels(expr) == {"namespace", "pool"}


# ---- rendering ---------------------------------------------------------------------------


def test_all_off_renders_none(helm: Path, tmp_path: Path) -> None:
    docs = _template(helm, tmp_path, {})
    assert not [d for d in docs if d["kind"] in MONITORING_KINDS]


def test_pod_monitor_selects_every_flower(helm: Path, tmp_path: Path) -> None:
    from celery_operator.api import labels
    from celery_operator.render import flower

    values = {"metrics": {"podMonitor": {"flower": {"enabled": True, "labels": {"r": "p"}}}}}
    docs = _template(helm, tmp_path, values)
    pms = [d for d in docs if d["kind"] == "PodMonitor"]
    assert len(pms) == 1
    pm = pms[0]
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["metadata"]["namespace"] == NAMESPACE
    assert pm["metadata"]["labels"]["r"] == "p"
    spec = pm["spec"]
    assert spec["namespaceSelector"] == {"any": True}
    # The labels every Flower pod the operator renders carries, and nothing more.
    assert spec["selector"]["matchLabels"] == {
        labels.LABEL_NAME: "celery",
        labels.LABEL_COMPONENT: flower.COMPONENT,
        labels.LABEL_MANAGED_BY: labels.MANAGED_BY,
    }
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["port"] == flower.PORT_NAME
    assert endpoint["path"] == "/metrics"
    assert endpoint["scheme"] == "http"
    targets = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    assert targets == {
        "app": ["__meta_kubernetes_pod_label_celeryproject_org_app"],
        "flower": ["__meta_kubernetes_pod_label_celeryproject_org_flower"],
    }
    assert set(targets) == contract.FLOWER_TARGET_LABELS


def test_flower_pods_carry_the_selected_labels() -> None:
    """The PodMonitor's selector and relabelings read labels the Flower pods really have."""
    from celery_operator.api import labels
    from celery_operator.api.celeryapp import CeleryApp
    from celery_operator.api.flower import Flower
    from celery_operator.render import flower

    app = CeleryApp.model_validate(
        yaml.safe_load((ROOT / "crds/celeryapp/examples/shop.yaml").read_text())
    )
    fl = Flower.model_validate(
        yaml.safe_load((ROOT / "crds/flower/examples/shop.yaml").read_text())
    )
    pod_labels = flower.flower_labels(app, fl)
    assert pod_labels[labels.LABEL_MANAGED_BY] == labels.MANAGED_BY
    assert pod_labels[labels.LABEL_COMPONENT] == "flower"
    assert pod_labels[labels.LABEL_NAME] == "celery"
    assert pod_labels[labels.LABEL_APP] == app.metadata["name"]
    assert pod_labels[labels.LABEL_FLOWER] == fl.metadata["name"]


def test_dashboard_config_map(helm: Path, tmp_path: Path) -> None:
    values = {
        "metrics": {
            "dashboard": {
                "enabled": True,
                "namespace": "grafana",
                "annotations": {"grafana_folder": "Celery"},
            }
        }
    }
    docs = _template(helm, tmp_path, values)
    cms = [d for d in docs if d["kind"] == "ConfigMap"]
    assert len(cms) == 1
    cm = cms[0]
    assert cm["metadata"]["namespace"] == "grafana"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Celery"}
    (key,) = cm["data"]
    assert key.endswith(".json")
    assert json.loads(cm["data"][key]) == _dashboard()


def test_all_on_renders_each_once(helm: Path, tmp_path: Path) -> None:
    docs = _template(helm, tmp_path, ALL_ON)
    kinds = [d["kind"] for d in docs if d["kind"] in MONITORING_KINDS]
    assert sorted(kinds) == ["ConfigMap", "PodMonitor", "PrometheusRule"]
    for d in docs:
        if d["kind"] in MONITORING_KINDS:
            assert d["metadata"]["labels"]["app.kubernetes.io/component"] == "monitoring"


def test_service_monitor_keeps_the_operators_namespace_label(helm: Path, tmp_path: Path) -> None:
    """The operator's samples name their object's namespace in `namespace`, which the alerts
    and the dashboard query: the ServiceMonitor must not rename it exported_namespace."""
    docs = _template(helm, tmp_path, {"metrics": {"serviceMonitor": {"enabled": True}}})
    sms = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceMonitor"}
    operator = sms[f"{RELEASE}"]
    assert operator["spec"]["endpoints"][0]["honorLabels"] is True
