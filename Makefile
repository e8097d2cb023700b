# Thin wrapper: each target does its own set-up, so `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
FRONTEND := services/frontend
BACKEND := services/backend
CHART_TOOLS := tests/chart
PYTEST_ARGS ?=

.PHONY: help setup system-deps webapp demo test bench images chart-sync e2e-kind clean

help:
	@echo "make demo     set up, then run the whole stack locally and print its URL"
	@echo "make test     set up, then run every test (unit, integration, browser, chart, e2e)"
	@echo "make bench    run the benchmarks (figures in bench/out/)"
	@echo "make images   build the container images (needs Docker)"
	@echo "make e2e-kind run the end-to-end suite on a kind cluster (needs Docker, kind)"

# Debian packages the tests need (Chromium for browser tests, Prometheus for the observability test).
system-deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver prometheus

$(BIN)/marcelle-torch: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(FRONTEND)/node_modules/.installed: $(FRONTEND)/package-lock.json
	cd $(FRONTEND) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(BACKEND)/node_modules/.installed: $(BACKEND)/package-lock.json
	cd $(BACKEND) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

setup: $(BIN)/marcelle-torch $(FRONTEND)/node_modules/.installed $(BACKEND)/node_modules/.installed

# The web app with the ONNX bundle of the built-in classifier inside it.
webapp: setup
	$(BIN)/marcelle-torch export-onnx digits --out $(FRONTEND)/public/onnx/digits
	cd $(FRONTEND) && npm run build --silent

demo: webapp
	$(BIN)/marcelle-torch up $(UP_ARGS)

test: webapp
	$(BIN)/pytest $(PYTEST_ARGS)

bench: webapp
	$(BIN)/python bench/serve_latency.py
	$(BIN)/python bench/parity.py
	$(BIN)/python bench/dashboard_render.py

clean:
	rm -rf $(FRONTEND)/dist $(FRONTEND)/public/onnx var .cache/test bench/out
