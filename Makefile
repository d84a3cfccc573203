# asof: the two commands are `make demo` and `make test`; everything else is here for them.
SHELL := /bin/bash
VENV  := .venv
BIN   := $(VENV)/bin
UV    := $(shell command -v uv 2>/dev/null || echo $(BIN)/uv)
DEMO_HOME ?= $(CURDIR)/data
DEMO_START ?= 2024-01-01
DEMO_END   ?= 2024-01-30
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/$(VENV)

.PHONY: setup demo test test-fast lint format bench serve redis clean

# The Prefect database template (flows/orchestration/prefect_db.py): Prefect's migrations run once
# per Prefect version into ~/.cache/asof/prefect, so a new home's server starts ~12 s sooner.
setup: $(VENV)/.installed
	@$(BIN)/python -m compileall -q -j 0 flows feature_repo bench tests
	@$(BIN)/python -m flows.orchestration.prefect_db

# Works on a machine with only python3 + pip: uv is installed into the venv when missing.
# --compile-bytecode: these machines set PYTHONDONTWRITEBYTECODE=1, so without .pyc files written at
# install every process compiled GE, Feast, dbt and Prefect from source again (8 of a dbt
# invocation's 24 s went to `compile`; `import great_expectations` 29 s -> 9 s on a busy machine).
# The project's own packages are compiled on every `make setup` (only changed files are rewritten).
$(VENV)/.installed: pyproject.toml uv.lock Makefile
	@test -x $(BIN)/python || python3 -m venv $(VENV)
	@command -v uv >/dev/null 2>&1 || test -x $(BIN)/uv || $(BIN)/pip install -q uv
	$(UV) sync --frozen --compile-bytecode --python $(BIN)/python
	@touch $@

demo: setup
	@mkdir -p $(DEMO_HOME)
	ASOF_HOME=$(DEMO_HOME) $(BIN)/asof generate --start $(DEMO_START) --end $(DEMO_END) --scale demo --seed 42
	ASOF_HOME=$(DEMO_HOME) $(BIN)/asof backfill --start $(DEMO_START) --end $(DEMO_END)
	@ASOF_HOME=$(DEMO_HOME) $(BIN)/python -m flows.cli.summary --start $(DEMO_START) --end $(DEMO_END)

# Two pytest workers (pytest-xdist), a test file per worker: the suite waits on subprocesses and
# servers as much as it computes, so 2 workers on 2 cores take ~8 min instead of ~13.
PYTEST_WORKERS ?= 2
test: setup
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadfile

test-fast: setup
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadfile -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python -m bench.run

# Redis for the online store, bound to 127.0.0.1 (see docs/feature-store.md).
redis:
	redis-server --bind 127.0.0.1 --port $${ASOF_REDIS_PORT:-6379} --save "" --appendonly no

clean:
	rm -rf $(DEMO_HOME) .pytest_cache .ruff_cache .hypothesis dbt_project/target dbt_project/logs
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Prefect server (127.0.0.1:$ASOF_PREFECT_PORT, default 4200) + work pool + deployments + worker, and the
# Data Docs / monitoring report on 127.0.0.1:$ASOF_DOCS_PORT (default 4201), in the foreground; Ctrl-C
# stops all. See docs/deployments.md.
serve: setup
	ASOF_HOME=$${ASOF_HOME:-$(DEMO_HOME)} $(BIN)/python -m flows.orchestration.local_server
