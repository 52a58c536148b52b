# Two commands for a fresh machine: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# Every start command passes these (Procfile, docker/start.sh, tests, bench; a test checks): the
# app alone decides the client address (FORWARDED_ALLOW_IPS), no `server` header, and uvicorn's
# HTTP protocol with a cap and a deadline on request heads (http_protocol.py).
SERVER_FLAGS := --no-proxy-headers --no-server-header --http http_protocol:BoundedHttpToolsProtocol
APP_MODULES := main.py edge.py request_id.py body_limit.py hosts.py offline_docs.py openapi_document.py rendering.py feeds.py security_headers.py config.py database.py models.py schemas.py crud.py security.py errors.py \
	deps.py pagination.py logging_setup.py manage.py ratelimit.py observability.py access_log.py shutdown.py routes \
	proxies.py http_protocol.py idempotency.py socket_limits.py route_table.py process_memory.py post_json.py rate_leases.py

.PHONY: run test lint format migrate install dev clean docs-assets

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed (set PYTHON=python3.x)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	@touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	@touch $@ $(VENV)/.installed

$(VENV)/.load-installed: requirements.txt requirements-dev.txt requirements-load.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-load.txt
	@touch $@ $(VENV)/.dev-installed $(VENV)/.installed

install: $(VENV)/.installed
dev: $(VENV)/.dev-installed

migrate: install  ## create or upgrade the schema of DATABASE_URL
	$(BIN)/python manage.py migrate

run: migrate  ## serve on http://$(HOST):$(PORT) (docs at /docs)
	$(BIN)/uvicorn main:app --host $(HOST) --port $(PORT) --ws-max-size 65536 --no-access-log \
		$(SERVER_FLAGS)

lint: dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint  ## the whole suite; PostgreSQL/Redis cases run when TEST_DATABASE_URL/TEST_REDIS_URL are set
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The Swagger UI and ReDoc files that /docs and /redoc serve (static/docs/README.md).
SWAGGER_UI_VERSION := 5.35.0
REDOC_VERSION := 2.5.4
DOCS_ASSETS := static/docs

docs-assets:  ## re-fetch the vendored docs assets from the npm registry (needs npm)
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	(cd "$$tmp" && npm pack --silent swagger-ui-dist@$(SWAGGER_UI_VERSION) redoc@$(REDOC_VERSION) >/dev/null \
		&& mkdir swagger redoc \
		&& tar -xzf swagger-ui-dist-$(SWAGGER_UI_VERSION).tgz -C swagger \
		&& tar -xzf redoc-$(REDOC_VERSION).tgz -C redoc); \
	for f in swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css favicon-32x32.png; do \
		cp "$$tmp/swagger/package/$$f" $(DOCS_ASSETS)/; done; \
	cp "$$tmp/swagger/package/LICENSE" $(DOCS_ASSETS)/LICENSE.swagger-ui; \
	cp "$$tmp/swagger/package/NOTICE" $(DOCS_ASSETS)/NOTICE.swagger-ui; \
	for f in redoc.standalone.js redoc.standalone.js.LICENSE.txt; do \
		cp "$$tmp/redoc/package/bundles/$$f" $(DOCS_ASSETS)/; done; \
	cp "$$tmp/redoc/package/LICENSE" $(DOCS_ASSETS)/LICENSE.redoc; \
	cd $(DOCS_ASSETS) && sha256sum swagger-ui-bundle.js swagger-ui.css favicon-32x32.png \
		redoc.standalone.js > SHA256SUMS; \
	echo "$(DOCS_ASSETS): swagger-ui-dist $(SWAGGER_UI_VERSION), redoc $(REDOC_VERSION);" \
		"update the versions in $(DOCS_ASSETS)/README.md if they changed"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Performance: the service beside a bare FastAPI floor and a Starlette ceiling (bench/run.py);
# the targets are ratios to the floor. Needs the local PostgreSQL and Redis, wrk and hey
# (Debian packages, installed with apt-get when missing and root).
.PHONY: bench bench-quick bench-pgbouncer profile soak
BENCH_ARGS ?=
PROFILE_ARGS ?=
SOAK_ARGS ?=
# Debian's nginx and pgbouncer, run as private loopback processes (RUNLEVEL=1: their system
# services are not started by the install).
INSTALL_LOOPBACK_TOOLS = for program in nginx pgbouncer; do \
		command -v $$program >/dev/null 2>&1 || [ -x /usr/sbin/$$program ] || missing="$$missing $$program"; \
	done; \
	if [ -n "$$missing" ]; then apt-get update -qq && RUNLEVEL=1 apt-get install -y -qq $$missing >/dev/null; fi

bench: install loopback-tools  ## ~10 s per run; (re)seeds blog_bench when needed; BENCH_ARGS=--reseed
	$(BIN)/python bench/run.py --duration 10 $(BENCH_ARGS)
	$(MAKE) --no-print-directory bench-pgbouncer

# What DATABASE_POOLER=pgbouncer costs: the service through PgBouncer in transaction mode on the
# workloads that are a round trip or two (the rest cost the same on top of these).
bench-pgbouncer: install loopback-tools
	$(BIN)/python bench/run.py --duration 10 --pgbouncer --only by_id_off,first_page,create $(BENCH_ARGS)

.PHONY: loopback-tools
loopback-tools:
	@$(INSTALL_LOOPBACK_TOOLS)

bench-quick: install  ## the regression check: the same workloads at ~3 s per run
	$(BIN)/python bench/run.py --duration 3 $(BENCH_ARGS)

# Where the CPU of one request goes, layer by layer (bench/layers.py): in-process, each layer
# switched off in turn, then a cProfile split by module. Same database and Redis db as bench.
profile: install  ## ~5 minutes; PROFILE_ARGS="--only by_id_off --rounds 1" for a quick look
	$(BIN)/python bench/layers.py $(PROFILE_ARGS)

# Soak: 5 minutes of mixed HTTP + WebSocket traffic against two workers on a scratch PostgreSQL
# database and Redis db 6 (bench/soak.py); the load is Locust's (bench/locustfile.py).
soak: $(VENV)/.load-installed  ## exit 1 on any 5xx or RSS growth >= 10 %; SOAK_ARGS="--duration 20" for a quick check
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

# Several machines on loopback (tests/test_scale.py): PostgreSQL behind PgBouncer (transaction
# mode), Redis, two instances of two workers behind nginx (deploy/nginx.conf); the cross-instance
# guarantees, then a rolling restart under load with its figures. Uses TEST_DATABASE_URL (its
# schema is reset) and TEST_REDIS_URL (flushed), like `make test`; nginx and pgbouncer run as
# private processes, installed with apt-get when missing.
.PHONY: scale-test
scale-test: $(VENV)/.load-installed loopback-tools  ## about 2 minutes; the load is Locust
	SCALE_TEST=1 $(BIN)/python -m pytest tests/test_scale.py -s -q -p no:logging $(PYTEST_ARGS)

# Schemathesis with every check against a real server on a free loopback port and a throw-away
# SQLite database, anonymous and signed in (scripts/fuzz.sh); bounded to ~5 minutes.
.PHONY: fuzz
fuzz: dev  ## FUZZ_MAX_EXAMPLES (default 100) per operation, FUZZ_MAX_TIME (default 150) s per pass
	BIN=$(BIN) scripts/fuzz.sh
