# The two commands the README opens with:  make up  (run everything)  and  make test.
# Both create ./.venv from the project's own files on first use; nothing else is needed but
# Python 3.11+. Every install takes its versions from constraints.txt (make lock refreshes it),
# so a fresh machine, CI and the Docker image run what the tests ran.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: up demo shell test lint typecheck compose-check unit bench install lock clean

$(BIN)/crmcache: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

install: $(BIN)/crmcache

## Run the whole stack (embedded Redis unless REDIS_URL is set); Ctrl-C stops everything.
## Options go through ARGS:  make up ARGS="--demo"  (crmcache up --help lists them).
up: install
	$(BIN)/crmcache up $(ARGS)

## The stack with its scripted tour (a cost change, a suspended user, leads until credits run out).
demo: install
	$(BIN)/crmcache up --demo $(ARGS)

## A shell with .venv active, so that `crmcache ...` and `celery ...` work as the README writes them.
shell: install
	@echo "crmcache shell: $(abspath $(VENV)) is active; exit to leave"
	@VIRTUAL_ENV="$(abspath $(VENV))" PATH="$(abspath $(BIN)):$$PATH" $${SHELL:-/bin/sh} -i

## Lint, type-check, validate docker-compose.yml, run every test (the slow chaos runs too).
test: lint typecheck compose-check unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

compose-check: install
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
	@if docker compose version >/dev/null 2>&1; then docker compose --env-file .env.example config --quiet; \
	else echo "compose-check: no docker compose CLI here; checked against the Compose Specification schema only"; fi

unit: install
	$(BIN)/pytest

## Benchmarks: measured figures printed side by side with their baselines (not tests).
BENCHES := pipeline_bench revocation_bench read_bench api_bench leads_bench fairness_bench scale_bench tenants_bench tenants_reader_bench parse_bench version_check_bench rss_bench
bench: install
	@for b in $(BENCHES); do echo "== benchmarks.$$b"; $(BIN)/python -m benchmarks.$$b || exit 1; done

## Refresh constraints.txt after a dependency changed in pyproject.toml: keeps every pin that
## still fits. LOCK_ARGS=--upgrade moves every package to its newest release (then make test).
lock: install
	$(BIN)/pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra test --python-version 3.11 --python-platform linux \
		--output-file constraints.txt --custom-compile-command "make lock" --quiet $(LOCK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
