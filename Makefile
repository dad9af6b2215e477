# Every target works from a fresh clone: `make setup` builds .venv from the lock file and the admin
# page (client/) with npm, and makes sure Chromium is there for the page's end-to-end test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Tools the tests call by name (e.g. the Compose v2 CLI from the dev extras) come from the venv.
export PATH := $(CURDIR)/$(BIN):$(PATH)

# The admin page: `npm ci`, then `npm run build` exports it into client/out/, which the gateway serves
# (BACKUP_ADMIN_PAGE_DIR). Each step runs again only when what it reads changed: the lock file for
# npm ci; the sources, static files and configuration for the build.
CLIENT := client
NPM_STAMP := $(CLIENT)/node_modules/.installed
PAGE_STAMP := $(CLIENT)/out/.built
PAGE_HTML := $(CLIENT)/out/admin/backup-recovery.html
CLIENT_SOURCES := $(shell find $(CLIENT)/src $(CLIENT)/public -type f 2>/dev/null) \
	$(wildcard $(CLIENT)/package.json $(CLIENT)/tsconfig.json $(CLIENT)/next.config.* $(CLIENT)/*.d.ts)
NODE_MINIMUM := 20.19
export NEXT_TELEMETRY_DISABLED := 1
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1
# The browser the page's end-to-end test drives (playwright-core, Debian's chromium).
export CHROMIUM_PATH ?= /usr/bin/chromium

# Fails, saying what to install, unless node (NODE_MINIMUM or newer) and npm are on the PATH.
REQUIRE_NODE = command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
	&& node -e 'const [a, b] = process.versions.node.split(".").map(Number), [x, y] = "$(NODE_MINIMUM)".split(".").map(Number); process.exit(a > x || (a === x && b >= y) ? 0 : 1)' \
	|| { echo "The admin page (client/) is built with Node.js $(NODE_MINIMUM) or newer and npm; found: $$(node --version 2>/dev/null || echo no node), $$(npm --version 2>/dev/null || echo no npm). Install Node.js 20 (or newer) with npm: a distribution package where it is that recent, or NodeSource or nodejs.org; then run make again." >&2; exit 1; }

.PHONY: setup page chromium run test lint unit integration e2e schemas lock bench clean

setup: $(STAMP) page chromium

page: $(PAGE_STAMP)

$(NPM_STAMP): $(CLIENT)/package.json $(CLIENT)/package-lock.json
	@$(REQUIRE_NODE)
	cd $(CLIENT) && npm ci --no-audit --no-fund
	touch $@

$(PAGE_STAMP): $(NPM_STAMP) $(CLIENT_SOURCES)
	@$(REQUIRE_NODE)
	cd $(CLIENT) && npm run build
	@test -f $(PAGE_HTML) || { echo "npm run build left no $(PAGE_HTML)" >&2; exit 1; }
	touch $@

# Debian's chromium, installed with apt when missing and we may (root, apt-get); otherwise says what
# to install: only the page's end-to-end test needs it, which fails saying so.
chromium:
	@if [ -x "$(CHROMIUM_PATH)" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the admin page's end-to-end test"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "note: the admin page's end-to-end test needs Chromium at $(CHROMIUM_PATH):" \
			"install Debian's chromium (apt-get install chromium) or set CHROMIUM_PATH" >&2; \
	fi

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
# unknown to backup_common, and MySQL/AMQP/HTTP/S3 libraries kept out of domain, engine and handlers.
# `npm run lint` in client/: tsc --noEmit, and src/lib/api-types.ts checked against client/openapi.json.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo
	cd $(CLIENT) && npm run lint

unit: setup
	$(BIN)/pytest tests/unit

integration: setup
	$(BIN)/pytest tests/integration

e2e: setup
	$(BIN)/pytest tests/e2e

# The page's component tests (Vitest), then pytest: unit, integration and end-to-end, the last of
# which drives the page in Chromium (tests/e2e/test_admin_page.py).
test: lint
	cd $(CLIENT) && npm test
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
	$(BIN)/python -m bench.offsite $(BENCH_OFFSITE_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
	rm -rf $(CLIENT)/node_modules $(CLIENT)/out $(CLIENT)/.next
