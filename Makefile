# Two commands on a fresh machine: `make run` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: run test install install-dev lint typecheck pytest bench clean

run: $(VENV)/.installed-run
	$(BIN)/gateway serve

test: $(VENV)/.installed-dev lint typecheck pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check gateway tests

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

pytest: $(VENV)/.installed-dev
	$(BIN)/pytest

bench: $(VENV)/.installed-run
	@mkdir -p artifacts
	$(BIN)/gateway bench --json artifacts/bench.json

install: $(VENV)/.installed-run
install-dev: $(VENV)/.installed-dev

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --progress-bar on --upgrade pip

# The local extra compiles llama-cpp-python the first time (~6-8 min); pip reuses the wheel afterwards.
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(PIP) install --progress-bar on -e '.[local]'
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(PIP) install --progress-bar on -e '.[local,dev]'
	@touch $@ $(VENV)/.installed-run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache artifacts
