# lit_caps: the commands users run. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Data root: ../shared/data when it is there (this project's machines and CI), else ./data.
LIT_CAPS_DATA ?= $(if $(wildcard ../shared/data/MNIST),$(abspath ../shared/data),$(abspath data))
export LIT_CAPS_DATA
export WANDB_SILENT ?= true
MODEL ?= capsnet
DATA ?= mnist
SEED ?= 0
ARGS ?=

.PHONY: help install test test-slow train train-paper-models clean-error bench reproduce-table4

help:
	@echo "make install            create $(VENV) and install lit_caps with its test dependencies"
	@echo "make test               the default test suite (CPU, ~10 min on 2 cores)"
	@echo "make test-slow          the slow tests too"
	@echo "make train MODEL=capsnet DATA=mnist [SEED=0] [ARGS='train.max_epochs=5']"
	@echo "make train-paper-models the three models on MNIST and Fashion-MNIST (default configs)"
	@echo "make reproduce-table4   clean test error of the trained models beside the paper's Table 4"
	@echo "make reproduce-table1 [SCALE=quick|paper|smoke] [DATA=mnist]   FGSM/BIM/PGD/CW (Table 1/5) -> reports/"
	@echo "make reproduce-table6-beta [SCALE=...] [DATA=...]             R-PGD over beta (Fig. 9, Table 3/6) -> reports/"
	@echo "make reproduce-table7 [SCALE=...]     black-box PGD/R-PGD from a seed-1 substitute (Table 7) -> reports/"
	@echo "make bench              training/forward throughput of each model and config, attack throughput"
	@echo "data root: LIT_CAPS_DATA=$(LIT_CAPS_DATA)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e '.[dev]'
	# torchattacks is only a test reference (PGD agreement); its pins would downgrade requests/urllib3
	$(PY) -m pip install --no-deps torchattacks==3.5.1
	@# pip check must be clean except for torchattacks' own (deliberately unmet) requests pin
	@out=$$($(PY) -m pip check || true); bad=$$(echo "$$out" | grep -v '^torchattacks .* requires\|^torchattacks .* has requirement' | grep -v '^No broken' || true); \
	  if [ -n "$$bad" ]; then echo "$$bad"; exit 1; else echo "pip check: clean (except torchattacks' requests pin)"; fi

install: $(PY)

test: $(PY)
	$(PY) -m pytest -q

test-slow: $(PY)
	$(PY) -m pytest -q -m "slow or not slow"

train: $(PY)
	$(VENV)/bin/lit-caps fit --model $(MODEL) --data $(DATA) --seed $(SEED) $(ARGS)

train-paper-models: $(PY)
	for d in mnist fashion_mnist; do for m in capsnet cnn_cr cnn_r; do \
	  $(VENV)/bin/lit-caps fit --model $$m --data $$d --seed $(SEED) $(ARGS) || exit 1; done; done

reproduce-table4 clean-error: train-paper-models
	$(VENV)/bin/lit-caps report clean-error --runs runs --out reports

bench: $(PY)
	$(VENV)/bin/lit-caps bench $(ARGS)

# Attack tables (lit_caps/experiments.py): resumable; SCALE=smoke|quick|paper; ARGS='--only-report' rewrites
# the report from the result files that exist. The models come from `make train` / train-paper-models
# (table7 also needs SEED=1 runs: `make train MODEL=<m> SEED=1`).
SCALE ?= quick
.PHONY: reproduce-table1 reproduce-table6-beta reproduce-table7

reproduce-table1: $(PY)
	$(VENV)/bin/lit-caps reproduce table1 --data $(DATA) --scale $(SCALE) $(ARGS)

reproduce-table6-beta: $(PY)
	$(VENV)/bin/lit-caps reproduce rpgd-beta --data $(DATA) --scale $(SCALE) $(ARGS)

reproduce-table7: $(PY)
	$(VENV)/bin/lit-caps reproduce table7 --data $(DATA) --scale $(SCALE) $(ARGS)
