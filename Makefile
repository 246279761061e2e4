# The two commands of the README:  make run  (set up, then serve)   make test  (set up, then all checks)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
PG_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test

.PHONY: run test setup check pytest pytest-postgres example clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,keras]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)

run: setup  ## start Modelport on 127.0.0.1:8000 (SQLite + ./modelport-data)
	$(BIN)/modelport serve

check: setup  ## lint and type-check
	$(BIN)/ruff format --check src tests examples bench
	$(BIN)/ruff check src tests examples bench
	$(BIN)/mypy

pytest: setup
	$(BIN)/python -m pytest

pytest-postgres: setup  ## the registry and API tests again, against PostgreSQL
	MODELPORT_TEST_DATABASE_URL=$(PG_URL) $(BIN)/python -m pytest tests/integration

test: check pytest  ## everything CI runs on SQLite

example: setup  ## train the quickstart model (examples/out/mnist-mlp.onnx)
	$(BIN)/python examples/train_mnist.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
