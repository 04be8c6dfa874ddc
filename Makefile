# Two commands on a fresh machine: `make run` and `make test`. Everything installs into .venv: `make run`
# the runtime and the local model only; `make test` also the dev tools and the `bench` and `train` extras
# (so `gateway bench`, `gateway eval` and `gateway cache calibrate` work after it); the benchmark targets
# the runtime, the local model and `bench`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
# The local sentence embedder (built once by `make embedder`, see below).
EMBEDDER_MODEL := .gateway/models/all-minilm-l6-v2-int8.onnx
# The dashboard's browser tests drive Debian's Chromium (Playwright never downloads a browser).
CHROMIUM := /usr/bin/chromium
# The agent CLIs the tests drive as real clients (see agent-clis below).
NODE_DIR   := .gateway/node
AGENT_CLIS := $(NODE_DIR)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test install install-dev lock lint typecheck pytest bench bench-accounting bench-ledger bench-cache bench-router bench-dashboard soak overload clean embedder browser agent-clis

run: $(VENV)/.installed-run $(EMBEDDER_MODEL)
	$(BIN)/gateway serve

test: $(VENV)/.installed-dev lint typecheck pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check gateway tests

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

pytest: $(VENV)/.installed-dev $(EMBEDDER_MODEL) $(CHROMIUM) $(AGENT_CLIS)
	$(BIN)/pytest

bench: $(VENV)/.installed-bench
	@mkdir -p artifacts
	$(BIN)/gateway bench --json artifacts/bench.json

# What accounting adds per request (target: median <= 200 us) and what the ledger sustains
# (target: >= 5,000 records/s on SQLite and on PostgreSQL at $(POSTGRES_URL)).
POSTGRES_URL ?= postgresql://postgres@127.0.0.1:5432/test
bench-accounting: $(VENV)/.installed-bench
	@mkdir -p artifacts
	$(BIN)/python -m gateway.bench.accounting --json artifacts/bench-accounting.json

bench-ledger: $(VENV)/.installed-bench
	@mkdir -p artifacts
	$(BIN)/python -m gateway.bench.ledger --postgres-url $(POSTGRES_URL) --json artifacts/bench-ledger.json

# The semantic cache at 100,000 entries on one core (targets in gateway/bench/cache.py), with stored
# questions from labelled pairs at $(PAIRS).
PAIRS ?= ../shared/data/qqp/pairs.jsonl
bench-cache: $(VENV)/.installed-bench $(EMBEDDER_MODEL)
	@mkdir -p artifacts
	$(BIN)/python -m gateway.bench.cache --pairs $(PAIRS) --json artifacts/bench-cache.json

# Each finance dashboard view with 1,000,000 ledger records, SQLite and PostgreSQL (target: <= 1 s).
bench-dashboard: $(VENV)/.installed-bench
	@mkdir -p artifacts
	$(BIN)/python -m gateway.bench.dashboard --postgres-url $(POSTGRES_URL) --json artifacts/bench-dashboard.json

ROUTER_DATA ?= ../shared/data/routellm/mt_bench ../shared/data/routellm/gsm8k/gsm8k_responses.csv
bench-router: $(VENV)/.installed-bench $(EMBEDDER_MODEL)
	taskset -c 0 $(BIN)/gateway router bench $(ROUTER_DATA) --json artifacts/bench-router.json

# The Azure conversation trace replayed open-loop against the gateway and the fake upstream for 10
# minutes (prompts from ShareGPT): throughput, latency, errors and RSS over time, with a plot.
TRACE ?= ../shared/data/traces/AzureLLMInferenceTrace_conv.csv
PROMPTS ?= ../shared/data/traces/ShareGPT_V3_filtered_1000.json
soak: $(VENV)/.installed-bench
	@mkdir -p artifacts
	$(BIN)/python -m gateway.bench.soak --trace $(TRACE) --prompts $(PROMPTS) --json artifacts/soak.json --png artifacts/soak.png

# The same trace's arrivals at 1x, 3x and 10x the fake frontier's capacity (60 s each, then a drain),
# admission control on and off: first byte, shed, downgraded and deferred requests by priority class,
# cost and energy per request, the issue's targets as PASS/FAIL, with a plot. More options (e.g.
# --seconds 30, --configs off) in OVERLOAD_ARGS; `python -m gateway.bench.overload --help` lists them.
OVERLOAD_ARGS ?=
overload: $(VENV)/.installed-bench
	@mkdir -p artifacts
	$(BIN)/python -m gateway.bench.overload --trace $(TRACE) --prompts $(PROMPTS) --json artifacts/overload.json --plot artifacts/overload.png $(OVERLOAD_ARGS)

install: $(VENV)/.installed-run
embedder: $(EMBEDDER_MODEL)
install-dev: $(VENV)/.installed-dev

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --progress-bar on --upgrade pip

# The local extra compiles llama-cpp-python the first time (~6-8 min); pip reuses the wheel afterwards.
# A portable build (AVX2, no AVX-512 or AMX): llama.cpp's native build uses AMX tiles wherever the CPU
# has them, and a kernel or VM that does not grant them kills the server on its first request (a
# general protection fault in libggml-cpu). A wheel built natively before stays in pip's cache: delete
# it (~/.cache/pip/wheels/**/llama_cpp_python-*) to rebuild.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
$(VENV)/.installed-run: pyproject.toml requirements.lock | $(BIN)/python
	$(PIP) install --progress-bar on -c requirements.lock -e '.[local]'
	@touch $@

$(VENV)/.installed-bench: pyproject.toml requirements.lock | $(BIN)/python
	$(PIP) install --progress-bar on -c requirements.lock -e '.[local,bench]'
	@touch $@ $(VENV)/.installed-run

$(VENV)/.installed-dev: pyproject.toml requirements.lock | $(BIN)/python
	$(PIP) install --progress-bar on -c requirements.lock -e '.[local,dev,bench,train]'
	@touch $@ $(VENV)/.installed-run $(VENV)/.installed-bench

# Pin the runtime dependencies, the local model's and the bench and train extras' again (after changing
# them in pyproject.toml; existing pins are kept); needs the package index. The image installs with it
# as constraints, so it gets the tested versions of what it installs and nothing more.
lock: $(VENV)/.installed-dev
	$(BIN)/uv pip compile pyproject.toml --extra local --extra bench --extra train --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --custom-compile-command 'make lock' -o requirements.lock

# The local sentence embedder: export all-MiniLM-L6-v2 to int8 ONNX with the build-time extra (torch
# CPU, ~1-2 min to install, ~10 s to export); the runtime needs only onnxruntime. The export skips a
# model that is already valid, so rerunning this is cheap.
$(EMBEDDER_MODEL): | $(VENV)/.installed-run
	$(PIP) install --progress-bar on -c requirements.lock -e '.[local,embed-export]'
	$(BIN)/python -m gateway.embedding.export --output $@

browser: $(CHROMIUM)
$(CHROMIUM):
	$(SUDO) apt-get install -y --no-install-recommends chromium \
		|| ($(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium)

# OpenAI's Codex CLI and Anthropic's Claude Code, which tests/clients/test_agent_clis.py runs headless
# against the gateway: pinned (with their integrity hashes) in tests/clients/node/package-lock.json and
# installed from the npm registry with `npm ci` into $(NODE_DIR), with the machine's Node.js and npm.
# Each ships its native binary inside a registry package (Claude Code's postinstall only copies it into
# place: package.json allows that one script), so nothing is downloaded when the tests run.
agent-clis: $(AGENT_CLIS)
$(AGENT_CLIS): tests/clients/node/package.json tests/clients/node/package-lock.json
	@mkdir -p $(NODE_DIR)
	cp tests/clients/node/package.json tests/clients/node/package-lock.json $(NODE_DIR)/
	npm ci --prefix $(NODE_DIR) --no-audit --no-fund --loglevel=error
	@touch $@

clean:
	rm -rf $(VENV) $(NODE_DIR) .pytest_cache .mypy_cache .ruff_cache artifacts
