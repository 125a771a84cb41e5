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
    row["mixed_layout"] = mixed_layout(record) if record else False
    row["device"] = (record.get("environment") or {}).get("device_name")
    derived = record.get("derived") or (stored or {}).get("derived") or {}
    row.update({f"derived.{key}": value for key, value in derived.items()})
    return row


def trained_layouts(record: dict[str, Any]) -> list[str]:
    """The layouts ("2 trainers + 1 attack worker, cuda") that trained the steps a run kept, in order, each
    once: an attempt counts when the next one resumed past its start (its checkpoints were kept). Records
    older than the per-attempt `layouts` give their one `distributed` entry."""
    entries = sorted(record.get("layouts") or [], key=lambda e: int(e.get("attempt", 0)))
    if not entries:
        entries = [{**(record.get("distributed") or {}), "from_step": 0}]
    kept = [e for i, e in enumerate(entries)
            if i == len(entries) - 1 or int(entries[i + 1].get("from_step", 0)) > int(e.get("from_step", 0))]
    names: list[str] = []
    for entry in kept:
        trainers, workers = int(entry.get("trainers") or 1), int(entry.get("attack_workers") or 0)
        name = f"{trainers} trainer{'s' if trainers != 1 else ''}"
        if workers:
            name += f" + {workers} attack worker{'s' if workers != 1 else ''}"
        if entry.get("device"):
            name += f", {entry['device']}"
        if name not in names:
            names.append(name)
    return names


def mixed_layout(record: dict[str, Any]) -> bool:
    """Whether a run was trained on more than one layout (resumed on another number of GPUs): its wall time
    measures no one layout, so Table 3 and Figure 4 flag it instead of timing it."""
    return len(trained_layouts(record)) > 1


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
