# Two commands for a fresh machine: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
APP_MODULES := main.py config.py database.py models.py schemas.py crud.py security.py errors.py \
	middleware.py deps.py pagination.py logging_setup.py manage.py routes

.PHONY: run test lint format migrate install dev clean

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

install: $(VENV)/.installed
dev: $(VENV)/.dev-installed

migrate: install  ## create or upgrade the schema of DATABASE_URL
	$(BIN)/python manage.py migrate

run: migrate  ## serve on http://$(HOST):$(PORT) (docs at /docs)
	$(BIN)/uvicorn main:app --host $(HOST) --port $(PORT) --no-access-log

lint: dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint  ## the whole suite; PostgreSQL/Redis cases run when TEST_DATABASE_URL/TEST_REDIS_URL are set
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
