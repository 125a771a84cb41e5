"""Synthetic run directories for the analysis tests: the record and metrics.jsonl a run would leave,
written by the test (no training), so that a table or figure cell's expected value is known exactly."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from conadv_repro.launch.plan import PlannedRun, expand
from conadv_repro.registry import load_experiments

CPU = "Synthetic CPU (test fixture)"


def planned(name: str, runs_dir: Path, scale: str = "smoke") -> list[PlannedRun]:
    return expand(load_experiments([name]), scale=scale, runs_dir=runs_dir, sets={}, check_data=False)


def find(runs: Iterable[PlannedRun], experiment: str, row: str, column: str) -> PlannedRun:
    return next(r for r in runs if (experiment, row, column) in r.uses)


def write_run(run: PlannedRun, *, status: str = "finished", train: Iterable[float] = (),
              epochs: Iterable[tuple[int, float | None, float]] = (), final_top1: float | None = None,
              wall_time_s: float = 100.0, executor: str | None = None, distributed: dict[str, Any] | None = None,
              device: str = CPU, final_train_top1: float | None = None) -> Path:
    """A run directory: `train` images/s per train row (every 5 steps), `epochs` (epoch, test top-1 or None,
    elapsed s) rows, and a record in `status` (its final test top-1 when finished, and the training top-1
    `final_train_top1` when given). `executor` and
    `distributed` are left out of the record when None, as in records written before they existed."""
    folder = run.run_dir
    folder.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"run_id": run.run_id, "status": status, "config": run.config.flat(),
                              "wall_time_s": wall_time_s, "environment": {"device_name": device},
                              "final": None if final_top1 is None else {"test_top1": final_top1}}
    if final_train_top1 is not None:
        record["final"] = {**(record["final"] or {}), "train_top1": final_train_top1}
    if executor is not None:
        record["executor"] = executor
    if distributed is not None:
        record["distributed"] = distributed
    (folder / "record.json").write_text(json.dumps(record))
    rows: list[dict[str, Any]] = [{"kind": "train", "step": 5 * (i + 1), "images_per_s": rate, "elapsed_s": i}
                                  for i, rate in enumerate(train)]
    for epoch, top1, elapsed in epochs:
        row: dict[str, Any] = {"kind": "epoch", "epoch": epoch, "step": 10 * epoch, "elapsed_s": elapsed}
        if top1 is not None:
            row["test_top1"] = top1
        rows.append(row)
    if final_top1 is not None:
        rows.append({"kind": "final", "step": 1000, "test_top1": final_top1})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


SYNTHETIC_CALIBRATION = {
    "schema": 1, "machine": "synthetic test fixture, not a measurement", "device": "cpu",
    "device_name": CPU, "model": "resnet20", "image_size": 32, "params": 272474, "weights_bytes": 4 * 272474,
    "batch": 128, "command": "written by the test", "date": "2000-01-01",
    "per_example_s": {"vanilla": 1e-3, "train_only": 2e-3, "attack": 0.5e-3, "disadv": 2.5e-3,
                      "conadv_concurrent": 2.2e-3},
    "broadcast_s": 0.01, "transfer_s_per_example": 1e-5, "allreduce_bytes_per_s": 1e9,
}


def write_calibration(path: Path, **changes: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**SYNTHETIC_CALIBRATION, **changes}))
    return path
