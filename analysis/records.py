"""Run records into one pandas DataFrame, one row per run, without importing the training code.

Reads each run directory's `config.json` and `record.json` (and, for curves, `metrics.jsonl`), so
tables can be made on a laptop from run directories copied off a cluster. Runs still running, queued,
failed or diverged are rows with their status, not results.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from conadv_repro.atomic import read_json_dict, read_jsonl
from conadv_repro.launch.plan import PlannedRun, expand
from conadv_repro.launch.states import SlurmJobs, run_state
from conadv_repro.registry import Experiment, load_experiments
from conadv_repro.runfiles import CONFIG_FILE, METRICS_FILE

FINAL_METRICS = ("test_top1", "test_top5", "train_top1", "train_top5", "train_top1_running", "test_loss")


def run_row(run_dir: Path, jobs: SlurmJobs | None = None) -> dict[str, Any] | None:
    """One run as a flat dict: its config (dotted keys), status, final metrics, wall time, epoch times."""
    stored = read_json_dict(run_dir / CONFIG_FILE)
    state = run_state(run_dir, jobs)
    if stored is None and state.record is None:
        if state.state in ("queued", "running", "unfinished"):  # claimed or started, nothing written yet
            return {"run_id": run_dir.name, "run_dir": str(run_dir), "status": state.state}
        return None
    record = state.record or {}
    config = record.get("config") or _flatten((stored or {}).get("config", {}))
    row: dict[str, Any] = {"run_id": record.get("run_id") or (stored or {}).get("run_id") or run_dir.name,
                           "run_dir": str(run_dir), "status": state.state, **config}
    final = record.get("final") or {}
    for key in FINAL_METRICS:
        row[key] = final.get(key)
    if row["train_top1"] is not None and row["test_top1"] is not None:
        row["gap"] = row["train_top1"] - row["test_top1"]
    else:
        row["gap"] = None
    row["wall_time_s"] = record.get("wall_time_s")
    row["epoch_times"] = record.get("epoch_times") or []
    row["steps_done"] = record.get("steps_done")
    row["total_steps"] = record.get("total_steps")
    row["attempts"] = record.get("attempts")
    row["device"] = (record.get("environment") or {}).get("device_name")
    derived = record.get("derived") or (stored or {}).get("derived") or {}
    row.update({f"derived.{key}": value for key, value in derived.items()})
    return row


def _flatten(nested: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def load_runs(runs_dir: Path, scales: Iterable[str] | None = None) -> pd.DataFrame:
    """Every run directory under `runs_dir/<scale>/` as one DataFrame (empty if there are none)."""
    jobs = SlurmJobs()
    rows = []
    for scale_dir in sorted(p for p in Path(runs_dir).glob("*") if p.is_dir()):
        if scales is not None and scale_dir.name not in set(scales):
            continue
        for run_dir in sorted(p for p in scale_dir.iterdir() if p.is_dir() and not p.name.startswith("_")):
            row = run_row(run_dir, jobs)
            if row is not None:
                rows.append(row)
    return pd.DataFrame(rows)


def load_curves(run_dir: Path) -> pd.DataFrame:
    """A run's epoch rows (epoch, train and test top-1, losses, elapsed time) from metrics.jsonl."""
    return pd.DataFrame([row for row in read_jsonl(Path(run_dir) / METRICS_FILE) if row.get("kind") == "epoch"])


def planned(experiment_names: list[str], scale: str, runs_dir: Path, sets: dict[str, str] | None = None
            ) -> tuple[list[Experiment], list[PlannedRun]]:
    """The experiments and the runs their cells stand for at `scale` (the launcher's own expansion, so
    a table cell finds exactly the run the launcher trained; `sets` are the launcher's `--set` items of a
    variation)."""
    experiments = load_experiments(experiment_names)
    return experiments, expand(experiments, scale=scale, runs_dir=runs_dir, sets=sets or {}, check_data=False)
