# The two commands the README opens with:  make up  (run everything)  and  make test.
# Both create ./.venv from the project's own files on first use; nothing else is needed but
# Python 3.11+.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: up test lint typecheck compose-check unit bench install clean

$(BIN)/crmcache: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/crmcache

## Run the whole stack (embedded Redis unless REDIS_URL is set); Ctrl-C stops everything.
up: install
	$(BIN)/crmcache up

## Lint, type-check, validate docker-compose.yml, run every test (the slow chaos runs too).
test: lint typecheck compose-check unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

compose-check: install
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
	@if docker compose version >/dev/null 2>&1; then docker compose config --quiet; \
	else echo "compose-check: no docker compose CLI here; checked against the Compose Specification schema only"; fi

unit: install
	$(BIN)/pytest

## Benchmarks: measured figures printed side by side with their baselines (not tests).
BENCHES := pipeline_bench read_bench api_bench fairness_bench scale_bench tenants_bench tenants_reader_bench
bench: install
	@for b in $(BENCHES); do echo "== benchmarks.$$b"; $(BIN)/python -m benchmarks.$$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
