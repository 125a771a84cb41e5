# Two commands on a fresh machine: `make quickstart` and `make test`. Each sets up what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
RUN_DIR ?= runs/quickstart

.PHONY: quickstart test lint bench venv clean-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

# Trains one short ConAdv run on the embedded dataset (scikit-learn's digits) on the CPU, its attack on
# a worker thread beside the update: no cluster, no ImageNet, no W&B account. Running it again prints
# the finished run's result.
quickstart: $(STAMP)
	$(PY) -m conadv_repro.train --run-dir $(RUN_DIR) method=conadv epochs=15 runtime.threads=1 runtime.device=cpu

test: $(STAMP)
	WANDB_MODE=disabled $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/engine_overhead.py

clean-venv:
	rm -rf $(VENV)

# The local single-node Slurm cluster for the Slurm tests (root, Debian only): slurm/local/README.md.
.PHONY: slurm-up slurm-down
slurm-up:
	@test "$$(id -u)" = 0 || { echo "make slurm-up: must run as root (installs packages, starts daemons); try: sudo make slurm-up" >&2; exit 1; }
	bash slurm/local/start.sh

slurm-down:
	@test "$$(id -u)" = 0 || { echo "make slurm-down: must run as root; try: sudo make slurm-down" >&2; exit 1; }
	bash slurm/local/stop.sh
