# kubeagents developer entry points. `make test` is the one command CI runs (.ci/run).
#
# Everything downloaded or built is cached outside the repository in $(CACHE), so a second run
# on the same machine is fast; the repository itself only gets .venv/ and .tools/ (git-ignored).

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

CACHE ?= $(or $(KUBEAGENTS_CACHE),$(HOME)/.cache/kubeagents)
UV_VERSION := $(shell sed -n 's/^uv *= *"\(.*\)"/\1/p' tests/tools.toml)
BOOTSTRAP := $(CACHE)/bootstrap/uv-$(UV_VERSION)
UV := $(BOOTSTRAP)/bin/uv
VENV := .venv
TOOLS_BIN := .tools/bin
BOOTSTRAP_PYTHON ?= python3

# The harness finds the image cache here (tests/harness/images.py).
export KUBEAGENTS_CACHE := $(CACHE)
export UV_CACHE_DIR := $(CACHE)/uv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
# Byte-compile site-packages at install: every process the tests start (proxies, the fake)
# then imports from .pyc instead of compiling ~1,400 modules on each start.
export UV_COMPILE_BYTECODE := 1
export PATH := $(CURDIR)/$(TOOLS_BIN):$(PATH)

CLUSTER_DIR ?= .tools/cluster

.PHONY: help test test-unit lint typecheck pytest venv tools images redis-server controlplane run fake-anthropic lock clean \
	cluster-up cluster-down bench-proxy bench-probe bench-runtime bench-operator

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

test: lint typecheck pytest ## Set up everything, then run ruff, the import contract, mypy and the whole pytest suite

lint: venv ## ruff lint and format check; the import contract (lint-imports, see pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

typecheck: venv ## mypy (strict) over the packages and the tests
	$(VENV)/bin/mypy

pytest: venv tools images ## Only the pytest suite (PYTEST_ARGS=... to select)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-unit: venv ## The fast edit-test loop: every test that needs no control plane, node or image (marker `unit`)
	$(VENV)/bin/pytest -m unit -q $(PYTEST_ARGS)

run: venv ## The whole product on a local cluster with a real node, and the example team run
	@cd tests && ../$(VENV)/bin/python -m harness.run_local --check
	@$(MAKE) --no-print-directory tools images
	@cd tests && ../$(VENV)/bin/python -m harness.run_local --dir $(abspath $(CLUSTER_DIR)) --cache $(CACHE)

fake-anthropic: venv ## Run the fake Anthropic API on 127.0.0.1:8787 (ARGS=... for its flags)
	$(VENV)/bin/kubeagents fake-anthropic $(ARGS)

bench-proxy: venv redis-server ## Benchmark the proxy: overhead, req/s, stream TTFB, RSS, vs LiteLLM (BENCH_ARGS=--skip-litellm)
	command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
	$(VENV)/bin/python tests/benchmarks/bench_proxy.py $(BENCH_ARGS)

bench-probe: venv redis-server ## Benchmark the probe: idle RSS, cost of /readyz polling
	$(VENV)/bin/python tests/benchmarks/bench_probe.py

bench-runtime: venv redis-server ## Benchmark the runtime: tasks/s (no tools, one tool call), idle RSS (BENCH_ARGS=--concurrency N)
	$(VENV)/bin/python tests/benchmarks/bench_runtime.py $(BENCH_ARGS)

bench-operator: venv tools ## Benchmark the operator: dispatch latency, runs/s, chain overhead, RSS with runs in flight
	$(VENV)/bin/python tests/benchmarks/bench_operator.py $(BENCH_ARGS)

$(UV):
	@echo "bootstrapping uv $(UV_VERSION) into $(BOOTSTRAP)"
	rm -rf $(BOOTSTRAP)
	$(BOOTSTRAP_PYTHON) -m venv $(BOOTSTRAP)
	$(BOOTSTRAP)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

venv: $(UV) ## Create .venv with exactly the locked dependencies (uv.lock)
	$(UV) sync --locked --quiet

lock: $(UV) ## Re-resolve uv.lock after changing pyproject.toml
	$(UV) lock

tools: $(UV) redis-server controlplane ## helm, kubectl, control plane, ct into .tools/bin; redis
	$(BOOTSTRAP_PYTHON) tests/harness/client_tools.py \
	  --pip $(BOOTSTRAP)/bin/pip --cache $(CACHE)/downloads --tools $(TOOLS_BIN)

images: venv controlplane ## Build the images of the real node (kubeagents, Valkey, pause, CoreDNS, provisioner), cached by content
	@cd tests && ../$(VENV)/bin/python -m harness.images build --cache $(CACHE)

controlplane: ## Build etcd, kube-apiserver, -controller-manager, -scheduler, kwok, ct (cached)
	$(BOOTSTRAP_PYTHON) tests/harness/go_builds.py --cache $(CACHE) --tools $(TOOLS_BIN)

cluster-up: venv tools ## Start a local control plane with 2 kwok nodes (REAL_NODE=1: a real node instead)
	@cd tests && ../$(VENV)/bin/python -m harness.controlplane up --dir $(abspath $(CLUSTER_DIR)) \
	  $(if $(REAL_NODE),--nodes 0 --real-node --cache $(CACHE))

cluster-down: venv ## Stop the control plane cluster-up started
	@cd tests && ../$(VENV)/bin/python -m harness.controlplane down --dir $(abspath $(CLUSTER_DIR))

.PHONY: chart-docs
chart-docs: ## Regenerate charts/*/README.md from each chart's values.yaml comments (helm-docs)
	@test -x $(TOOLS_BIN)/helm-docs || { echo "helm-docs missing: run make controlplane (or make tools)" >&2; exit 1; }
	$(TOOLS_BIN)/helm-docs --chart-search-root charts --template-files README.md.gotmpl --sort-values-order file

redis-server: ## Install redis-server/redis-cli (Debian) and valkey-server/valkey-cli (bookworm-backports) when missing
	@if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "redis-server is missing. Install it with: sudo apt-get install redis-server redis-tools" >&2; \
	    exit 1; \
	  fi; \
	  echo "installing redis-server and redis-tools from Debian packages"; \
	  export DEBIAN_FRONTEND=noninteractive RUNLEVEL=1; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null || exit 1; \
	fi; \
	if ! command -v valkey-server >/dev/null || ! command -v valkey-cli >/dev/null; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "valkey-server is missing. Install it from bookworm-backports: add" >&2; \
	    echo "'deb http://deb.debian.org/debian bookworm-backports main' to your apt sources, then" >&2; \
	    echo "sudo apt-get install -t bookworm-backports valkey-server valkey-tools" >&2; \
	    exit 1; \
	  fi; \
	  echo "installing valkey-server and valkey-tools from bookworm-backports"; \
	  printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' 'Suites: bookworm-backports' \
	    'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' \
	    > /etc/apt/sources.list.d/bookworm-backports.sources; \
	  export DEBIAN_FRONTEND=noninteractive RUNLEVEL=1; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends -t bookworm-backports \
	    valkey-server valkey-tools >/dev/null || exit 1; \
	fi

clean: ## Remove .venv and .tools (the cache in $(CACHE) stays)
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache
