# foundry-gateway: `make run` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= $(or $(GATEWAY_PORT),8080)
MODEL := models/tiny-chat/genai_config.json
BUILDER := .venv-model/.installed

.PHONY: help install model builder prometheus redis chromium run test lint typecheck unit bench bench-real bench-surface bench-fleet bench-transport bench-toolcalls bench-cache bench-batch bench-memory clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-11s %s\n", $$1, $$2}'

# what running needs (the gateway, the Foundry Local SDK, OpenTelemetry's exporter) for `make run`; the test and
# bench tools on top for everything else
$(VENV)/.installed-run: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[foundry,otel]'
	touch $@

$(VENV)/.installed: $(VENV)/.installed-run
	$(VENV)/bin/pip install -q -e '.[foundry,plot,bench,dev,otel]'
	touch $@

install: $(VENV)/.installed  ## create .venv with the gateway, Foundry Local SDK and the dev tools (test, lint, bench)

$(MODEL):
	scripts/build-tiny-model.sh

model: $(MODEL)  ## build the tiny test model if it is not there (it is committed)

$(BUILDER): scripts/requirements-model.txt
	scripts/build-tiny-model.sh --venv-only
	touch $@

builder: $(BUILDER)  ## the model builder's venv (.venv-model: torch, onnxruntime-genai) for `compile`, ~1 min

prometheus:  ## install Debian's prometheus (promtool) if missing
	scripts/ensure-package.sh prometheus prometheus promtool

redis:  ## install Debian's redis-server if missing (the quota tests start their own)
	scripts/ensure-package.sh redis-server redis-server

chromium:  ## install Debian's chromium if missing (the console tests drive it headless)
	scripts/ensure-package.sh chromium chromium

run: $(VENV)/.installed-run model  ## run the gateway on 127.0.0.1:$(PORT) (make run PORT=9000) before a managed Foundry Local with the tiny models
	$(VENV)/bin/foundry-gateway serve --port $(PORT)

lint: install  ## ruff, mypy (also as on Windows and macOS), the import layers (lint-imports), vulture and hadolint
	$(VENV)/bin/ruff check app tests scripts
	$(VENV)/bin/vulture app vulture_whitelist.py --min-confidence 60
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --platform win32 app
	$(VENV)/bin/mypy --platform darwin app
	$(VENV)/bin/hadolint Dockerfile

test: install model builder prometheus redis chromium lint  ## everything CI runs: lint, unit, integration (real Foundry Local, Prometheus, Redis, Chromium, the model builder)
	$(PY) -m pytest
	# the proxy, streaming, surface, fleet and keys tests again on asyncio's own event loop, as on Windows
	GATEWAY_LOOP=asyncio $(PY) -m pytest tests/e2e/test_proxy.py tests/unit/openai/test_streaming.py \
		tests/e2e/test_hardening.py tests/e2e/test_surface.py tests/e2e/test_fleet.py tests/e2e/test_keys.py \
		tests/e2e/test_portable.py

bench: install  ## gateway overhead vs direct against a fast fake upstream
	$(PY) scripts/bench_overhead.py

bench-real: install model  ## direct vs through the gateway on the real runtime: 1-64 clients, and the swap scenario (~6 min)
	$(PY) scripts/bench_real.py

bench-surface: install model  ## embeddings and Responses, direct vs through the gateway on the real runtime (~3 min)
	$(PY) scripts/bench_surface.py

bench-fleet: install  ## a front over 1, 2 and 4 fake-upstream nodes: throughput vs N x one node, CPU per request (~1 min)
	$(PY) scripts/bench_fleet.py

bench-transport: install  ## CPU per request of each upstream transport alone (fast, httpx, aiohttp)
	$(PY) scripts/bench_transport.py

bench-toolcalls: install  ## CPU to rebuild a streamed tool call of 5, 20 and 50 KB of arguments (4-character pieces)
	$(PY) scripts/bench_toolcalls.py

bench-cache: install model  ## the response cache on the real runtime: hit latency, hits vs misses, 32 identical streams, miss CPU A/B (~3 min)
	$(PY) scripts/bench_cache.py --seconds 6 --rounds 4 --max-tokens 32,256
bench-batch: install model  ## a 500-line batch beside 4 interactive clients on the real runtime: their TTFT and the batch's lines/s (~3 min)
	$(PY) scripts/bench_batch.py --lines 500
bench-memory: install  ## the gateway's RSS during a 300 MB upload, 4 x 100 MB downloads and a 10,000-line batch (bound +64 MiB, ~2 min)
	$(PY) scripts/bench_memory.py
clean:  ## remove the venv and run state
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
