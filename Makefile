# Dowse: `make run` serves everything with a demo corpus; `make test` runs lint + the test suite.
# Both install what they need into .venv on a fresh machine (torch first: pip takes the CPU wheel on disk).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR ?= ./data
DEMO_CORPUS ?= ../shared/data/scifact/corpus.jsonl
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: venv run test lint fmt bench unit integration clean

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,export,ray]'
	touch $@

run: venv
	$(VENV)/bin/dowse models export minilm
	$(VENV)/bin/dowse serve --data-dir $(DATA_DIR) --port $(PORT) --demo-corpus $(DEMO_CORPUS)

lint: venv
	$(VENV)/bin/ruff check embedder indexer gateway services client tests bench
	$(VENV)/bin/ruff format --check embedder indexer gateway services client tests bench
	$(VENV)/bin/mypy

fmt: venv
	$(VENV)/bin/ruff check --fix embedder indexer gateway services client tests bench
	$(VENV)/bin/ruff format embedder indexer gateway services client tests bench

test: venv lint
	scripts/ensure_redis.sh
	scripts/ensure_chromium.sh
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

unit: venv
	$(PY) -m pytest -q tests/unit

bench: venv
	$(PY) bench/embed.py
	$(PY) bench/index.py
	$(PY) bench/search.py
	$(PY) bench/cache.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
