# Set-up and the two jobs of the README: `make demo` and `make test-all` (`make test`: the quick tier).
# Everything installs into .venv/ in the repository root; torch comes from the local wheel cache.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup data demo test test-slow test-all lint typecheck clean cluster-local-up cluster-local-smoke \
	cluster-local-down

setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e '.[test,tune]' $(TORCH_PINS)
	touch $@

data: $(FASHION_MNIST)

$(FASHION_MNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

# The main job on the embedded default: the β-then-α search on Fashion-MNIST, CPU-sized.
demo: setup
	$(BIN)/python tune/search_alpha_beta.py --preset quick

lint: setup
	$(BIN)/ruff check selmatch tune tests benchmarks experiments
	$(BIN)/ruff format --check selmatch tune tests benchmarks experiments

typecheck: setup
	$(BIN)/mypy

# Two tiers: `make test` (lint, types and every test not marked slow: minutes) and
# `make test-slow` (the slow tier: Ray, searches, longer training); CI runs both (.ci/run).
# pytest exits 5 when it collects no test: that is a failure of the suite, not a pass.
TESTS = $(BIN)/pytest -q tests -m
NO_TESTS = if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

test: lint typecheck
	$(TESTS) "not slow"; status=$$?; $(NO_TESTS)

test-slow: setup
	$(TESTS) slow; status=$$?; $(NO_TESTS)

test-all: test test-slow

# A multi-node Ray cluster on this machine (cluster/local.yaml, docs/cluster.md): up, the smoke
# search on it (its trials must spread over 2+ nodes), down. Down runs even when smoke fails.
LOCAL_CLUSTER := LOCAL_CLUSTER_BIN=$(abspath $(BIN)) cluster/local_cluster.sh

cluster-local-up:
	$(LOCAL_CLUSTER) start

cluster-local-smoke:
	$(LOCAL_CLUSTER) start; status=$$?; \
	if [ $$status -eq 0 ]; then $(LOCAL_CLUSTER) smoke; status=$$?; fi; \
	$(LOCAL_CLUSTER) stop || status=1; exit $$status

cluster-local-down:
	$(LOCAL_CLUSTER) stop

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
