# saga-operator: every entry point a person or CI uses. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

.PHONY: venv
venv: $(STAMP) ## create .venv with the project and its dev tools

.PHONY: up
up: $(STAMP) ## start the local stack (etcd, kube-apiserver, Kafka) in the background; writes .stack/env
	$(PY) -m saga_localstack up

.PHONY: down
down: $(STAMP) ## stop the local stack
	$(PY) -m saga_localstack down

.PHONY: test
test: $(STAMP) ## run the whole test suite against the real local stack (started if needed)
	$(PY) -m pytest

.PHONY: lint
lint: $(STAMP) ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy operator protocol participants localstack
