#!/usr/bin/env bash
# Builds the local control plane from Go modules and caches the binaries.
#
#   testenv/build.sh [component ...]     components: k8s etcd kwok helm keda promtool metrics-server
#                                        keda-server (default: all of these)
#
# Binaries land in $CELERY_OPERATOR_TESTENV_CACHE (default ~/.cache/celery-operator/testenv),
# one versioned directory per component: k8s-v1.34.4/bin, etcd-v3.6.16/bin, ...
# A component whose binaries are already there is skipped. Prints the directory of each.
#
# KUBEBUILDER_ASSETS (a directory holding kube-apiserver, etcd, kubectl; the envtest
# convention) is honoured by the runner, not here: with it set, `make test` still builds
# what that directory lacks (controller-manager, scheduler, kwok, helm, KEDA's CRDs).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
cache="${CELERY_OPERATOR_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/celery-operator/testenv}"
mkdir -p "$cache"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"

log() { printf '[testenv %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() { printf '[testenv] FAILED building %s: %s\n' "$1" "$2" >&2; exit 1; }

command -v go >/dev/null || fail "anything" "go is not on PATH (install Go >= 1.26.7: promtool needs it, the rest 1.24)"

# Runs a long command, printing a heartbeat every 30s; on failure prints the log tail.
run_logged() {
  local component="$1" logfile="$2"; shift 2
  "$@" >"$logfile" 2>&1 &
  local pid=$! start=$SECONDS next=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    sleep 2
    if (( SECONDS >= next )); then
      next=$((SECONDS + 30))
      log "$component: still building ($((SECONDS - start))s, $(wc -l <"$logfile") log lines)"
    fi
  done
  if ! wait "$pid"; then
    tail -n 25 "$logfile" >&2
    fail "$component" "'$*' exited non-zero; full log: $logfile"
  fi
}

# Writes a wrapper module's go.mod into $1 (a fresh directory in the cache).
new_module() {
  local dir="$1" name="$2"
  rm -rf "$dir"; mkdir -p "$dir"
  printf 'module celery-operator.local/testenv/%s\n\ngo 1.24.0\n' "$name" >"$dir/go.mod"
}

modfile_of() { # path of a module's go.mod in the module cache
  go mod download -json "$1@$2" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p'
}

ldflags_k8s() {
  local v="${KUBERNETES_VERSION}" major minor
  major="$(echo "$v" | sed -E 's/^v([0-9]+)\..*/\1/')"
  minor="$(echo "$v" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/')"
  local p=k8s.io/component-base/version
  echo "-s -w -X $p.gitVersion=$v -X $p.gitMajor=$major -X $p.gitMinor=$minor" \
    "-X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z" \
    "-X k8s.io/client-go/pkg/version.gitVersion=$v"
}

build_k8s() {
  local out="$cache/k8s-$KUBERNETES_VERSION/bin" src="$cache/src/k8s-$KUBERNETES_VERSION"
  local bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
  if all_present "$out" "${bins[@]}"; then echo "$out"; return; fi
  log "k8s $KUBERNETES_VERSION: resolving modules (the first time downloads ~1 GiB)"
  new_module "$src" k8s
  local upstream staging
  upstream="$(modfile_of k8s.io/kubernetes "$KUBERNETES_VERSION")" ||
    fail k8s "cannot download k8s.io/kubernetes@$KUBERNETES_VERSION from the Go module proxy"
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with
  # ./staging paths that do not exist outside its repository: point each at its release.
  staging="$(grep -oE '^\s*k8s\.io/[a-z0-9-]+ v0\.0\.0$' "$upstream" | awk '{print $1}' | sort -u)"
  [ -n "$staging" ] || fail k8s "found no staging modules in $upstream"
  {
    printf '\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$KUBERNETES_VERSION"
    for m in $staging; do printf '\t%s => %s %s\n' "$m" "$m" "${KUBERNETES_VERSION/v1./v0.}"; done
    printf ')\n'
  } >>"$src/go.mod"
  mkdir -p "$out.tmp"
  log "k8s $KUBERNETES_VERSION: building ${bins[*]} (10-20 min cold on 2 cores)"
  (cd "$src" && run_logged k8s "$src/build.log" go build -trimpath \
    -ldflags "$(ldflags_k8s)" -o "$out.tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)
  finish "$out"
}

build_etcd() {
  local out="$cache/etcd-$ETCD_VERSION/bin" src="$cache/src/etcd-$ETCD_VERSION"
  if all_present "$out" etcd; then echo "$out"; return; fi
  new_module "$src" etcd
  cp "$here/modules/etcd/main.go" "$src/"
  printf '\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" >>"$src/go.mod"
  mkdir -p "$out.tmp"
  log "etcd $ETCD_VERSION: building"
  (cd "$src" && run_logged etcd "$src/build.log" go build -trimpath -ldflags "-s -w" -o "$out.tmp/etcd" .)
  finish "$out"
}

build_kwok() {
  local out="$cache/kwok-$KWOK_VERSION/bin" src="$cache/src/kwok-$KWOK_VERSION"
  if all_present "$out" kwok && [ -d "$out/../stages" ]; then echo "$out"; return; fi
  new_module "$src" kwok
  printf '\nrequire sigs.k8s.io/kwok %s\n' "$KWOK_VERSION" >>"$src/go.mod"
  mkdir -p "$out.tmp"
  log "kwok $KWOK_VERSION: building"
  (cd "$src" && run_logged kwok "$src/build.log" go build -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" -o "$out.tmp/kwok" sigs.k8s.io/kwok/cmd/kwok)
  # The stage configs (what kwok does to a node or pod over its life) ship in the module.
  local dir
  dir="$(cd "$src" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
  rm -rf "$out/../stages"; mkdir -p "$out/../stages"
  cp "$dir"/kustomize/stage/node/fast/node-*.yaml "$dir"/kustomize/stage/node/heartbeat-with-lease/node-*.yaml \
    "$dir"/kustomize/stage/pod/fast/pod-*.yaml "$out/../stages/"
  chmod -R u+w "$out/../stages"
  finish "$out"
}

build_helm() {
  local out="$cache/helm-$HELM_VERSION/bin" src="$cache/src/helm-$HELM_VERSION"
  if all_present "$out" helm; then echo "$out"; return; fi
  new_module "$src" helm
  printf '\nrequire helm.sh/helm/v3 %s\n' "$HELM_VERSION" >>"$src/go.mod"
  mkdir -p "$out.tmp"
  log "helm $HELM_VERSION: building"
  (cd "$src" && run_logged helm "$src/build.log" go build -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" -o "$out.tmp/helm" helm.sh/helm/v3/cmd/helm)
  finish "$out"
}

build_promtool() { # checks and unit-tests the chart's PrometheusRule and the dashboard's queries
  local out="$cache/promtool-$PROMTOOL_VERSION/bin" src="$cache/src/promtool-$PROMTOOL_VERSION"
  if all_present "$out" promtool; then echo "$out"; return; fi
  new_module "$src" promtool
  # The module has no replace directives; a wrapper keeps its graph apart from the others'.
  # Module v0.3MM.P is Prometheus 3.MM.P, the version promtool reports.
  printf '\nrequire github.com/prometheus/prometheus %s\n' "$PROMTOOL_VERSION" >>"$src/go.mod"
  local release p=github.com/prometheus/common/version
  release="$(echo "$PROMTOOL_VERSION" | sed -E 's/^v0\.([0-9])([0-9][0-9])\.([0-9]+)$/\1.\2.\3/; s/\.0([0-9])\./.\1./')"
  mkdir -p "$out.tmp"
  log "promtool $PROMTOOL_VERSION: building (about 8 min and ~270 MiB of modules cold on 2 cores)"
  (cd "$src" && run_logged promtool "$src/build.log" go build -trimpath \
    -ldflags "-s -w -X $p.Version=$release -X $p.Branch=HEAD -X $p.BuildDate=19700101-00:00:00" \
    -o "$out.tmp/promtool" github.com/prometheus/prometheus/cmd/promtool)
  finish "$out"
}

build_metrics_server() { # an HPA on CPU sees the real node's pods (issue 18)
  local out="$cache/metrics-server-$METRICS_SERVER_VERSION/bin" src="$cache/src/metrics-server-$METRICS_SERVER_VERSION"
  if all_present "$out" metrics-server; then echo "$out"; return; fi
  new_module "$src" metrics-server
  printf '\nrequire sigs.k8s.io/metrics-server %s\n' "$METRICS_SERVER_VERSION" >>"$src/go.mod"
  mkdir -p "$out.tmp"
  log "metrics-server $METRICS_SERVER_VERSION: building"
  (cd "$src" && run_logged metrics-server "$src/build.log" go build -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/metrics-server/pkg/version.gitVersion=$METRICS_SERVER_VERSION" \
    -o "$out.tmp/metrics-server" sigs.k8s.io/metrics-server/cmd/metrics-server)
  finish "$out"
}

build_keda() { # not a binary: KEDA's CRDs, so that ScaledObjects meet KEDA's real schema
  local out="$cache/keda-$KEDA_VERSION/crds"
  if [ -n "$(ls "$out"/*.yaml 2>/dev/null)" ]; then echo "$out"; return; fi
  log "keda $KEDA_VERSION: extracting CRDs from the module"
  local dir
  dir="$(go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')"
  [ -d "$dir/config/crd/bases" ] || fail keda "no config/crd/bases in github.com/kedacore/keda/v2@$KEDA_VERSION"
  rm -rf "$out"; mkdir -p "$out"
  cp "$dir"/config/crd/bases/*.yaml "$out/"
  chmod -R u+w "$out"
  echo "$out"
}

all_present() {
  local dir="$1"; shift
  for b in "$@"; do [ -x "$dir/$b" ] || return 1; done
}

finish() { # atomically moves $1.tmp to $1, so an interrupted build is never taken as done
  rm -rf "$1"; mv "$1.tmp" "$1"
  log "built $(ls "$1" | tr '\n' ' ')in $1"
  echo "$1"
}

build_keda_server() { # KEDA's operator and metrics API server, to read the ScaledObjects (issue 18)
  local out="$cache/keda-$KEDA_VERSION/bin" src="$cache/src/keda-server-$KEDA_VERSION"
  if all_present "$out" keda keda-adapter; then echo "$out"; return; fi
  new_module "$src" keda-server
  printf '\nrequire github.com/kedacore/keda/v2 %s\n' "$KEDA_VERSION" >>"$src/go.mod"
  # KEDA's own go.mod pins one module by a replace and excludes another: a wrapper module
  # must say the same, or the graph resolves differently (the Kubernetes wrapper's lesson).
  local modfile
  modfile="$(modfile_of github.com/kedacore/keda/v2 "$KEDA_VERSION")"
  python3 - "$modfile" "$src/go.mod" <<'PY'
import json, subprocess, sys
mod = json.loads(subprocess.check_output(["go", "mod", "edit", "-json", sys.argv[1]]))
def ref(m):
    return m["Path"] + ("@" + m["Version"] if m.get("Version") else "")
args = [f"-replace={ref(r['Old'])}={ref(r['New'])}" for r in mod.get("Replace") or []]
args += [f"-exclude={e['Path']}@{e['Version']}" for e in mod.get("Exclude") or []]
if args:
    subprocess.check_call(["go", "mod", "edit", *args, sys.argv[2]])
PY
  mkdir -p "$out.tmp"
  log "keda $KEDA_VERSION: building the operator and the metrics adapter (heavy: every scaler's SDK)"
  local v=github.com/kedacore/keda/v2/version
  (cd "$src" && run_logged keda "$src/build.log" go build -trimpath \
    -ldflags "-s -w -X $v.Version=$KEDA_VERSION -X $v.GitCommit=module" \
    -o "$out.tmp/keda" github.com/kedacore/keda/v2/cmd/operator)
  (cd "$src" && run_logged keda "$src/build-adapter.log" go build -trimpath \
    -ldflags "-s -w -X $v.Version=$KEDA_VERSION -X $v.GitCommit=module" \
    -o "$out.tmp/keda-adapter" github.com/kedacore/keda/v2/cmd/adapter)
  finish "$out"
}

components=("$@")
[ ${#components[@]} -gt 0 ] || components=(etcd kwok keda helm promtool metrics-server k8s keda-server)
for c in "${components[@]}"; do
  case "$c" in
    k8s|etcd|kwok|helm|keda|promtool) "build_$c" ;;
    metrics-server) build_metrics_server ;;
    keda-server) build_keda_server ;;
    *) fail "$c" "unknown component (k8s etcd kwok helm keda promtool metrics-server keda-server)" ;;
  esac
done
