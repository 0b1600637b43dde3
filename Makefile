# The interface of the testbed. Every target that needs the environment bootstraps it first
# (idempotent: a second run only checks).

VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST := $(PY) -m pytest
export PYTHONPATH := $(CURDIR)
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help bootstrap demo test test-unit test-integration test-mininet lint format bench bench-quick docs clean

help:
	@echo "make demo     bring up the default topology, push HTTP through the VIPs, report, tear down"
	@echo "make test     the whole suite: unit, integration and mininet tiers"
	@echo "make test-unit | test-integration | test-mininet   one tier"
	@echo "make lint     ruff, mypy on the pure packages, protocol doc freshness"
	@echo "make bench    benchmarks with a report in bench/results/ (make bench-quick: smoke run)"
	@echo "make clean    remove namespaces, bridges and daemons left by killed runs"

bootstrap:
	@MAKE_TARGET=$(firstword $(MAKECMDGOALS)) bash scripts/bootstrap.sh

demo: bootstrap
	$(PY) -m topo.demo

test: bootstrap
	$(PYTEST) tests

test-unit: bootstrap
	$(PYTEST) -m unit tests

test-integration: bootstrap
	$(PYTEST) -m integration tests

test-mininet: bootstrap
	$(PYTEST) -m mininet tests

lint: bootstrap
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m slbproto.docgen --check

format: bootstrap
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

docs: bootstrap
	$(PY) -m slbproto.docgen --write

bench: bootstrap
	$(PY) -m bench.run

bench-quick: bootstrap
	$(PY) -m bench.run --quick

clean:
	@if [ -x $(PY) ]; then $(PY) -m nodes.clean; else echo "no venv: nothing of ours can be running"; fi
	rm -rf .pytest_cache .mypy_cache .ruff_cache build *.egg-info
