# Two commands on a fresh machine: `make quickstart` and `make test`. Each sets up what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: quickstart test test-quick lint bench venv clean-venv
# pytest-xdist workers, each with one torch thread (tests/conftest.py). Three on 2 cores measured fastest
# (README.md, "Tests"): while one worker waits on Slurm or on its own processes, the other two use the cores.
TEST_WORKERS ?= 3

# The torchcodec extra too, so that the tests run data_decoder=torchcodec (they skip it where it is absent).
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,torchcodec]'
	@touch $(STAMP)

venv: $(STAMP)

# Trains the paper's Table 1 grid (vanilla, AutoAugment, DisAdv, ConAdv x 1k-96k) at the smoke scale on
# the embedded dataset (scikit-learn's digits), on this machine's CPU through submitit's local executor:
# no cluster, no ImageNet, no W&B account. It prints every run with its test top-1; running it again
# trains nothing and prints the same table.
quickstart: $(STAMP)
	$(PY) -m conadv_repro.launch table1 --scale smoke --cluster local

# Everything, as CI runs it; test-quick runs the unit tests (no real runs, no processes) before a commit.
# Times on 2 cores: README.md, "Tests".
test: $(STAMP)
	WANDB_MODE=disabled $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

test-quick: $(STAMP)
	WANDB_MODE=disabled $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/engine_overhead.py
	$(PY) benchmarks/launch_planning.py
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/memory.py

clean-venv:
	rm -rf $(VENV)

# Every GPU path (side stream, bf16, channels_last, compile, pinned loaders, NCCL) on this machine's GPU in
# about 5 minutes, with whatever Python has torch (no venv, no network, no submitit or wandb needed):
# `make gpu-check PYTHON=python3 GPU_CHECK_ARGS="--only speed"`. docs/gpu-check.md.
.PHONY: gpu-check
GPU_CHECK_ARGS ?=
gpu-check:
	$(PYTHON) -m conadv_repro.gpu_check $(GPU_CHECK_ARGS)

# The local single-node Slurm cluster for the Slurm tests (root, Debian only): slurm/local/README.md.
.PHONY: slurm-up slurm-down
slurm-up:
	@test "$$(id -u)" = 0 || { echo "make slurm-up: must run as root (installs packages, starts daemons); try: sudo make slurm-up" >&2; exit 1; }
	bash slurm/local/start.sh

slurm-down:
	@test "$$(id -u)" = 0 || { echo "make slurm-down: must run as root; try: sudo make slurm-down" >&2; exit 1; }
	bash slurm/local/stop.sh
