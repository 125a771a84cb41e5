"""Section 4: what one GPU cannot check, and the NCCL runs where there are enough GPUs.

NCCL needs one GPU per rank, so on one GPU the trainers' all-reduce and the attack workers' broadcast
and transfers are not exercised (tests/test_distributed.py, and this section's CPU stand-in in
tests/test_gpu_check.py, run the same protocol over gloo on the CPU).
With 2 GPUs or more, two trainers (DDP, accumulation) train DisAdv against one process on the whole batch;
with 3 or more, two trainers and one attack worker train ConAdv against one process with the sequential
executor: the runs of the CPU stand-in, started with torchrun, on NCCL. The weights agree
up to summation order (the all-reduce and the BN statistics' sums add in another order), hence the
tolerance of that test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from conadv_repro.engine.checkpoint import load_latest_checkpoint
from conadv_repro.gpu_check.plan import Plan
from conadv_repro.gpu_check.report import CheckFailed, Report
from conadv_repro.runfiles import RECORD_FILE

TOLERANCE = 1e-4  # relative to each tensor's largest value; 6e-7 measured over gloo after 3 steps
TIMEOUT_S = 300


def multi_gpu_section(plan: Plan, report: Report, *, on_cpu: bool = False) -> None:
    """`on_cpu`: the CPU smoke's stand-in (gloo, CPU processes), run only when asked for by name."""
    report.section("4 several GPUs: NCCL among ranks")
    gpus = torch.cuda.device_count() if plan.device == "cuda" else 0
    ranks = 3 if on_cpu else gpus
    if ranks < 2:
        where = "CPU smoke" if plan.smoke else "1 GPU"
        report.skip("NCCL among ranks", f"{where}: NCCL needs one GPU per rank, so the trainers' all-reduce and "
                    "the attack workers' broadcast and transfers are not exercised here (tests/test_distributed.py "
                    "runs them over gloo on the CPU); with 3 GPUs this section runs 2 trainers + 1 attack worker "
                    "on NCCL")
        return
    backend = "gloo" if on_cpu else "nccl"
    common = ["scale=smoke", f"runtime.device={'cpu' if on_cpu else 'cuda'}", "runtime.wandb=disabled",
              f"runtime.dist_backend={backend}", "runtime.dist_timeout_s=120"]
    if on_cpu:
        common.append("runtime.threads=1")
    if on_cpu:
        # The stand-in keeps CI's time to the one check that runs every kind of transfer (its code is the
        # DDP check's too); tests/test_distributed.py runs the DDP comparison over gloo.
        report.skip("2 trainers (DDP)", "CPU stand-in: only the 3-rank check runs")
    else:
        report.check(f"2 trainers (DDP over {backend}) = one process (DisAdv, accumulation)",
                     lambda: _agree([*common, "method=disadv", "steps=3"], 2,
                                    lambda batch: [f"runtime.micro_batch={batch // 4}"]))
    if ranks >= 3:
        # The records must say the layout really ran: 3 ranks, one of them attacking, and a sequential reference.
        layout = {"distributed": {"world_size": 3, "trainers": 2, "attack_workers": 1, "backend": backend},
                  "executor": "workers"}
        report.check(f"2 trainers + 1 attack worker over {backend} = one process (ConAdv, sequential executor)",
                     lambda: _agree([*common, "method=conadv", "steps=4"], 3,
                                    lambda _batch: ["conadv.attack_workers=1"],
                                    reference=["conadv.executor=sequential"], layout=layout,
                                    reference_layout={"executor": "sequential"}))
    else:
        report.skip("2 trainers + 1 attack worker", f"{gpus} GPUs: it needs 3")


def _train(run_dir: Path, overrides: list[str], nproc: int) -> None:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] \
        if nproc > 1 else [sys.executable]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*launch, "-m", "conadv_repro.train", "--run-dir", str(run_dir), *overrides],
                            env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    if result.returncode != 0:
        tail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-3:]
        raise CheckFailed(f"{nproc} process(es) exited with {result.returncode}: {' | '.join(tail)}")


def _final_model(run_dir: Path) -> dict[str, Any]:
    loaded = load_latest_checkpoint(run_dir)
    if loaded is None or loaded[1].name != "final.pt":
        raise CheckFailed(f"no final checkpoint in {run_dir.name}")
    return loaded[0]["model"]


def _check_layout(run_dir: Path, expected: dict[str, Any], what: str) -> dict[str, Any]:
    record = json.loads((run_dir / RECORD_FILE).read_text())
    if record.get("status") != "finished":
        raise CheckFailed(f"the {what} run's record says {record.get('status')!r}, not finished")
    for key, value in expected.items():
        if record.get(key) != value:
            raise CheckFailed(f"the {what} run's record has {key}={record.get(key)!r}, expected {value!r}")
    return record


def _agree(common: list[str], nproc: int, distributed: Callable[[int], list[str]], *,
           reference: list[str] | None = None, layout: dict[str, Any] | None = None,
           reference_layout: dict[str, Any] | None = None) -> str:
    """Train `common` in one process and on `nproc` ranks (`distributed(batch)` adds the ranks' settings,
    e.g. two micro-batches on each trainer); the final weights must agree, and each record must hold the
    fields given in `layout` (the ranks' run) and `reference_layout` (the one process)."""
    with tempfile.TemporaryDirectory(prefix="conadv-gpu-check-") as tmp:
        ref, multi = Path(tmp) / "ref", Path(tmp) / "multi"
        _train(ref, [*common, *(reference or [])], 1)
        ref_record = _check_layout(ref, reference_layout or {}, "one-process")
        if ref_record["distributed"]["world_size"] != 1:
            raise CheckFailed(f"the one-process run has world_size {ref_record['distributed']['world_size']}")
        _train(multi, [*common, *distributed(ref_record["config"]["batch_size"])], nproc)
        multi_record = _check_layout(multi, layout or {}, f"{nproc}-rank")
        if multi_record["derived"]["trainers"] != multi_record["distributed"]["trainers"]:
            raise CheckFailed(f"the {nproc}-rank run derived {multi_record['derived']['trainers']} trainers, its "
                              f"record says {multi_record['distributed']['trainers']}")
        a, b = _final_model(ref), _final_model(multi)
    worst = 0.0
    for name, value in a.items():
        if value.is_floating_point():
            worst = max(worst, (value - b[name]).abs().max().item() / (value.abs().max().item() or 1.0))
        elif not torch.equal(value, b[name]):
            raise CheckFailed(f"{name} differs")
    if worst >= TOLERANCE:
        raise CheckFailed(f"the largest relative difference is {worst:.2e} (tolerance {TOLERANCE:g})")
    return f"final weights within {worst:.1e} of the one-process run (tolerance {TOLERANCE:g}: summation order)"
