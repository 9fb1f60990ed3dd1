# Two commands: `make run` (the demo) and `make test` (everything CI checks).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.runtime
INSTALLED := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: run test lint servers assets protos clean

# The demo needs only what the servers run on; the developer extra (linters, pytest, Locust,
# protoc) is for `make test`, and installing it first would triple `make run`'s first start.
$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(INSTALLED): $(RUNTIME)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# The web console's front-end libraries (htmx, uPlot): the exact versions and hashes of package-lock.json,
# from the npm registry, never committed and never fetched from a CDN at run time (the console serves them).
ASSETS := quota_console/assets
ASSETS_INSTALLED := $(ASSETS)/node_modules/.package-lock.json

$(ASSETS_INSTALLED): $(ASSETS)/package.json $(ASSETS)/package-lock.json
	npm ci --prefix $(ASSETS) --no-audit --no-fund
	touch $@

assets: $(ASSETS_INSTALLED)

run: $(RUNTIME)
	$(BIN)/quota demo

# Tests start their own etcd and Redis; Debian's packages are only the binaries. The console's browser tests
# drive Debian's chromium through its chromedriver (the same version, from the same package source). npm is the
# machine's own, beside its Node.js (Debian's npm package would replace that Node.js with an older one).
servers:
	@command -v etcd >/dev/null && command -v redis-server >/dev/null && command -v chromium >/dev/null \
		&& command -v chromedriver >/dev/null || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq etcd-server redis-server chromium chromium-driver; }

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The chart's test (tests/helm) runs helm; Debian has none, so a static one is fetched when the PATH has no helm.
FETCHED_HELM := .cache/helm/helm
HELM_NEEDED := $(if $(shell command -v helm),,$(FETCHED_HELM))

$(FETCHED_HELM): | $(INSTALLED)
	$(BIN)/python scripts/fetch_helm.py

test: $(INSTALLED) servers $(ASSETS_INSTALLED) lint $(HELM_NEEDED)
	$(BIN)/pytest

protos: $(INSTALLED)
	$(BIN)/python scripts/gen_protos.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis .cache
