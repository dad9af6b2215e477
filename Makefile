# Every target works from a fresh clone: `make setup` builds .venv from the lock file.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Tools the tests call by name (e.g. the Compose v2 CLI from the dev extras) come from the venv.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup run test lint unit integration e2e schemas lock bench clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

run: setup
	$(BIN)/backupctl run

# lint-imports checks the import contracts in pyproject.toml's [tool.importlinter]: the layers of
# backup_common (cli -> adapters -> engine -> domain), services independent of each other and
# unknown to backup_common, and MySQL/AMQP/HTTP libraries kept out of domain, engine and handlers.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo

unit: setup
	$(BIN)/pytest tests/unit

integration: setup
	$(BIN)/pytest tests/integration

e2e: setup
	$(BIN)/pytest tests/e2e

test: lint
	$(BIN)/pytest

# Regenerates infra/schemas/ from the event models, infra/rabbitmq/topology.json from the services'
# handler tables and client/openapi.json from the gateway's routes (unit tests fail while any drifts).
schemas: setup
	$(BIN)/backupctl export-schemas infra/schemas
	$(BIN)/python -m tools.topology
	$(BIN)/python -m tools.openapi

# Re-resolves requirements.lock after a dependency change in pyproject.toml.
lock:
	$(PYTHON) -m pip install --quiet uv
	$(PYTHON) -m uv pip compile pyproject.toml --extra dev --python-version 3.11 --generate-hashes -o requirements.lock

# Generates about 530 MiB of SQL once (reused afterwards), then times our database backup and load
# against mariadb-dump | gzip -6, mydumper and myloader on the same data. Needs root (apt, page cache).
bench: setup
	bash bench/setup.sh
	$(BIN)/python -m bench.database $(BENCH_ARGS)
	$(BIN)/python -m bench.files $(BENCH_FILES_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
