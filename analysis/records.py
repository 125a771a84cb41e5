"""Run records into one pandas DataFrame, one row per run, without importing the training code.

Reads each run directory's `config.json` and `record.json` (and, for curves, `metrics.jsonl`; for the
loss landscape, `landscape.json` through the torch-free conadv_repro.landscape.store), so
tables can be made on a laptop from run directories copied off a cluster. Runs still running, queued,
failed or diverged are rows with their status, not results.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from conadv_repro.atomic import read_json_dict, read_jsonl
from conadv_repro.errors import UserError
from conadv_repro.landscape import store as landscape_store
from conadv_repro.landscape.settings import Settings, default_examples
from conadv_repro.landscape_state import FINAL_CHECKPOINT, declared_for, settings_of
from conadv_repro.launch.plan import PlannedRun, expand
from conadv_repro.launch.states import SlurmJobs, run_state
from conadv_repro.registry import Experiment, load_experiments
from conadv_repro.runfiles import CONFIG_FILE, METRICS_FILE, RECORD_FILE

FINAL_METRICS = ("test_top1", "test_top5", "train_top1", "train_top5", "train_top1_running", "test_loss")


def run_row(run_dir: Path, jobs: SlurmJobs | None = None, landscape: Mapping[str, Any] | None = None
            ) -> dict[str, Any] | None:
    """One run as a flat dict: its config (dotted keys), status, final metrics, wall time, epoch times, and
    the `landscape.*` scalars of its landscape.json entry (`landscape_entry`; `landscape` is an experiment's
    declaration, `settings["landscape"]`, whose entry is preferred)."""
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
    try:
        chosen = landscape_entry(run_dir, landscape, data=row.get("data"), scale=row.get("scale"))
    except UserError as error:  # one broken landscape.json must not take every table down with it
        row["landscape.error"] = str(error)
    else:
        if chosen is not None:
            row.update(landscape_columns(*chosen))
    return row


# ------------------------------------------------------------------------------ landscape.json

# Which entry of a run's landscape.json stands for the run (several keys can be there: other settings,
# a step checkpoint measured with --allow-unfinished, --between lines):
#   1. the newest entry of the final checkpoint whose settings are the requested ones (an experiment's
#      `settings["landscape"]` declaration resolved at the run's scale and data, as the launcher measures);
#   2. else the newest entry of the final checkpoint with the default settings (`python -m
#      conadv_repro.landscape RUN_DIR` without options);
#   3. else none: entries of other settings are not comparable (the sample and the tolerances move the
#      numbers), so they are not shown rather than shown as if they were.
# The checkpoint is matched by file name (final.pt), not by its SHA-256: copied run folders often leave the
# checkpoints behind, and final.pt is written once per run. `landscape.match` says which rule chose.


def _settings_part(key: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in key.items() if k not in ("checkpoint", "between")}


def _newest(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    # measured_at is ISO-8601 UTC (same width), so text order is time order; a later entry wins a tie.
    best = None
    for entry in entries:
        if best is None or str(entry.get("measured_at") or "") >= str(best.get("measured_at") or ""):
            best = entry
    return best


def _final_entries(entries: list[dict[str, Any]], *, between: bool) -> list[dict[str, Any]]:
    out = []
    for entry in entries:
        checkpoint = entry["key"].get("checkpoint")
        if isinstance(checkpoint, dict) and checkpoint.get("file") == FINAL_CHECKPOINT \
                and (entry["key"].get("between") is not None) == between:
            out.append(entry)
    return out


def requested_settings(declared: Mapping[str, Any] | None, data: str | None, scale: str | None) -> Settings | None:
    """An experiment's `settings["landscape"]` declaration as the Settings the launcher measures with."""
    if declared is None:
        return None
    resolved = declared_for({"landscape": declared}, str(scale or ""))
    return None if resolved is None else settings_of(resolved, str(data or ""))


def landscape_entry(run_dir: Path, declared: Mapping[str, Any] | None = None, *, data: str | None = None,
                    scale: str | None = None) -> tuple[dict[str, Any], str] | None:
    """(entry, "requested" or "default") of `run_dir`'s landscape.json by the rules above, or None.
    Raises UserError for a landscape.json that is not one."""
    entries = _final_entries(landscape_store.read_entries(Path(run_dir)), between=False)
    if not entries:
        return None
    wanted = requested_settings(declared, data, scale)
    default = Settings(examples=default_examples(str(data or "")))
    for rule, settings in (("requested", wanted), ("default", default)):
        if settings is None:
            continue
        key = settings.as_key()
        found = _newest([e for e in entries if _settings_part(e["key"]) == key])
        if found is not None:
            return found, rule
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def landscape_columns(entry: Mapping[str, Any], match: str) -> dict[str, Any]:
    """The scalar `landscape.*` columns of one entry (None for a measure it did not run)."""
    results = entry.get("results") or {}
    eig, trace = results.get("eigenvalue") or {}, results.get("trace") or {}
    ada, eps = results.get("adaptive") or {}, results.get("epsilon") or {}
    ce = eig.get("ce") or {}
    sample, weights, run = entry.get("sample") or {}, entry.get("weights") or {}, entry.get("run") or {}
    checkpoint = (entry.get("key") or {}).get("checkpoint") or {}
    return {
        "landscape.match": match, "landscape.key_id": entry.get("key_id"),
        "landscape.measured_at": entry.get("measured_at"), "landscape.checkpoint_step": checkpoint.get("step"),
        "landscape.examples": sample.get("examples"), "landscape.sample_loss": _number(sample.get("loss")),
        "landscape.sample_loss_ce": _number(sample.get("loss_ce")), "landscape.sample_top1": _number(sample.get("top1")),
        **_power_columns("landscape.top_eigenvalue", eig),
        "landscape.top_eigenvalue_ce": _number(ce.get("value")),
        "landscape.top_eigenvalue_ce_iterations": ce.get("iterations"),
        "landscape.top_eigenvalue_ce_residual": _number(ce.get("residual")),
        "landscape.trace": _number(trace.get("value")), "landscape.trace_se": _number(trace.get("stderr")),
        "landscape.trace_probes": trace.get("probes"),
        **_power_columns("landscape.adaptive_eigenvalue", ada),
        "landscape.epsilon_sharpness": _number(eps.get("value")),
        "landscape.epsilon_max_loss": _number(eps.get("max_loss")),
        "landscape.weight_norm": _number(weights.get("norm")), "landscape.parameters": weights.get("parameters"),
        # Per-layer norms as one dict-valued column: ResNet-50 has ~160 tensors, too many for columns.
        "landscape.layer_norms": dict(weights.get("layers") or {}),
        "landscape.last_lr": _number(run.get("last_lr")), "landscape.peak_lr": _number(run.get("peak_lr")),
        "landscape.seconds": sum(v for v in entry["seconds"].values() if _number(v) is not None)
        if isinstance(entry.get("seconds"), dict) and entry["seconds"] else None,
    }


def _power_columns(name: str, result: Mapping[str, Any]) -> dict[str, Any]:
    """A power iteration's columns: the value, its iterations, residual, whether it met its tolerance, and
    its last relative change."""
    return {name: _number(result.get("value")), f"{name}_iterations": result.get("iterations"),
            f"{name}_residual": _number(result.get("residual")), f"{name}_converged": result.get("converged"),
            f"{name}_last_change": _last_change(result.get("history"))}


def _last_change(history: Any) -> float | None:
    """A power iteration's relative change in its last iteration, |λ_k - λ_(k-1)| / |λ_k| (None under two)."""
    values = [_number(v) for v in history] if isinstance(history, list) else []
    if len(values) < 2 or values[-1] is None or values[-2] is None or values[-1] == 0:
        return None
    return abs(values[-1] - values[-2]) / abs(values[-1])


SLICE_COLUMNS = ("kind", "alpha", "loss", "loss_ce", "top1", "other", "key_id")


def load_slices(run_dir: Path, declared: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """A run's 1-D slices from landscape.json (columns SLICE_COLUMNS): `kind` "random" (the filter-normalised
    direction of the entry `landscape_entry` chooses) and "between" (the line to another run, `other`: the
    newest entry of the final checkpoint per other run). Empty when there are none."""
    run_dir = Path(run_dir)
    # config.json holds the flat config; a run that never wrote one (or a copy without it) has it in record.json.
    config = ((read_json_dict(run_dir / CONFIG_FILE) or {}).get("config")
              or (read_json_dict(run_dir / RECORD_FILE) or {}).get("config") or {})
    rows: list[dict[str, Any]] = []
    chosen = landscape_entry(run_dir, declared, data=config.get("data"), scale=config.get("scale"))
    if chosen is not None:
        entry = chosen[0]
        for point in ((entry.get("results") or {}).get("slice") or {}).get("points") or []:
            rows.append({"kind": "random", **_point(point), "other": None, "key_id": entry.get("key_id")})
    by_other: dict[str, list[dict[str, Any]]] = {}
    for entry in _final_entries(landscape_store.read_entries(run_dir), between=True):
        if "between" in (entry.get("results") or {}):
            by_other.setdefault(str((entry["key"]["between"] or {}).get("run_id")), []).append(entry)
    for other, entries in sorted(by_other.items()):
        entry = _newest(entries) or {}
        for point in entry["results"]["between"].get("points") or []:
            rows.append({"kind": "between", **_point(point), "other": other, "key_id": entry.get("key_id")})
    return pd.DataFrame(rows, columns=list(SLICE_COLUMNS))


def _point(point: Mapping[str, Any]) -> dict[str, Any]:
    return {"alpha": _number(point.get("alpha")), "loss": _number(point.get("loss")),
            "loss_ce": _number(point.get("loss_ce")), "top1": _number(point.get("top1"))}


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


def load_runs(runs_dir: Path, scales: Iterable[str] | None = None, landscape: Mapping[str, Any] | None = None
              ) -> pd.DataFrame:
    """Every run directory under `runs_dir/<scale>/` as one DataFrame (empty if there are none); `landscape`:
    an experiment's declaration whose landscape.json entries are preferred (`landscape_entry`)."""
    jobs = SlurmJobs()
    rows = []
    for scale_dir in sorted(p for p in Path(runs_dir).glob("*") if p.is_dir()):
        if scales is not None and scale_dir.name not in set(scales):
            continue
        for run_dir in sorted(p for p in scale_dir.iterdir() if p.is_dir() and not p.name.startswith("_")):
            row = run_row(run_dir, jobs, landscape)
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
