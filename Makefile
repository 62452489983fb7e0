# Two commands do all set-up on a fresh machine with python3 and make:
#   make run    create .venv, install mixvae, train configs/quick.yaml on the bundled digits data
#   make test   create .venv, install mixvae with the dev extras, run every test
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
export JAX_PLATFORMS ?= cpu
# No bytecode is written beside the sources: after `make test` the repository holds no new file besides
# .venv (CI checks `git status --ignored`). The installed packages' bytecode, compiled by pip, is still read.
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run test bench quality install dev clean ui-check

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(DEV_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP)
dev: $(DEV_STAMP)

run: $(STAMP)
	$(BIN)/mixvae train --config configs/quick.yaml

test: $(DEV_STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q -rs --durations=15

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

# Quality over seeds next to baselines on the same splits; rewrites the presets' sections of docs/results.md
# (about 25 minutes on 2 cores).
quality: $(STAMP)
	$(BIN)/python bench/quality.py quick decentralized tau_semisupervised curriculum vamp geometric mnist5k --seeds 0-4

# MLflow's UI in headless chromium (Debian: apt-get install chromium): a sweep's parent and children and a
# run's REPORT.html; about two minutes. Screenshots go to a new temporary directory (or UI_CHECK_OUT).
ui-check: $(STAMP)
	$(BIN)/python scripts/ui_check.py $(if $(UI_CHECK_OUT),--out $(UI_CHECK_OUT))

clean:
	rm -rf $(VENV) reports .mixvae mlruns mlflow.db
