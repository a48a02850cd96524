# Thin wrappers over the `lab` command. Every target sets up .venv on first use.
PY       ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
ABLATION ?= loops
WORKERS  ?=
ARGS     ?=
CONFIG   ?=
HOST     ?= 127.0.0.1
PORT     ?=
STUDY    ?=
FORMAT   ?= csv
SETTING  ?=
SEED     ?=
ABLATIONS ?=

.DEFAULT_GOAL := help
.PHONY: help setup test test-all lint smoke sweep report export rerun compare train check bench \
        tensorboard dashboard clean clean-studies

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} \
		{ name[NR] = $$1; doc[NR] = $$2; if (length($$1) > w) w = length($$1) } \
		END { for (i = 1; i <= NR; i++) printf "  make %-" w "s  %s\n", name[i], doc[i] }'
	@echo "  variables: ABLATION=$(ABLATION) WORKERS=<n> ARGS=\"key=value ...\" CONFIG=<yaml>"
	@echo "             STUDY=<runs/ subfolder> FORMAT=csv|json|parquet SETTING=\"<label>\" SEED=<n> ABLATIONS=\"a b\""
	@echo "             HOST=127.0.0.1 PORT=<n> (tensorboard: 6006, dashboard: 8080)"

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,dashboard]'
	@touch $(STAMP)

setup: $(STAMP) ## create .venv and install the lab (editable) with test tools and optuna-dashboard

test: $(STAMP) ## fast test suite (slow end-to-end tests excluded)
	$(BIN)/pytest -q

test-all: $(STAMP) ## every test, the slow end-to-end ones included
	$(BIN)/pytest -q -m ''

lint: $(STAMP) ## ruff
	$(BIN)/ruff check lab tests

train: $(STAMP) ## train one run: make train CONFIG=configs/looped.yaml ARGS="model.loops=4"
	$(BIN)/lab train $(if $(CONFIG),--config $(CONFIG)) $(ARGS)

smoke: $(STAMP) ## tiny loops study (< 2 min) and its report
	$(BIN)/lab sweep ablations/smoke.yaml $(if $(WORKERS),--workers $(WORKERS)) $(ARGS)

sweep: $(STAMP) ## run an ablation and write its report: make sweep ABLATION=widths WORKERS=2
	$(BIN)/lab sweep ablations/$(ABLATION).yaml $(if $(WORKERS),--workers $(WORKERS)) $(ARGS)

report: $(STAMP) ## rewrite reports/<study>/report.md and report.html from the study storage
	$(BIN)/lab report ablations/$(ABLATION).yaml $(ARGS)

export: $(STAMP) ## one row per trial: make export ABLATION=loops FORMAT=csv (reports/<study>/trials.csv)
	$(BIN)/lab export ablations/$(ABLATION).yaml --format $(FORMAT) $(ARGS)

rerun: $(STAMP) ## retrain one trial into runs/: make rerun ABLATION=loops SETTING="looped, loops=3" SEED=1
	$(BIN)/lab rerun ablations/$(ABLATION).yaml "$(SETTING)" $(if $(SEED),seed=$(SEED)) $(ARGS)

compare: $(STAMP) ## one table and figure across studies: make compare ABLATIONS="loops depth"
	$(BIN)/lab compare $(foreach a,$(ABLATIONS),ablations/$(a).yaml) $(ARGS)

check: $(STAMP) ## build every config and ablation setting, one forward pass each
	$(BIN)/lab check

bench: $(STAMP) ## measure harness overhead and utilisation; writes reports/bench/report.md
	$(BIN)/lab bench $(ARGS)

tensorboard: $(STAMP) ## TensorBoard on runs/ (or runs/STUDY with STUDY=...), bound to 127.0.0.1
	$(BIN)/tensorboard --logdir runs$(if $(STUDY),/$(STUDY)) --host $(HOST) --port $(or $(PORT),6006)

dashboard: $(STAMP) ## optuna-dashboard on the study's own storage: make dashboard ABLATION=loops ARGS="..."
	$(BIN)/lab dashboard ablations/$(ABLATION).yaml --host $(HOST) --port $(or $(PORT),8080) $(ARGS)

clean: ## remove runs/ and caches (keeps studies/ and reports/)
	rm -rf runs .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +

clean-studies: ## delete studies/ (the Optuna storages); reports are rebuilt from their study.jsonl
	@echo "deleting studies/ (the Optuna storages: $$(ls studies 2>/dev/null | grep -c '\.db$$') SQLite studies); reports/ and their study.jsonl are kept"
	rm -rf studies
