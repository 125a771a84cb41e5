"""Test-wide settings: W&B off (its own tests turn it on offline), one CPU thread per process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from conadv_repro.folders import clone_package, folder_package

# The tests import each other as `tests.*` and the clone's folders as `analysis.*` and `experiments.*`: each
# folder is registered as a package by its path, as the scripts do, with nothing added to sys.path.
folder_package("tests", Path(__file__).resolve().parent)
clone_package("analysis")
clone_package("experiments")

from tests.analysis_fixture import smoke_runs, table1_smoke  # noqa: E402, F401 - shared trained runs
from tests.slurm_support import require_slurm_partition  # noqa: E402

# One torch thread in each pytest-xdist worker and, through the environment, in every process a test starts
# (CLIs, torchrun's ranks, local jobs) unless its config says otherwise: the workers and those processes
# already share the cores, and OpenMP threads that wait on each other would only spin.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_CONSOLE", "off")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for running the package's CLIs in a subprocess (the editable install finds the package)."""
    env = dict(os.environ)
    env["WANDB_DIR"] = str(tmp_path / "wandb")
    env["WANDB_CACHE_DIR"] = str(tmp_path / "wandb-cache")
    return env


@pytest.fixture(scope="session")
def slurm_partition() -> str:
    """The local Slurm cluster's partition (`make slurm-up`); skips without one (fails in CI)."""
    return require_slurm_partition()


# Modules whose tests train real runs or start processes (seconds to minutes each): `make test` runs them,
# `make test-quick` (the unit tests, for before each commit) leaves them out.
SLOW_MODULES = {
    "test_cli", "test_distributed", "test_export", "test_figure4", "test_figures", "test_gpu_check",
    "test_grids_smoke", "test_launch", "test_launch_landscape", "test_launch_slurm", "test_proxy_ci", "test_proxy_scale", "test_resume",
    "test_slurm_cluster", "test_tables", "test_timing_launch", "test_layers",
}


# The longest first (measured with 3 workers on 2 cores), so that pytest-xdist's workers do not end
# waiting on one of them; within a module, and for every other module, the collection order.
LONGEST_FIRST = ("test_figures", "test_proxy_ci", "test_launch_slurm", "test_distributed", "test_resume",
                 "test_launch", "test_grids_smoke", "test_gpu_check")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))
