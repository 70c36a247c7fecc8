"""Extracts the upstream OpenAPI schemas of the core Kubernetes types our CRDs embed.

    python -m testenv.k8s_schemas   # make k8s-schemas

rewrites src/celery_operator/api/k8s_schemas.json.

Reads `api/openapi-spec/v3/*.json` of the pinned k8s.io/kubernetes module (downloaded by
testenv/build.sh) and keeps the definitions our models name (and what they reference), in
the structural form CRDs require: no defaults, no list-map annotations, quantities and
int-or-string as `x-kubernetes-int-or-string`. The output is committed, so `make manifests`
needs no Go toolchain.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from testenv.paths import versions

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "src" / "celery_operator" / "api" / "k8s_schemas.json"
SPECS = ("api__v1_openapi.json", "apis__autoscaling__v2_openapi.json")
INT_OR_STRING = {
    "io.k8s.apimachinery.pkg.api.resource.Quantity",
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString",
}
DROP_KEYS = {
    "default",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-list-type",
    "x-kubernetes-map-type",
    "x-kubernetes-patch-merge-key",
    "x-kubernetes-patch-strategy",
    "x-kubernetes-unions",
    "enum",  # upstream enums are advisory and version-dependent; the apiserver checks pods
}


def module_dir() -> Path:
    version = versions()["KUBERNETES_VERSION"]
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(json.loads(out.stdout)["Dir"])


def roots() -> set[str]:
    from celery_operator.api import base, celeryapp, celeryworkerpool, flower  # noqa: F401

    return set(base.K8S_DEFINITIONS)


def clean(node: Any, refs: set[str]) -> Any:
    if isinstance(node, list):
        return [clean(n, refs) for n in node]
    if not isinstance(node, dict):
        return node
    if "allOf" in node and len(node["allOf"]) == 1 and "$ref" in node["allOf"][0]:
        merged = {k: v for k, v in node.items() if k != "allOf"}
        merged["$ref"] = node["allOf"][0]["$ref"]
        node = merged
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in DROP_KEYS:
            continue
        if key == "$ref":
            name = value.rsplit("/", 1)[-1]
            refs.add(name)
            out["$ref"] = name
            continue
        out[key] = clean(value, refs)
    return out


def extract(spec_dir: Path, wanted: set[str]) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for spec in SPECS:
        schemas.update(json.loads((spec_dir / spec).read_text())["components"]["schemas"])
    out: dict[str, Any] = {}
    todo = sorted(wanted)
    while todo:
        name = todo.pop()
        if name in out:
            continue
        if name in INT_OR_STRING:
            out[name] = {"x-kubernetes-int-or-string": True}
            continue
        refs: set[str] = set()
        out[name] = clean(schemas[name], refs)
        todo.extend(sorted(refs - out.keys()))
    return dict(sorted(out.items()))


def main() -> int:
    spec_dir = module_dir() / "api" / "openapi-spec" / "v3"
    result = extract(spec_dir, roots())
    OUT.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(result)} definitions to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
