"""The metrics the chart's alerts and Grafana dashboard query: one list, kept here.

`CONTRACT` names every series those use, with its type and labels, as a scrape shows it
(a histogram as its `_bucket`, `_sum` and `_count` series). The monitoring tests check that
every expression of the PrometheusRule and of dashboards/celery.json names only these
metrics, and only their labels; an e2e test against a real scrape can check the other side
(that the operator, the webhook and Flower export them).

`metric_names` and `selector_labels` read PromQL with a small tokenizer, no parser: metric
names are the identifiers not followed by `(` that are not keywords, nor label names inside
`{...}` or in the lists of `by`, `without`, `on`, `ignoring`, `group_left` and `group_right`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    type: str  # gauge | counter | histogram
    labels: frozenset[str]
    source: str  # operator | webhook | flower


def _m(name: str, type_: str, labels: str, source: str) -> Metric:
    return Metric(name, type_, frozenset(labels.split()), source)


POOL = "namespace app_namespace app pool"
_METRICS = [
    # The operator (its /metrics, Service <release>-metrics).
    _m("celery_operator_pool_waiting_tasks", "gauge", f"{POOL} queue", "operator"),
    _m("celery_operator_pool_workers", "gauge", f"{POOL} state", "operator"),
    _m("celery_operator_pool_active_tasks", "gauge", POOL, "operator"),
    _m("celery_operator_pool_replicas", "gauge", f"{POOL} which", "operator"),
    _m("celery_operator_pool_broker_up", "gauge", POOL, "operator"),
    _m("celery_operator_scaler_scale_events_total", "counter", f"{POOL} direction", "operator"),
    _m(
        "celery_operator_ready", "gauge", "kind namespace name app_namespace app reason", "operator"
    ),
    _m("celery_operator_leader", "gauge", "identity", "operator"),
    _m("celery_operator_reconciles_total", "counter", "kind result", "operator"),
    _m("celery_operator_events_total", "counter", "type reason", "operator"),
    # The webhook (its own Service <release>-webhook-metrics).
    _m(
        "celery_operator_webhook_reviews_total",
        "counter",
        "webhook kind operation allowed",
        "webhook",
    ),
    _m("celery_operator_webhook_denials_total", "counter", "kind field", "webhook"),
    # Flower 2.x on its HTTP port, /metrics (flower/events.py, PrometheusMetrics).
    _m("flower_events_total", "counter", "worker type task", "flower"),
    _m("flower_task_runtime_seconds_bucket", "histogram", "worker task le", "flower"),
    _m("flower_task_runtime_seconds_sum", "histogram", "worker task", "flower"),
    _m("flower_task_runtime_seconds_count", "histogram", "worker task", "flower"),
    _m("flower_worker_online", "gauge", "worker", "flower"),
    _m("flower_worker_number_of_currently_executing_tasks", "gauge", "worker", "flower"),
]
CONTRACT: dict[str, Metric] = {m.name: m for m in _METRICS}

# Values of the labels whose values the rules and the dashboard compare with.
LABEL_VALUES: dict[tuple[str, str], frozenset[str]] = {
    ("celery_operator_pool_workers", "state"): frozenset({"online", "busy", "unknown", "draining"}),
    ("celery_operator_pool_replicas", "which"): frozenset({"desired", "ready", "min", "max"}),
    ("celery_operator_scaler_scale_events_total", "direction"): frozenset({"up", "down"}),
    ("celery_operator_ready", "kind"): frozenset({"CeleryApp", "CeleryWorkerPool", "Flower"}),
}

# Labels a scrape adds to every sample: Prometheus' own, and the Prometheus Operator's
# target labels. The operator's ServiceMonitor keeps the samples' own `namespace`
# (honorLabels); the chart's Flower PodMonitor adds `app` and `flower` from the pod's labels.
TARGET_LABELS = frozenset(
    {"job", "instance", "namespace", "pod", "container", "service", "endpoint"}
)
FLOWER_TARGET_LABELS = frozenset({"app", "flower"})


def labels_of(name: str) -> frozenset[str]:
    """Every label a series of `name` can carry once scraped."""
    m = CONTRACT[name]
    extra = FLOWER_TARGET_LABELS if m.source == "flower" else frozenset()
    return m.labels | TARGET_LABELS | extra


def operator_metric_names() -> set[str]:
    """What the operator's own /metrics must show (the e2e side of the contract)."""
    return {n for n, m in CONTRACT.items() if m.source == "operator"}


# ---- a PromQL tokenizer ----------------------------------------------------------------------

KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "inf",
        "nan",
        "atan2",
    }
)
_TOKEN = re.compile(
    r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<variable>\$\{[^}]*\}|\$\w+)
  | (?P<number>0x[0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?:[a-zA-Z]+(?:\d+[a-zA-Z]+)*)?)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=(){}\[\],@:])
  | (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
    """,
    re.VERBOSE,
)
_LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})


@dataclass(frozen=True)
class Token:
    kind: str
    text: str


def tokenize(expr: str) -> list[Token]:
    out: list[Token] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot read {expr[pos : pos + 20]!r} in {expr!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind not in ("space", "comment"):
            out.append(Token(kind, m.group()))
    return out


def _walk(expr: str) -> list[tuple[str, set[str]]]:
    """Every vector selector: (metric name or "", label names in its braces)."""
    toks = tokenize(expr)
    found: list[tuple[str, set[str]]] = []
    i = 0
    while i < len(toks):
        t = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if t.kind == "ident" and t.text in _LABEL_LISTS:
            i += 1
            if i < len(toks) and toks[i].text == "(":  # skip the label list
                while i < len(toks) and toks[i].text != ")":
                    i += 1
            i += 1
            continue
        if t.text == "[":  # a range or subquery: durations, steps and Grafana variables
            while i < len(toks) and toks[i].text != "]":
                i += 1
            i += 1
            continue
        # An aggregation names its labels first: `sum by (x) (...)`.
        follows = nxt.text if nxt is not None else ""
        if t.kind == "ident" and follows not in ("(", "by", "without") and t.text not in KEYWORDS:
            labels, i = _braces(toks, i + 1)
            found.append((t.text, labels))
            continue
        if t.text == "{":  # a selector without a name: {__name__="x"}
            labels, i = _braces(toks, i)
            found.append(("", labels))
            continue
        i += 1
    return found


def _braces(toks: list[Token], i: int) -> tuple[set[str], int]:
    """The label names of a `{...}` at toks[i], if there is one; the index after it."""
    labels: set[str] = set()
    if i >= len(toks) or toks[i].text != "{":
        return labels, i
    i += 1
    while i < len(toks) and toks[i].text != "}":
        matcher = i + 1 < len(toks) and toks[i + 1].text in ("=", "!=", "=~", "!~")
        if toks[i].kind in ("ident", "string") and matcher:
            labels.add(toks[i].text.strip("\"'`"))
        i += 1
    return labels, i + 1


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    return {name for name, _ in _walk(expr) if name}


def selector_labels(expr: str) -> dict[str, set[str]]:
    """Metric name -> the label names its selectors match on."""
    out: dict[str, set[str]] = {}
    for name, labels in _walk(expr):
        out.setdefault(name, set()).update(labels)
    return out


def grouping_labels(expr: str) -> set[str]:
    """The label names of every `by (...)`, `without (...)`, `on (...)` ... list."""
    toks = tokenize(expr)
    out: set[str] = set()
    for i, t in enumerate(toks):
        if t.kind == "ident" and t.text in _LABEL_LISTS and i + 1 < len(toks):
            j = i + 1
            if toks[j].text != "(":
                continue
            j += 1
            while j < len(toks) and toks[j].text != ")":
                if toks[j].kind == "ident":
                    out.add(toks[j].text)
                j += 1
    return out
