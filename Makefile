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

.DEFAULT_GOAL := help
.PHONY: help setup test test-all lint smoke sweep report train check bench tensorboard dashboard clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  variables: ABLATION=$(ABLATION) WORKERS=<n> ARGS=\"key=value ...\" CONFIG=<yaml>"

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP) ## create .venv and install the lab (editable) with test tools

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

report: $(STAMP) ## rewrite reports/$(ABLATION)/report.md from the study storage
	$(BIN)/lab report ablations/$(ABLATION).yaml $(ARGS)

check: $(STAMP) ## build every config and ablation setting, one forward pass each
	$(BIN)/lab check

bench: $(STAMP) ## measure harness overhead and utilisation; writes reports/bench/report.md
	$(BIN)/lab bench $(ARGS)

tensorboard: $(STAMP) ## TensorBoard on runs/ (bound to 127.0.0.1)
	$(BIN)/tensorboard --logdir runs --host $(HOST)

dashboard: $(STAMP) ## optuna-dashboard on the study storage (127.0.0.1:8080)
	@$(BIN)/python -c "import optuna_dashboard" 2>/dev/null || $(BIN)/pip install -q optuna-dashboard
	$(BIN)/optuna-dashboard sqlite:///studies/$(ABLATION).db --host $(HOST)

clean: ## remove runs/, studies/ and caches (never reports/)
	rm -rf runs studies .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
