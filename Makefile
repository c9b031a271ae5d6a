# make train ARGS="scheduler.gamma=0.5"   install into .venv (first time) and train
# make test                               install into .venv (first time), lint and run the fast tests
# make test-all                           the same with the slow tier too (real servers, workers): what CI runs
# make sweep ARGS="hydra.sweeper.n_trials=8"  an Optuna sweep over StepLR's step_size and gamma
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

train: install
	$(PY) -m src.train $(ARGS)

sweep: install
	$(PY) -m src.train --multirun hparams_search=steplr_optuna $(ARGS)

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -q -m "not slow"

test-all: install
	$(PY) -m ruff check .
	$(PY) -m pytest -q

.PHONY: install train sweep test test-all
