# lit_caps: the commands users run. `make help` lists them.
SHELL := /bin/bash
comma := ,
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
	@echo "make test               the default test suite (CPU; slow tests excluded)"
	@echo "make test-slow          the slow tests too"
	@echo "make train MODEL=capsnet DATA=mnist [SEED=0] [ARGS='train.max_epochs=5']"
	@echo "make train-paper-models the three models on MNIST and Fashion-MNIST (default configs)"
	@echo "make reproduce-table4   clean test error of the trained models beside the paper's Table 4"
	@echo "make reproduce-table1 [SCALE=quick|paper|smoke] [DATA=mnist]   FGSM/BIM/PGD/CW (Table 1/5) -> reports/"
	@echo "make reproduce-table6-beta [SCALE=...] [DATA=...]             R-PGD over beta (Fig. 9, Table 3/6) -> reports/"
	@echo "make reproduce-table7 [SCALE=...]     black-box PGD/R-PGD from a seed-1 substitute (Table 7) -> reports/"
	@echo "make reproduce-table3 [SCALE=quick|paper|smoke] [DATASETS='mnist fashion_mnist svhn']  Table 3 (R-PGD worst case over beta)"
	@echo "make reproduce-table6 [SCALE=...] [DATASETS=...]   Table 6 (R-FGSM, R-BIM, R-PGD worst case over beta)"
	@echo "make reproduce-paper [WORKERS=2] [THREADS=1]  issue 18's paper-scale queue (Table 3, Table 1/5; MNIST, Fashion-MNIST), resumable"
	@echo "make reproduce-adaptive [SCALE=...] [ADAPTIVE_DATASETS='mnist fashion_mnist']  adaptive attacks + ensemble vs the detector"
	@echo "make sweep-agents GPUS=0,1 SWEEP=<wandb id | sweeps/<file>.yaml>   one W&B (or local) sweep agent per GPU"
	@echo "make reproduce-fig1 [SCALE=...] [DATA=mnist]  Fig. 1 distance histograms -> reports/figures/"
	@echo "make reproduce-table2 [SCALE=...]   corrupted MNIST (Table 2, Fig. 7/8)"
	@echo "make reproduce-fig3 [SCALE=...]     CIFAR-10 CapsNet variants vs R-PGD, white and black box (Fig. 3)"
	@echo "make reproduce-fig4 [SCALE=...]     class-pair success of targeted R-PGD on Fashion-MNIST (Fig. 4)"
	@echo "make reproduce-galleries [SCALE=...]  successful undetected R-PGD examples (Fig. 5/11, Fig. 10)"
	@echo "make reports            rewrite every committed report from the committed store (no compute)"
	@echo "make check-reports      the same, then fail if any committed report changed"
	@echo "make bench              training/forward throughput of each model and config, attack throughput"
	@echo "make gpu-check          on a GPU: train the MNIST models, paper-scale R-PGD cells, projections -> reports/bench_gpu.md"
	@echo "make training-check     the training fast path (compiled, bf16) against eager fp32, 5 epochs -> reports/"
	@echo "make fastpath-check     the attack fast path (bf16) against fp32: rates inside fp32's 95% CI? -> reports/"
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

# Table 4: the default models of MNIST and Fashion-MNIST (the committed model cards, else trained), then the report
reproduce-table4 clean-error: $(PY)
	$(VENV)/bin/lit-caps reproduce table4 --runs runs --reports reports $(ARGS)

# Every committed report, rewritten from the committed store (reports/models, reports/results): computes
# nothing (a missing result shows as pending). check-reports: the rewrite changes no committed file
# except the 'Report written ...' lines.
.PHONY: reports check-reports
reports: $(PY)
	$(VENV)/bin/lit-caps report clean-error --runs runs --out reports
	$(VENV)/bin/lit-caps reproduce table3 --scale quick --only-report --no-wandb
	$(VENV)/bin/lit-caps fastpath-check --only-report
	$(VENV)/bin/lit-caps fastpath-check --only-report --compile
	$(VENV)/bin/lit-caps fastpath-check --only-report --compile --data fashion_mnist --models capsnet
	$(VENV)/bin/lit-caps fastpath-check --only-report --paper-cell --steps 100
	$(VENV)/bin/lit-caps reproduce adaptive --scale quick --data mnist fashion_mnist --only-report --no-wandb
	$(VENV)/bin/lit-caps reproduce adaptive --scale paper --data mnist --only-report --no-wandb
	$(VENV)/bin/lit-caps reproduce fig3 --scale quick --only-report --no-wandb
	$(VENV)/bin/lit-caps report compute --out reports

check-reports: reports
	@git diff --exit-code -I '^Report written ' --stat -- reports/ && test -z "$$(git status --porcelain -- reports/ | grep '^??')" \
	  && echo "check-reports: every committed report was rewritten from the committed store unchanged"

# The attack fast path (bf16 autocast) against fp32 on the same images (N=500, 200 iterations, 3 MNIST models)
# (ARGS=--compile: the bf16 side through torch.compile'd forwards -> reports/fastpath_check_compiled.md)
.PHONY: fastpath-check
fastpath-check: $(PY)
	$(VENV)/bin/lit-caps fastpath-check $(ARGS)

# The GPU check (lit_caps/gpu_check.py): gpu-data packs MNIST into the ignored gpu_data/ (~11 MiB), which
# travels to a lent GPU machine; gpu-check runs the script here (on the device: python -m lit_caps.gpu_check
# --data gpu_data --out $$OUT). It writes reports/bench_gpu.md.
.PHONY: gpu-data gpu-check
gpu-data: $(PY)
	$(PY) -m lit_caps.gpu_check --pack $(LIT_CAPS_DATA) --data gpu_data

gpu-check: $(PY)
	@test -d gpu_data/MNIST || $(MAKE) gpu-data
	$(PY) -m lit_caps.gpu_check --data gpu_data --out reports $(ARGS)

# the training fast path (compiled fp32, compiled bf16) against eager fp32: 5 epochs x 2 seeds (~25 min on 2 cores)
.PHONY: training-check
training-check: $(PY)
	$(VENV)/bin/lit-caps training-check $(ARGS)

# BENCH_ARGS: the attack table includes the torch.compile rows (compilation is not timed, ~2 min)
BENCH_ARGS ?= --compile
bench: $(PY)
	$(VENV)/bin/lit-caps bench $(BENCH_ARGS) $(ARGS)

# The paper's tables and figures (lit_caps/experiments/, one module each; `lit-caps reproduce --help`): resumable; SCALE=smoke|quick|paper; ARGS='--only-report' rewrites
# the report from the result files that exist. The models come from `make train` / train-paper-models
# (table7 also needs SEED=1 runs: `make train MODEL=<m> SEED=1`).
SCALE ?= quick
DATASETS ?= mnist fashion_mnist svhn
.PHONY: reproduce-table1 reproduce-table3 reproduce-table6 reproduce-table6-beta reproduce-table7 sweep-agents

# Table 3 (the headline): trains or reuses the three models per dataset, R-PGD over the beta grid +
# refinement, worst case per cell -> reports/table3_<scale>.{md,csv} (reports/table3.* at SCALE=paper)
reproduce-table3: $(PY)
	$(VENV)/bin/lit-caps reproduce table3 --scale $(SCALE) --data $(DATASETS) $(ARGS)

reproduce-table6: $(PY)
	$(VENV)/bin/lit-caps reproduce table6 --scale $(SCALE) --data $(DATASETS) $(ARGS)

# Beyond the paper: R-PGD at Table 3's worst beta, Selective / Orthogonal PGD, APGD joint and their
# per-example ensemble against the detector -> reports/adaptive_<dataset>_<scale>.{md,csv}
ADAPTIVE_DATASETS ?= mnist fashion_mnist
.PHONY: reproduce-adaptive
reproduce-adaptive: $(PY)
	$(VENV)/bin/lit-caps reproduce adaptive --scale $(SCALE) --data $(ADAPTIVE_DATASETS) $(ARGS)

# One sweep agent per GPU. SWEEP = a W&B sweep id (entity/project/id from `wandb sweep sweeps/<f>.yaml`)
# or a sweep YAML file (no W&B server: local agents, each taking every k-th run of the YAML's list).
GPUS ?= 0
SWEEP ?=
sweep-agents: $(PY)
	@test -n "$(SWEEP)" || { echo "usage: make sweep-agents GPUS=0,1 SWEEP=<wandb sweep id | sweeps/<file>.yaml>"; exit 2; }
	@mkdir -p runs/logs; gpus="$(subst $(comma), ,$(GPUS))"; n=$$(echo $$gpus | wc -w); i=0; \
	for g in $$gpus; do \
	  log=runs/logs/sweep-agent-gpu$$g.log; \
	  if [ -f "$(SWEEP)" ]; then cmd="$(VENV)/bin/lit-caps sweep local $(SWEEP) --shard $$i/$$n"; \
	  else cmd="$(VENV)/bin/wandb agent $(SWEEP)"; fi; \
	  echo "GPU $$g: $$cmd  (log: $$log)"; \
	  PATH="$(abspath $(VENV))/bin:$$PATH" CUDA_VISIBLE_DEVICES=$$g $$cmd > $$log 2>&1 & i=$$((i+1)); \
	done; wait

# Issue 18's paper-scale queue, in order: Table 3 (MNIST, then Fashion-MNIST), then Table 1/5 (MNIST, then
# Fashion-MNIST), on the committed default models (never trained here). WORKERS processes run the same queue
# with THREADS torch threads each and share every cell through its chunk claims (a cell's chunks are dealt
# to whichever worker is free), so WORKERS = cores / THREADS keeps a CPU busy; every step is resumable.
# Logs: runs/logs/paper-worker<i>.log. Then `lit-caps store save` and commit (reports/ is rewritten as cells finish).
WORKERS ?= 2
THREADS ?= 1
PAPER_QUEUE ?= table3:mnist table3:fashion_mnist table1:mnist table1:fashion_mnist
.PHONY: reproduce-paper
reproduce-paper: $(PY)
	@mkdir -p runs/logs; pids=""; for i in $$(seq 1 $(WORKERS)); do \
	  log=runs/logs/paper-worker$$i.log; echo "worker $$i: $(PAPER_QUEUE)  (log: $$log)"; \
	  ( for step in $(PAPER_QUEUE); do exp=$${step%%:*}; ds=$${step#*:}; \
	      $(VENV)/bin/lit-caps reproduce $$exp --scale paper --data $$ds --models cnn_r cnn_cr capsnet --no-train \
	        --threads $(THREADS) --no-wandb $(ARGS) || exit 1; done ) > $$log 2>&1 & pids="$$pids $$!"; \
	done; rc=0; i=0; for p in $$pids; do i=$$((i+1)); wait $$p || { echo "worker $$i failed: runs/logs/paper-worker$$i.log"; rc=1; }; done; \
	test $$rc = 0 && echo "reproduce-paper: every step done; next: lit-caps store save, then commit reports/"

reproduce-table1: $(PY)
	$(VENV)/bin/lit-caps reproduce table1 --data $(DATA) --scale $(SCALE) $(ARGS)

reproduce-table6-beta: $(PY)
	$(VENV)/bin/lit-caps reproduce rpgd-beta --data $(DATA) --scale $(SCALE) $(ARGS)

reproduce-table7: $(PY)
	$(VENV)/bin/lit-caps reproduce table7 --data $(DATA) --scale $(SCALE) $(ARGS)

# Fig. 1: distances from the correct vs the other capsules, clean vs PGD (reads/completes Table 1's PGD cells)
.PHONY: reproduce-fig1
reproduce-fig1: $(PY)
	$(VENV)/bin/lit-caps reproduce fig1 --data $(DATA) --scale $(SCALE) $(ARGS)

# Issue 5: corrupted MNIST (Table 2, Fig. 7/8), CIFAR-10 variants (Fig. 3), class pairs (Fig. 4), galleries (Fig. 5/10/11)
.PHONY: reproduce-table2 reproduce-fig3 reproduce-fig4 reproduce-galleries
reproduce-table2: $(PY)
	$(VENV)/bin/lit-caps reproduce table2 --scale $(SCALE) $(ARGS)

reproduce-fig3: $(PY)
	$(VENV)/bin/lit-caps reproduce fig3 --scale $(SCALE) $(ARGS)

reproduce-fig4: $(PY)
	$(VENV)/bin/lit-caps reproduce fig4 --data fashion_mnist --scale $(SCALE) $(ARGS)

reproduce-galleries: $(PY)
	$(VENV)/bin/lit-caps reproduce galleries --data mnist fashion_mnist --scale $(SCALE) $(ARGS)
