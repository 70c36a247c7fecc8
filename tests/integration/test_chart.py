"""The Helm chart (charts/celery-operator) and deploy/install.yaml, against the real apiserver.

- `helm lint --strict` passes for every value combination below;
- each rendering is accepted by the apiserver (server-side dry run, strict field validation,
  CRDs included), and every pod it describes is admitted under Pod Security "restricted";
  the cert-manager and ServiceMonitor documents are checked by minimal CRDs installed here
  (the upstream fields the chart uses, typed and with their enums and patterns): unknown or
  mistyped fields fail exactly like on a cluster with the real CRDs;
- the webhook configurations equal what celery_operator.manifests.webhooks renders, the RBAC
  rules equal celery_operator.manifests.rbac, and the names that must agree (webhook
  Service, CA Secret, configurations, cert-manager Secret) agree;
- every argument the chart passes is accepted by the `celery-operator` CLI;
- values.schema.json refuses typos, bad enums and a second operator replica;
- `helm template` renders the default values without a cluster, and the release notes warn
  on a cluster older than the minimum Kubernetes version of Chart.yaml;
- install, upgrade and uninstall on the local control plane (kwok runs the pods);
- deploy/install.yaml equals a fresh render of the chart.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from testenv.controlplane import versions
from testenv.paths import cache_dir

from celery_operator.certs.manager import DEFAULT_SECRET_NAME
from celery_operator.cli import build_parser
from celery_operator.manifests import install_yaml
from celery_operator.manifests.rbac import (
    operator_rules,
    webhook_cluster_rules,
    webhook_namespace_rules,
)
from celery_operator.manifests.webhooks import (
    SERVICE,
    build_webhook_configurations,
    webhook_dns_names,
)
from tests.support.cluster import Cluster, Result, run_cli, wait_for

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "celery-operator"
RELEASE = "celery-operator"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    # Warnings for Deployments too (enforce applies to pods only): the dry runs assert none.
    "pod-security.kubernetes.io/warn": "restricted",
    "pod-security.kubernetes.io/warn-version": "latest",
}

# The value combinations every rendering test runs over.
CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "cert-manager": {"certificates": {"mode": "cert-manager"}},
    "cert-manager-issuer": {
        "certificates": {
            "mode": "cert-manager",
            "certManager": {
                "issuerRef": {"group": "cert-manager.io", "kind": "ClusterIssuer", "name": "corp"},
                "duration": "2160h",
                "renewBefore": "360h",
            },
        }
    },
    "webhook-disabled": {"webhook": {"enabled": False}},
    "monitoring-networkpolicy": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
        "networkPolicy": {
            "enabled": True,
            "metricsNamespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
            },
            "egress": {
                "allowAll": False,
                "apiServer": {"cidrs": ["10.96.0.1/32", "192.168.0.10/32"]},
                "brokers": [
                    {"cidr": "10.20.0.0/16", "ports": [6379, 5672]},
                    {"ports": [6380]},
                ],
            },
        },
    },
    "networkpolicy-allow-all": {"networkPolicy": {"enabled": True}},
    "watch-namespaces": {
        "commonLabels": {"team": "platform"},
        "image": {"tag": "0.1.0-rc1", "pullPolicy": "Always", "pullSecrets": [{"name": "reg"}]},
        "operator": {
            "watchNamespaces": ["shop", "team-a"],
            "workers": 4,
            "resyncSeconds": 120,
            "secretPollSeconds": 5,
            "logLevel": "DEBUG",
            "extraArgs": ["--bind-address=0.0.0.0"],
            "podAnnotations": {"example.com/a": "b"},
            "serviceAccount": {"annotations": {"example.com/role": "r"}},
        },
        "webhook": {
            "replicas": 3,
            "antiAffinity": "hard",
            "failurePolicy": "Ignore",
            "timeoutSeconds": 10,
            "port": 8443,
            "affinity": {
                "nodeAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 1,
                            "preference": {
                                "matchExpressions": [
                                    {
                                        "key": "kubernetes.io/os",
                                        "operator": "In",
                                        "values": ["linux"],
                                    }
                                ]
                            },
                        }
                    ]
                }
            },
        },
    },
    "single-webhook-no-antiaffinity": {
        "webhook": {"replicas": 1, "antiAffinity": "none", "pdb": {"enabled": True}}
    },
}


@dataclass
class Helm:
    bin: Path
    kubeconfig: Path
    kube_version: str

    def run(self, *args: str, input: str | None = None, timeout: float = 240) -> Result:
        return run_cli(self.bin, self.kubeconfig, *args, input=input, timeout=timeout)

    def template_text(
        self, values: dict[str, Any], namespace: str, *extra: str, release: str = RELEASE
    ) -> str:
        r = self.run(
            "template",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--kube-version",
            self.kube_version,
            "-f",
            "-",
            *extra,
            input=yaml.safe_dump(values),
        )
        assert r.code == 0, f"helm template failed: {r.stderr}"
        return r.stdout

    def template(
        self, values: dict[str, Any], namespace: str, *extra: str, release: str = RELEASE
    ) -> list[dict[str, Any]]:
        text = self.template_text(values, namespace, *extra, release=release)
        return [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture(scope="module")
def helm(cluster: Cluster) -> Helm:
    if cluster.helm_bin is None or not cluster.helm_bin.exists():
        pytest.fail("helm not found: run `make testenv`", pytrace=False)
    version = json.loads(cluster.kubectl("version", "-o", "json"))["serverVersion"]["gitVersion"]
    return Helm(cluster.helm_bin, cluster.kubeconfig, version)


def _find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def _arg(container: dict[str, Any], flag: str) -> str | None:
    for a in container["args"]:
        if a.startswith(f"{flag}="):
            return str(a.split("=", 1)[1])
    return None


# ---- minimal third-party CRDs ----------------------------------------------------------

S: dict[str, Any] = {"type": "string"}
STRINGS: dict[str, Any] = {"type": "array", "items": S}
STRING_MAP: dict[str, Any] = {"type": "object", "additionalProperties": S}
ANY_OBJECT: dict[str, Any] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
PROM_DURATION = {
    "type": "string",
    "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
KEY_USAGES = [
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
]
SECRET_KEY_REF = {
    "type": "object",
    "properties": {"name": S, "key": S, "optional": {"type": "boolean"}},
    "required": ["key"],
}


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    o: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        o["required"] = required
    return o


# The upstream fields of cert-manager.io/v1 (Issuer, Certificate) and monitoring.coreos.com/v1
# (ServiceMonitor) that matter for the chart, with their upstream types, enums and required
# fields; a field the chart misspells is unknown here as it would be upstream.
THIRD_PARTY: dict[tuple[str, str, str], dict[str, Any]] = {
    ("cert-manager.io", "Certificate", "certificates"): _obj(
        {
            "secretName": S,
            "commonName": S,
            "dnsNames": STRINGS,
            "ipAddresses": STRINGS,
            "uris": STRINGS,
            "emailAddresses": STRINGS,
            "duration": S,
            "renewBefore": S,
            "isCA": {"type": "boolean"},
            "usages": {"type": "array", "items": {"type": "string", "enum": KEY_USAGES}},
            "privateKey": _obj(
                {
                    "algorithm": {"type": "string", "enum": ["RSA", "ECDSA", "Ed25519"]},
                    "encoding": {"type": "string", "enum": ["PKCS1", "PKCS8"]},
                    "rotationPolicy": {"type": "string", "enum": ["Never", "Always"]},
                    "size": {"type": "integer"},
                }
            ),
            "issuerRef": _obj({"name": S, "kind": S, "group": S}, ["name"]),
            "secretTemplate": _obj({"annotations": STRING_MAP, "labels": STRING_MAP}),
            "subject": ANY_OBJECT,
        },
        ["issuerRef", "secretName"],
    ),
    ("cert-manager.io", "Issuer", "issuers"): _obj(
        {
            "selfSigned": _obj({"crlDistributionPoints": STRINGS}),
            "ca": _obj(
                {
                    "secretName": S,
                    "crlDistributionPoints": STRINGS,
                    "ocspServers": STRINGS,
                    "issuingCertificateURLs": STRINGS,
                },
                ["secretName"],
            ),
            "acme": ANY_OBJECT,
            "vault": ANY_OBJECT,
            "venafi": ANY_OBJECT,
        }
    ),
    ("monitoring.coreos.com", "ServiceMonitor", "servicemonitors"): _obj(
        {
            "jobLabel": S,
            "targetLabels": STRINGS,
            "podTargetLabels": STRINGS,
            "sampleLimit": {"type": "integer"},
            "selector": _obj(
                {
                    "matchLabels": STRING_MAP,
                    "matchExpressions": {
                        "type": "array",
                        "items": _obj(
                            {"key": S, "operator": S, "values": STRINGS}, ["key", "operator"]
                        ),
                    },
                }
            ),
            "namespaceSelector": _obj({"any": {"type": "boolean"}, "matchNames": STRINGS}),
            "endpoints": {
                "type": "array",
                "items": _obj(
                    {
                        "port": S,
                        "targetPort": {"x-kubernetes-int-or-string": True},
                        "path": S,
                        "scheme": {"type": "string", "enum": ["http", "https"]},
                        "interval": PROM_DURATION,
                        "scrapeTimeout": PROM_DURATION,
                        "honorLabels": {"type": "boolean"},
                        "bearerTokenFile": S,
                        "params": ANY_OBJECT,
                        "relabelings": {"type": "array", "items": ANY_OBJECT},
                        "metricRelabelings": {"type": "array", "items": ANY_OBJECT},
                        "tlsConfig": _obj(
                            {
                                "insecureSkipVerify": {"type": "boolean"},
                                "serverName": S,
                                "caFile": S,
                                "certFile": S,
                                "keyFile": S,
                                "ca": _obj({"secret": SECRET_KEY_REF, "configMap": SECRET_KEY_REF}),
                                "cert": _obj(
                                    {"secret": SECRET_KEY_REF, "configMap": SECRET_KEY_REF}
                                ),
                                "keySecret": SECRET_KEY_REF,
                            }
                        ),
                    }
                ),
            },
        },
        ["endpoints", "selector"],
    ),
}
TEST_CRD_LABEL = "celery-operator.test/minimal-crd"


def _minimal_crd(group: str, kind: str, plural: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}", "labels": {TEST_CRD_LABEL: "true"}},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": spec},
                            "required": ["spec"],
                        }
                    },
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def third_party_crds(cluster: Cluster) -> Iterator[None]:
    """cert-manager's and the Prometheus Operator's kinds, as minimal CRDs: installed unless
    the cluster already has the real ones (then those check the documents), removed after."""
    installed = []
    for (group, kind, plural), spec in THIRD_PARTY.items():
        name = f"{plural}.{group}"
        if cluster.exists("crd", name):
            labels = cluster.get("crd", name)["metadata"].get("labels") or {}
            if TEST_CRD_LABEL not in labels:
                continue  # the real CRD
        cluster.apply(_minimal_crd(group, kind, plural, spec))
        installed.append(name)
    cluster.wait_established(*installed)
    yield
    if installed:
        cluster.run("delete", "crd", *installed, "--wait=false")


@pytest.fixture(scope="module")
def restricted_ns(cluster: Cluster) -> Iterator[str]:
    ns = cluster.create_namespace("chart", labels=RESTRICTED)
    # Pods name their ServiceAccount, which must exist for a dry-run create.
    for sa in ("celery-operator", "celery-operator-webhook"):
        cluster.kubectl("create", "serviceaccount", sa, "-n", ns)
    yield ns
    cluster.run("delete", "namespace", ns, "--wait=false")


# ---- lint and schema ---------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_lint_strict(helm: Helm, case: str) -> None:
    r = helm.run(
        "lint",
        "--strict",
        str(CHART),
        "--kube-version",
        helm.kube_version,
        "-f",
        "-",
        input=yaml.safe_dump(CASES[case]),
    )
    assert r.code == 0, r.stdout + r.stderr
    assert "[WARNING]" not in r.stdout, r.stdout
    assert "[ERROR]" not in r.stdout, r.stdout


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"operatr": {"logLevel": "INFO"}}, "additional properties 'operatr' not allowed"),
        ({"webhook": {"replica": 3}}, "additional properties 'replica' not allowed"),
        ({"certificates": {"mode": "certmanager"}}, "value must be one of"),
        ({"webhook": {"antiAffinity": "Soft"}}, "value must be one of 'soft', 'hard', 'none'"),
        ({"webhook": {"failurePolicy": "fail"}}, "value must be one of 'Fail', 'Ignore'"),
        # Two operators without a Lease would fight over the same objects.
        (
            {"operator": {"replicas": 2, "leaderElection": {"enabled": False}}},
            "/operator/replicas",
        ),
        ({"operator": {"leaderElection": {"leaseDuration": 15}}}, "'leaseDuration' not allowed"),
        ({"operator": {"antiAffinity": "Soft"}}, "value must be one of 'soft', 'hard', 'none'"),
        ({"operator": {"logLevel": "TRACE"}}, "value must be one of"),
        ({"webhook": {"timeoutSeconds": 31}}, "maximum"),
        ({"metrics": {"serviceMonitor": {"interval": "1.5m"}}}, "/metrics/serviceMonitor/interval"),
        ({"networkPolicy": {"egress": {"brokers": [{}]}}}, "/networkPolicy/egress/brokers/0"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else "",
)
def test_schema_rejects_bad_values(helm: Helm, values: dict[str, Any], message: str) -> None:
    r = helm.run(
        "template",
        RELEASE,
        str(CHART),
        "--kube-version",
        helm.kube_version,
        "-f",
        "-",
        input=yaml.safe_dump(values),
    )
    assert r.code != 0, f"accepted {values}"
    assert "values don't meet the specifications of the schema" in r.stderr, r.stderr
    assert message in r.stderr, r.stderr


def test_every_value_is_documented() -> None:
    """Every value of values.yaml has a comment above it or above a block it belongs to."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented) of enclosing keys
    undocumented = []
    for i, line in enumerate(lines):
        text = line.strip()
        if not text or text.startswith(("#", "- ")):
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key, _, rest = text.partition(":")
        documented = lines[i - 1].strip().startswith("#") or any(d for *_, d in stack)
        path = ".".join([*(k for _, k, _ in stack), key])
        if rest.strip() and not documented:  # a leaf (sections hold documented leaves)
            undocumented.append(path)
        stack.append((indent, key, documented))
    assert not undocumented, f"values without a comment: {undocumented}"


def test_schema_covers_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(v: Any, s: dict[str, Any], path: str) -> list[str]:
        if "$ref" in s:
            s = schema["definitions"][s["$ref"].rsplit("/", 1)[1]]
        if not isinstance(v, dict) or s.get("additionalProperties") is not False:
            return []
        missing = [f"{path}.{k}" for k in v if k not in s.get("properties", {})]
        for k, sub in v.items():
            if k in s.get("properties", {}):
                missing += walk(sub, s["properties"][k], f"{path}.{k}")
        return missing

    assert schema["additionalProperties"] is False
    assert walk(values, schema, "") == []


# ---- without a cluster ---------------------------------------------------------------------


def _offline_helm(home: Path, *args: str, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    """testenv's pinned helm with no cluster to ask: KUBECONFIG names no file, HOME is empty."""
    helm = cache_dir() / f"helm-{versions()['HELM_VERSION']}" / "bin" / "helm"
    if not helm.exists():
        pytest.fail(f"helm not found at {helm}: run `make testenv`", pytrace=False)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "KUBECONFIG": str(home / "no-such-kubeconfig"),
    }
    return subprocess.run(
        [str(helm), *args, str(chart)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _minimum_kubernetes() -> str:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return str(chart["annotations"]["celeryproject.org/minimum-kubernetes-version"])


def test_renders_offline_with_default_values(tmp_path: Path) -> None:
    """`helm template charts/celery-operator` as typed, with no cluster (GitOps, review).
    Helm then assumes its built-in Kubernetes version (v1.20.0 in testenv's helm, built from
    source), so a `kubeVersion:` constraint in Chart.yaml refused to render anything. The
    offline rendering is the one a supported cluster gets."""
    r = _offline_helm(tmp_path, "template")
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    assert deployments == {"release-name-celery-operator", "release-name-celery-operator-webhook"}
    assert {d["kind"] for d in docs} >= {
        "ClusterRole",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    }
    supported = _offline_helm(tmp_path, "template", f"--kube-version=v{_minimum_kubernetes()}.0")
    assert supported.returncode == 0, supported.stderr
    assert r.stdout == supported.stdout


@pytest.mark.parametrize(
    ("server", "warned"),
    [("v1.29.9", True), ("v1.30.0", False), ("v1.30.0-gke.1", False), ("v1.34.4", False)],
)
def test_notes_warn_below_the_minimum_kubernetes_version(
    tmp_path: Path, server: str, warned: bool
) -> None:
    """NOTES.txt as `helm install` shows it (Helm renders it with the server's version;
    `helm template` prints no notes, so a copy of the chart renders it as a manifest)."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    (chart / "files" / "NOTES.txt").write_text((chart / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "notes-as-configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data: {notes: {{ tpl (.Files.Get "files/NOTES.txt") . | toJson }}}\n'
    )
    r = _offline_helm(
        tmp_path,
        "template",
        f"--kube-version={server}",
        "--show-only=templates/notes-as-configmap.yaml",
        chart=chart,
    )
    assert r.returncode == 0, r.stderr
    notes = yaml.safe_load(r.stdout)["data"]["notes"]
    minimum = _minimum_kubernetes()
    warning = f"WARNING: celery-operator needs Kubernetes >= {minimum}; this cluster runs {server}."
    assert (warning in notes) is warned, notes
    assert "is installed in namespace" in notes


# ---- renderings against the apiserver ------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendering_is_accepted_by_the_apiserver(
    cluster: Cluster, helm: Helm, third_party_crds: None, restricted_ns: str, case: str
) -> None:
    text = helm.template_text(CASES[case], restricted_ns, "--include-crds")
    r = cluster.run(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=chart-test",
        "--dry-run=server",
        "-f",
        "-",
        input=text,
    )
    assert r.code == 0, f"{case}: {r.stderr}"
    assert "Warning" not in r.stderr, f"{case} draws warnings: {r.stderr}"
    kinds = {d["kind"] for d in yaml.safe_load_all(text) if d}
    if case.startswith("cert-manager"):
        assert "Certificate" in kinds
    if case == "monitoring-networkpolicy":
        assert {"ServiceMonitor", "NetworkPolicy"} <= kinds


@pytest.mark.parametrize("case", sorted(CASES))
def test_pods_are_admitted_under_restricted(
    cluster: Cluster, helm: Helm, restricted_ns: str, case: str
) -> None:
    deployments = [
        d for d in helm.template(CASES[case], restricted_ns) if d["kind"] == "Deployment"
    ]
    assert deployments
    for d in deployments:
        template = d["spec"]["template"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {**template["metadata"], "name": f"{d['metadata']['name']}-x"},
            "spec": template["spec"],
        }
        r = cluster.run(
            "create", "-n", restricted_ns, "--dry-run=server", "-f", "-", input=json.dumps(pod)
        )
        assert r.code == 0, f"{case} {d['metadata']['name']}: {r.stderr}"
        assert "Warning" not in r.stderr, f"{case} {d['metadata']['name']}: {r.stderr}"


# ---- agreement with the code ----------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_container_args_are_accepted_by_the_cli(helm: Helm, case: str) -> None:
    docs = helm.template(CASES[case], "co-system")
    parser = build_parser()
    for d in (d for d in docs if d["kind"] == "Deployment"):
        c = _container(d)
        assert c["command"] == ["celery-operator"]
        args = parser.parse_args(c["args"])  # SystemExit on an unknown flag or bad value
        if args.command == "run":
            assert args.namespace == (
                CASES[case].get("operator", {}).get("watchNamespaces") or None
            )
            assert args.secret_poll_seconds == (
                CASES[case].get("operator", {}).get("secretPollSeconds", 30)
            )
            port = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert (args.liveness_port, args.metrics_port) == (port["healthz"], port["metrics"])
            assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
        else:
            assert args.command == "webhook"
            assert args.namespace == "co-system"
            assert args.port == c["ports"][0]["containerPort"]
            assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"


@pytest.mark.parametrize(
    ("case", "values"),
    [
        ("defaults", {}),
        ("cert-manager", {"certificates": {"mode": "cert-manager"}}),
        ("ignore-and-timeout", {"webhook": {"failurePolicy": "Ignore", "timeoutSeconds": 12}}),
    ],
)
def test_webhook_configurations_match_the_generated_ones(
    helm: Helm, case: str, values: dict[str, Any]
) -> None:
    ns = "co-system"
    docs = helm.template(values, ns)
    webhook = values.get("webhook", {})
    for generated in build_webhook_configurations(namespace=ns):
        chart = _find(docs, generated["kind"])
        assert chart["apiVersion"] == generated["apiVersion"]
        assert chart["metadata"]["name"] == generated["metadata"]["name"]
        assert generated["metadata"]["labels"].items() <= chart["metadata"]["labels"].items()
        expected = json.loads(json.dumps(generated["webhooks"]))
        for w in expected:
            if "timeoutSeconds" in webhook:
                w["timeoutSeconds"] = webhook["timeoutSeconds"]
            if "failurePolicy" in webhook and generated["kind"].startswith("Validating"):
                w["failurePolicy"] = webhook["failurePolicy"]
        assert chart["webhooks"] == expected
        annotations = chart["metadata"].get("annotations") or {}
        if case == "cert-manager":
            assert annotations == {
                "cert-manager.io/inject-ca-from": f"{ns}/celery-operator-webhook"
            }
        else:
            assert annotations == {}


@pytest.mark.parametrize("release", [RELEASE, "shop-ops"])
def test_rbac_and_names_agree_with_the_code(helm: Helm, release: str) -> None:
    ns = "co-system"
    docs = helm.template({}, ns, release=release)
    full = release if "celery-operator" in release else f"{release}-celery-operator"
    configuration = _find(docs, "ValidatingWebhookConfiguration")["metadata"]["name"]
    assert configuration == _find(docs, "MutatingWebhookConfiguration")["metadata"]["name"] == full

    assert _find(docs, "ClusterRole", full)["rules"] == operator_rules()
    assert _find(docs, "ClusterRole", f"{full}-webhook")["rules"] == webhook_cluster_rules(
        configuration
    )
    role = _find(docs, "Role", f"{full}-webhook")
    assert role["rules"] == webhook_namespace_rules()
    for kind, name, sa in (
        ("ClusterRoleBinding", full, full),
        ("ClusterRoleBinding", f"{full}-webhook", f"{full}-webhook"),
        ("RoleBinding", f"{full}-webhook", f"{full}-webhook"),
    ):
        binding = _find(docs, kind, name)
        assert binding["roleRef"]["name"] == name
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]
        assert _find(docs, "ServiceAccount", sa)

    webhook = _container(_find(docs, "Deployment", f"{full}-webhook"))
    assert _arg(webhook, "--webhook-configuration") == configuration
    ca_secret = _arg(webhook, "--ca-secret")
    assert ca_secret == DEFAULT_SECRET_NAME
    for rule in role["rules"]:  # a rule limited by name must name the CA Secret
        if "secrets" in rule["resources"] and rule.get("resourceNames"):
            assert ca_secret in rule["resourceNames"]
    # The serving certificate is issued for this Service; the configurations call it.
    service = _find(docs, "Service", SERVICE)
    assert service["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}
    ]
    for w in _find(docs, "ValidatingWebhookConfiguration")["webhooks"]:
        assert w["clientConfig"]["service"]["name"] == SERVICE


def test_cert_manager_objects_agree_with_the_webhook(helm: Helm) -> None:
    ns = "co-system"
    docs = helm.template({"certificates": {"mode": "cert-manager"}}, ns)
    cert = _find(docs, "Certificate", "celery-operator-webhook")
    assert cert["spec"]["dnsNames"] == webhook_dns_names(ns)
    assert cert["spec"]["issuerRef"] == {
        "group": "cert-manager.io",
        "kind": "Issuer",
        "name": "celery-operator-ca",
    }
    assert (
        _find(docs, "Issuer", "celery-operator-ca")["spec"]["ca"]["secretName"]
        == (_find(docs, "Certificate", "celery-operator-ca")["spec"]["secretName"])
    )
    # The configurations name this Certificate; the webhook serves its Secret's files.
    annotation = _find(docs, "MutatingWebhookConfiguration")["metadata"]["annotations"]
    assert annotation["cert-manager.io/inject-ca-from"] == f"{ns}/{cert['metadata']['name']}"
    deployment = _find(docs, "Deployment", "celery-operator-webhook")
    c = _container(deployment)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert volumes["certs"]["secret"]["secretName"] == cert["spec"]["secretName"]
    assert _arg(c, "--tls-cert-file") == f"{mounts['certs']}/tls.crt"
    assert _arg(c, "--tls-key-file") == f"{mounts['certs']}/tls.key"
    assert _arg(c, "--ca-secret") is None
    # No CA Secret to manage: no Role for it (the operator's, for its Lease, stays).
    roles = [d for d in docs if d["kind"] in ("Role", "RoleBinding")]
    assert {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in roles} == {"operator"}

    external = helm.template(CASES["cert-manager-issuer"], ns)
    assert not [d for d in external if d["kind"] == "Issuer"]
    cert = _find(external, "Certificate")
    assert cert["spec"]["issuerRef"]["kind"] == "ClusterIssuer"
    assert (cert["spec"]["duration"], cert["spec"]["renewBefore"]) == ("2160h", "360h")


def test_disabled_webhook_renders_no_webhook_object(helm: Helm) -> None:
    docs = helm.template({"webhook": {"enabled": False}}, "co-system")
    components = {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in docs}
    assert components == {"operator"}


@pytest.mark.parametrize(
    ("component", "name"),
    [("webhook", "celery-operator-webhook"), ("operator", "celery-operator")],
)
def test_spread_and_budget(helm: Helm, component: str, name: str) -> None:
    """Both run 2 replicas by default (the operator's: a leader and a standby), spread over
    nodes, with a budget that a drain must respect; none for a single replica."""

    def spec(values: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        docs = helm.template(values, "co-system")
        d = _find(docs, "Deployment", name)
        has_pdb = any(
            x["kind"] == "PodDisruptionBudget" and x["metadata"]["name"] == name for x in docs
        )
        return d["spec"]["template"]["spec"].get("affinity", {}), has_pdb

    soft, pdb = spec({})
    assert "preferredDuringSchedulingIgnoredDuringExecution" in soft["podAntiAffinity"]
    assert pdb
    hard, _ = spec({component: {"antiAffinity": "hard"}})
    term = hard["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == component
    none, _ = spec({component: {"antiAffinity": "none"}})
    assert none == {}
    _, pdb = spec({component: {"replicas": 1}})
    assert not pdb  # a budget of minAvailable 1 over one replica would block every drain


# ---- install, upgrade, uninstall -------------------------------------------------------------


def _ready(cluster: Cluster, ns: str, name: str, replicas: int) -> bool:
    status = cluster.get("deployment", name, ns).get("status", {})
    return bool(
        status.get("readyReplicas") == replicas
        and status.get("updatedReplicas") == replicas
        and status.get("replicas") == replicas
    )


def test_install_upgrade_uninstall(cluster: Cluster, helm: Helm, crds: list[str]) -> None:
    ns = cluster.create_namespace("chart-install", labels=RESTRICTED)
    release = f"co-{uuid.uuid4().hex[:6]}"
    full = f"{release}-celery-operator"
    # The webhook configurations intercept writes of the three kinds cluster-wide while the
    # release is installed, and nothing really serves on kwok's pods: fail open, quickly.
    values = ["--set", "webhook.failurePolicy=Ignore", "--set", "webhook.timeoutSeconds=1"]
    manifest: list[dict[str, Any]] = []
    try:
        r = helm.run(
            "install", release, str(CHART), "-n", ns, *values, "--wait", "--timeout", "120s"
        )
        assert r.code == 0, r.stderr
        wait_for("2 operator replicas ready", lambda: _ready(cluster, ns, full, 2))
        wait_for("2 webhook replicas ready", lambda: _ready(cluster, ns, f"{full}-webhook", 2))
        manifest = [
            d
            for d in yaml.safe_load_all(helm.run("get", "manifest", release, "-n", ns).stdout)
            if d
        ]
        assert {d["kind"] for d in manifest} >= {
            "Deployment",
            "Service",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "PodDisruptionBudget",
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        }
        operator_before = cluster.get("deployment", full, ns)

        # Upgrade: more webhook replicas (scales), a new operator log level (a new pod
        # template: the operators roll, a standby at a time, never two leaders).
        r = helm.run(
            "upgrade",
            release,
            str(CHART),
            "-n",
            ns,
            *values,
            "--set",
            "webhook.replicas=3",
            "--set",
            "operator.logLevel=DEBUG",
            "--wait",
            "--timeout",
            "120s",
        )
        assert r.code == 0, r.stderr
        wait_for("3 webhook replicas ready", lambda: _ready(cluster, ns, f"{full}-webhook", 3))
        operator = cluster.get("deployment", full, ns)
        assert operator["metadata"]["generation"] > operator_before["metadata"]["generation"]
        assert operator["spec"]["strategy"]["type"] == "RollingUpdate"
        assert "--log-level=DEBUG" in _container(operator)["args"]
        wait_for("the new operator pods ready", lambda: _ready(cluster, ns, full, 2))
        pods = json.loads(
            cluster.kubectl(
                "get", "pods", "-n", ns, "-l", "app.kubernetes.io/component=operator", "-o", "json"
            )
        )["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        assert len(live) == 2
        assert all("--log-level=DEBUG" in p["spec"]["containers"][0]["args"] for p in live)
        history = json.loads(helm.run("history", release, "-n", ns, "-o", "json").stdout)
        assert [h["status"] for h in history] == ["superseded", "deployed"]
    finally:
        r = helm.run("uninstall", release, "-n", ns, "--wait", "--timeout", "120s")
    assert r.code == 0, r.stderr
    # Everything the release created is gone (cluster-scoped objects too) ...
    for d in manifest:
        kind, name = d["kind"], d["metadata"]["name"]
        namespace = d["metadata"].get("namespace")
        assert not cluster.exists(kind, name, namespace), f"{kind} {name} left behind"
    wait_for(
        "the release's pods gone",
        lambda: (
            cluster.kubectl(
                "get", "pods", "-n", ns, "-l", f"app.kubernetes.io/instance={release}", "-o", "name"
            ).strip()
            == ""
        ),
    )
    # ... except the CRDs, which Helm never deletes.
    for crd in crds:
        assert cluster.exists("crd", crd.removeprefix("crd/"))
    cluster.run("delete", "namespace", ns, "--wait=false")


# ---- deploy/install.yaml ----------------------------------------------------------------------


def test_install_yaml_is_fresh(helm: Helm) -> None:
    committed = ROOT / install_yaml.OUTPUT
    assert committed.exists(), "deploy/install.yaml is missing: run `make install-yaml`"
    fresh = install_yaml.render_install_yaml(helm.bin, ROOT)
    assert committed.read_text() == fresh, "deploy/install.yaml is stale: run `make install-yaml`"
    docs = [d for d in yaml.safe_load_all(fresh) if d]
    assert docs[0]["kind"] == "Namespace"
    assert docs[0]["metadata"]["name"] == install_yaml.NAMESPACE
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"} == {
        "celeryapps.celeryproject.org",
        "celeryworkerpools.celeryproject.org",
        "flowers.celeryproject.org",
    }
    assert all(d["metadata"].get("namespace") in (None, install_yaml.NAMESPACE) for d in docs), (
        "every namespaced object is in the install namespace"
    )


def test_the_operator_leads_through_a_lease_unless_told_otherwise(helm: Helm) -> None:
    def operator(values: dict[str, Any]) -> dict[str, Any]:
        return _find(helm.template(values, "co-system"), "Deployment", "celery-operator")

    d = operator({})
    args = _container(d)["args"]
    assert d["spec"]["replicas"] == 2
    assert d["spec"]["strategy"]["type"] == "RollingUpdate"
    assert "--leader-election-id=celery-operator" in args
    assert {"--lease-duration=15", "--renew-deadline=10", "--retry-period=2"} <= set(args)
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in _container(d)["env"]}
    assert env == {"POD_NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"}
    # The operator's CLI accepts what the chart passes.
    build_parser().parse_args(args)

    single = operator({"operator": {"replicas": 1, "leaderElection": {"enabled": False}}})
    assert single["spec"]["strategy"]["type"] == "Recreate"  # never two at once
    assert "--no-leader-elect" in _container(single)["args"]
    build_parser().parse_args(_container(single)["args"])
