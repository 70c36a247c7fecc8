# celery-operator. `make test` and `make demo` work on a fresh machine: they install
# what they need (Python deps, the Go-built control plane, Redis and RabbitMQ).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
VENV_LOWEST := .venv-lowest
RUN := testenv/.run
export PATH := $(BIN):$(PATH)

.PHONY: help deps testenv brokers node-deps images test test-lowest unit integration e2e realnode lint fmt \
        manifests install-yaml cluster-up cluster-down dev-up dev-down demo bench dashboard-picture clean

help:
	@echo "make test          install everything, then lint + every test suite (what CI runs)"
	@echo "make demo          control plane + CRDs + webhooks + operator + examples"
	@echo "make manifests     regenerate crds/, webhooks/, the chart's CRDs and RBAC, deploy/install.yaml"
	@echo "make install-yaml  re-render deploy/install.yaml from the chart (needs helm: make testenv)"
	@echo "make lint          ruff, mypy --strict, import contracts"
	@echo "make test-lowest   unit suite + e2e smoke with the runtime deps at their lower bounds"
	@echo "make cluster-up    start the local control plane (KUBECONFIG=$(RUN)/kubeconfig)"
	@echo "make cluster-down  stop it (and tear down the real node)"
	@echo "make images        build the real node's images (no registry needed)"
	@echo "make bench         benchmarks, written to docs/benchmarks.md"
	@echo "make dashboard-picture  docs/img/dashboard.svg from a real run's metrics"

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,dev]'
	touch $@

deps: $(VENV)/.installed

testenv:
	testenv/build.sh

brokers:
	testenv/install-brokers.sh

# The real node (containerd, runc, CNI plugins) and image building (debootstrap, buildah).
node-deps:
	testenv/install-node.sh

# The images the real node runs (pause, Python base, the operator's Dockerfile, the example
# app), built here with no registry and cached by their inputs (testenv/images.py).
images: deps node-deps
	$(BIN)/python -m testenv.images build

lint: deps
	$(BIN)/ruff check src tests testenv bench
	$(BIN)/ruff format --check src tests testenv bench
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: deps
	$(BIN)/ruff format src tests testenv bench
	$(BIN)/ruff check --fix src tests testenv bench

# Every suite, in one pytest session so the control plane (and the real node) start once;
# then a check that the real node left nothing on the machine.
test: deps testenv brokers images lint test-lowest
	@rc=0; $(BIN)/pytest tests || rc=$$?; \
	$(BIN)/python -m testenv.realnode down || rc=1; \
	$(BIN)/python -m testenv.realnode leftovers >/dev/null || { echo "the real node left: $$($(BIN)/python -m testenv.realnode leftovers)"; rc=1; }; \
	exit $$rc

# The runtime dependencies at exactly the lower bounds of pyproject.toml (uv's lowest-direct
# resolution; testenv.lowest_deps refuses any other version), the test tools at their newest
# versions that keep those. Rebuilt when pyproject.toml changes.
$(VENV_LOWEST)/.installed: pyproject.toml $(VENV)/.installed
	rm -rf $(VENV_LOWEST)
	$(BIN)/uv venv -q --python $(PYTHON) $(VENV_LOWEST)
	$(BIN)/uv pip install -q --python $(VENV_LOWEST)/bin/python --resolution lowest-direct -e .
	$(BIN)/uv pip freeze -q --python $(VENV_LOWEST)/bin/python --exclude-editable >$(VENV_LOWEST)/lowest.txt
	$(BIN)/uv pip install -q --python $(VENV_LOWEST)/bin/python -c $(VENV_LOWEST)/lowest.txt -e '.[test]'
	touch $@

# The lower bounds, proved: the unit suite, then the operator and the webhook (run from that
# venv by the e2e fixtures, as subprocesses of its interpreter) on the local control plane:
# the shipped CeleryApp, CeleryWorkerPool and Flower examples become Ready, admission works,
# and neither log has an error.
LOWEST_SMOKE := \
	tests/e2e/test_controllers.py::test_examples_in_any_order_become_ready \
	tests/e2e/test_webhooks.py::test_mutating_defaults_and_labels \
	tests/e2e/test_webhooks.py::test_literal_url_with_password \
	tests/e2e/test_webhooks.py::test_webhook_log_is_clean \
	tests/e2e/test_controllers.py::test_operator_log_is_clean
test-lowest: $(VENV_LOWEST)/.installed testenv
	$(abspath $(VENV_LOWEST))/bin/python -m testenv.lowest_deps
	PATH=$(abspath $(VENV_LOWEST))/bin:$$PATH $(abspath $(VENV_LOWEST))/bin/pytest -p no:cacheprovider \
		tests/unit $(LOWEST_SMOKE)

unit: deps
	$(BIN)/pytest tests/unit

integration: deps testenv brokers
	$(BIN)/pytest tests/integration

e2e: deps testenv brokers
	$(BIN)/pytest tests/e2e

realnode: deps testenv brokers images
	$(BIN)/pytest tests/realnode

cluster-up: deps testenv images
	$(BIN)/python -m testenv.controlplane up

# Stops whatever runs: the operator (and webhook) of dev-up, then the control plane.
cluster-down: dev-down

clean: cluster-down
	rm -rf $(VENV) $(VENV_LOWEST) .mypy_cache .ruff_cache .pytest_cache

manifests: deps
	$(BIN)/celery-operator manifests
	$(MAKE) --no-print-directory install-yaml

# deploy/install.yaml: the chart rendered with its default values, by testenv's pinned helm
# (its path asked of testenv; expanded only when this recipe runs).
install-yaml: TESTENV_HELM = $(shell $(BIN)/python -c 'from testenv.controlplane import versions; \
	from testenv.paths import cache_dir; \
	print(cache_dir() / ("helm-" + versions()["HELM_VERSION"]) / "bin" / "helm")')
install-yaml: deps
	testenv/build.sh helm >/dev/null
	test -x "$(TESTENV_HELM)" || { echo "install-yaml: no helm at '$(TESTENV_HELM)'" >&2; exit 1; }
	$(BIN)/python -m celery_operator.manifests.install_yaml --helm "$(TESTENV_HELM)"

# Re-extract the upstream schemas of the core types the CRDs embed (needs Go).
k8s-schemas: deps
	$(BIN)/python -m testenv.k8s_schemas

dev-up: deps testenv images
	$(BIN)/python -m testenv.dev up

dev-down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m testenv.dev down; else echo "nothing running"; fi

demo: deps testenv images
	$(BIN)/python -m testenv.dev demo

$(VENV)/.bench-installed: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[test,dev,bench]'
	touch $@

bench: deps testenv brokers $(VENV)/.bench-installed
	$(BIN)/python -m bench.run

# docs/img/dashboard.svg: the dashboard's series scraped during a real run (bench/dashboard.py).
dashboard-picture: deps testenv brokers $(VENV)/.bench-installed
	$(BIN)/python -m bench.dashboard
