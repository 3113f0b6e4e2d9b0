# Sounding — `make help` lists the targets. `make run` and `make test` create .venv when it is missing.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MLFLOW_URI ?= sqlite:///mlflow.db
UI_PORT ?= 5000
# `make mlflow-server`: a database that exists (createdb mlflow), and the folder the server keeps artifacts in.
MLFLOW_BACKEND_URI ?= postgresql://postgres@127.0.0.1:5432/mlflow
MLFLOW_ARTIFACTS_DESTINATION ?= ./mlartifacts
SERVER_PORT ?= 5000
PREFECT_PORT ?= 4200
CRON ?= 0 3 * * *
export PATH := $(abspath $(BIN)):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

UV := uv==0.13.9
# Some pip configurations print one line per missing local index; keep the log readable.
PIP_QUIET := { grep -v 'is ignored: it is neither' || true; }

# torch through pip, whose configuration may point at a local CPU wheel (uv reads none of it); then the
# pinned rest through uv, .pyc compiled as pip would: about 50 s where pip alone took about 3 minutes
# (docs/development.md).
$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing into $(VENV) (torch 2.13.0 CPU first; about a minute on a fresh machine)"
	@$(BIN)/pip install -q --disable-pip-version-check '$(UV)' torch==2.13.0 2>&1 | $(PIP_QUIET)
	@$(BIN)/uv pip install -q --python $(BIN)/python --compile-bytecode -r requirements.lock -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP) ## Create or update the virtual environment

lock: ## Re-pin requirements.lock to what pip resolves from pyproject.toml (after changing a dependency)
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | $(PIP_QUIET)
	{ sed -n 1,2p requirements.lock; .venv-lock/bin/pip freeze --exclude-editable | grep -v '^torch=='; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .venv-lock

# The stages of dvc.yaml that DVC finds stale, run through DVC by the Prefect flow (Prefect's ephemeral
# mode: no server to start), independent stages side by side: what `dvc repro` would run and record, with
# both cores busy (docs/benchmarks.md, figure 9). `sounding repro` is plain `dvc repro`, one stage at a time.
run: $(STAMP) ## Reproduce the whole pipeline from params.yaml (sounding retrain: dvc.yaml's stages, through DVC)
	sounding retrain

# One pytest worker per core, both tiers in one session (no tier waits for the other's last test). Whole
# files go to workers (--dist loadfile): a module's end-to-end fixture (one `dvc repro`) is built once,
# not once per worker; tests/conftest.py starts the slow tier's files first, and --no-loadscope-reorder
# keeps that order (xdist would start the files with the most tests first: the long end-to-end files,
# which hold few tests each, then ran last, one worker waiting for the other).
TEST_WORKERS ?= auto

test: $(STAMP) ## Run the whole test suite: the fast tier and the slow end-to-end tier, in one session
	$(BIN)/pytest -q -m "slow or not slow" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-fast: $(STAMP) ## Run the fast tier only
	$(BIN)/pytest -q -n $(TEST_WORKERS)

bench: $(STAMP) ## Run every benchmark (about 45 minutes) and write benchmarks/results.md
	$(BIN)/python -m benchmarks

lint: $(STAMP) ## Ruff lint and format check
	$(BIN)/ruff check src tests benchmarks pipelines
	$(BIN)/ruff format --check src tests benchmarks pipelines

ui: $(STAMP) ## MLflow UI on 127.0.0.1 (UI_PORT=5000) over the project's tracking store
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri $(MLFLOW_URI) \
		--host 127.0.0.1 --port $(UI_PORT) --workers 1

mlflow-server: $(STAMP) ## MLflow server on 127.0.0.1 (SERVER_PORT=5000): PostgreSQL store, proxied artifacts; see docs/cluster.md
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow server --backend-store-uri $(MLFLOW_BACKEND_URI) \
		--artifacts-destination $(MLFLOW_ARTIFACTS_DESTINATION) --serve-artifacts \
		--host 127.0.0.1 --port $(SERVER_PORT) --workers 2

scheduler: $(STAMP) ## Prefect server on 127.0.0.1 (PREFECT_PORT=4200) serving the retraining flow (CRON="0 3 * * *")
	$(BIN)/python -m pipelines.server --port $(PREFECT_PORT) -- $(BIN)/sounding schedule --cron "$(CRON)"

clean: ## Remove caches and resume checkpoints (never DVC-tracked data, models or the MLflow store)
	rm -rf checkpoints .pytest_cache .ruff_cache .hypothesis benchmarks/out
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

.PHONY: help venv lock run test test-fast bench lint ui mlflow-server scheduler clean
