"""Real smoke-scale runs of the engine, trained once per test session and shared by the tests that read them.

`table1_smoke` launches the whole of Table 1 at the smoke scale through submitit's local executor, as
`make quickstart` does, once for all pytest-xdist workers: the first worker to ask trains it under a file
lock and the others wait for it and read the same folder. `smoke_runs` copies 6 of its runs into a
folder of the asking worker's own, for the analysis tests (their counts assume exactly those 6).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Table 1's and Figure 2's vanilla and AutoAugment rows and Table 1's ConAdv row at 32k and 64k.
ONLY = ["row=ResNet-50,ResNet-50+AA,ResNet-50+ConAdv", "paper_batch=32k,64k"]


def once_across_workers(factory: pytest.TempPathFactory, name: str,
                        make: Callable[[Path], dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
    """Run `make(folder)` once in this test session, whichever xdist worker asks first; (folder, its result).

    The folder lies in the directory that all workers' temporary folders share (pytest-xdist's recipe for
    a session fixture that runs once); the result is written atomically after `make` returns."""
    base = factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder, result = root / name, root / f"{name}.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not result.exists():
            folder.mkdir(exist_ok=True)
            outcome = make(folder)
            partial = result.with_suffix(".partial")
            partial.write_text(json.dumps(outcome))
            partial.replace(result)
    return folder, json.loads(result.read_text())


@dataclass(frozen=True)
class Launch:
    runs_dir: Path
    returncode: int
    stdout: str
    stderr: str


def _launch_table1(folder: Path) -> dict[str, Any]:
    env = {**os.environ, "WANDB_DIR": str(folder / "wandb"), "WANDB_CACHE_DIR": str(folder / "wandb-cache")}
    out = subprocess.run([sys.executable, "-m", "conadv_repro.launch", "table1", "--runs-dir", str(folder / "runs"),
                          "--cluster", "local"], env=env, cwd=folder, capture_output=True, text=True, timeout=900)
    return {"returncode": out.returncode, "stdout": out.stdout, "stderr": out.stderr}


@pytest.fixture(scope="session")
def table1_smoke(tmp_path_factory: pytest.TempPathFactory) -> Launch:
    """`python -m conadv_repro.launch table1 --cluster local` at the smoke scale: 28 runs, trained once."""
    folder, outcome = once_across_workers(tmp_path_factory, "table1-smoke", _launch_table1)
    return Launch(runs_dir=folder / "runs", **outcome)


@pytest.fixture(scope="session")
def smoke_runs(table1_smoke: Launch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs folder of this worker's own holding 6 finished smoke runs of Table 1 (copied, not retrained)."""
    from conadv_repro.launch.plan import apply_filters, expand
    from conadv_repro.registry import load_experiments

    assert table1_smoke.returncode == 0, table1_smoke.stdout[-2000:] + table1_smoke.stderr[-2000:]
    runs = tmp_path_factory.mktemp("analysis") / "runs"
    for run in apply_filters(expand(load_experiments(["table1"]), scale="smoke", runs_dir=table1_smoke.runs_dir,
                                  sets={}),
                             ONLY):
        shutil.copytree(run.run_dir, runs / run.run_dir.relative_to(table1_smoke.runs_dir),
                        ignore=shutil.ignore_patterns("wandb"))
    assert len(list(runs.glob("smoke/*/record.json"))) == 6
    return runs
