"""What the loss-landscape table says under its grid (analysis/landscape_table.py): the runs under the
convergence line, the power iterations that stopped at their limit, the time the measurements took, and the
declared line between two runs. Pure functions of the records and the planned runs; no torch.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from analysis.records import load_slices
from conadv_repro.launch.between import line_end
from conadv_repro.launch.plan import PlannedRun
from conadv_repro.registry import Experiment


def unconverged(experiment: Experiment, runs: list[PlannedRun], frame: pd.DataFrame, threshold: float | None
                ) -> list[dict[str, Any]]:
    """The finished runs under `threshold` training top-1 (the experiment's `converged_train_top1`): row,
    column, seed, run id, train top-1."""
    if threshold is None or frame.empty or "train_top1" not in frame:
        return []
    by_id = {row["run_id"]: row for row in frame.to_dict("records")}
    out = []
    for cell in experiment.cells:
        for run in runs:
            row = by_id.get(run.run_id)
            if (experiment.name, cell.row, cell.column) not in run.uses or not row or row["status"] != "finished":
                continue
            top1 = row.get("train_top1")
            if isinstance(top1, (int, float)) and not math.isnan(top1) and top1 < float(threshold):
                out.append({"row": cell.row, "column": cell.column, "seed": run.config.seed, "run_id": run.run_id,
                            "train_top1": float(top1)})
    return out


def _of_experiment(experiment: Experiment, runs: list[PlannedRun], rows: pd.DataFrame) -> pd.DataFrame:
    """The records of `rows` that are runs of `experiment` (a runs folder holds other grids' runs too)."""
    planned = {run.run_id for run in runs if any(use[0] == experiment.name for use in run.uses)}
    return rows[rows["run_id"].isin(planned)] if not rows.empty else rows


# An eigenvalue measure -> its records column saying whether the power iteration met its tolerance.
CONVERGED_COLUMNS = {"landscape.top_eigenvalue": "landscape.top_eigenvalue_converged",
                     "landscape.adaptive_eigenvalue": "landscape.adaptive_eigenvalue_converged"}


def not_converged(experiment: Experiment, runs: list[PlannedRun], rows: pd.DataFrame, metrics: tuple[str, ...]
                  ) -> dict[str, str]:
    """Per declared eigenvalue measure, how many of the experiment's measured runs ended their power iteration
    at its limit without meeting the tolerance (their value is a lower bound), with the range of their last
    iteration's relative change and of their residual relative to the value. `rows`: the records of the runs
    measured with the declared settings (landscape_table.comparable)."""
    rows = _of_experiment(experiment, runs, rows)
    out = {}
    for metric in metrics:
        flag = CONVERGED_COLUMNS.get(metric)
        if flag is None or rows.empty or flag not in rows or metric not in rows:
            continue
        stopped = rows[rows[metric].notna() & (rows[flag] == False)]  # noqa: E712 (None: not measured)
        text = str(len(stopped))
        if len(stopped):
            change = stopped.get(f"{metric}_last_change")
            residual = stopped.get(f"{metric}_residual")
            parts = []
            if change is not None and change.notna().any():
                parts.append(f"last change {_span(change * 100)}%")
            if residual is not None and residual.notna().any():
                parts.append(f"residual {_span(residual.astype(float) / stopped[metric].astype(float).abs() * 100)}% "
                             "of the value")
            text += f" ({', '.join(parts)})" if parts else ""
        out[metric] = text
    return out


def _span(values: pd.Series) -> str:
    low, high = float(values.min()), float(values.max())
    return f"{low:.2g}" if f"{low:.2g}" == f"{high:.2g}" else f"{low:.2g}-{high:.2g}"


def measuring_seconds(experiment: Experiment, runs: list[PlannedRun], rows: pd.DataFrame, metric: str) -> str | None:
    """`N runs, S s in all (a-b s per run)` of the measurements the table shows (their entries' seconds); `rows`
    as for not_converged, `metric` a declared measure's column (a run counts when it has a value)."""
    rows = _of_experiment(experiment, runs, rows)
    if rows.empty or "landscape.seconds" not in rows or metric not in rows:
        return None
    seconds = rows[rows[metric].notna()]["landscape.seconds"]
    seconds = seconds.dropna().astype(float)
    if seconds.empty:
        return None
    return f"{len(seconds)} runs, {seconds.sum():,.0f} s in all ({seconds.min():.0f}-{seconds.max():.0f} s per run)"


def between_summary(experiment: Experiment, runs: list[PlannedRun]) -> str | None:
    """The declared line between two runs (`settings["between"]`, launch between) in one sentence, from the
    first run's landscape.json; None when the experiment declares none or it has not been measured."""
    line = experiment.settings.get("between")
    if not line:
        return None
    start, end = (line_end(experiment, runs, column) for column in (line["from"], line["to"]))
    if start is None or end is None:
        return None
    curve = load_slices(start.run_dir)
    curve = curve[(curve["kind"] == "between") & (curve["other"] == end.run_id)].sort_values("alpha")
    if curve.empty:
        return None
    first, last = curve.iloc[0], curve.iloc[-1]
    peak = curve.loc[curve["loss"].idxmax()]
    worst = curve.loc[curve["top1"].idxmin()]
    return (f"{line['row']} {line['from']} ({start.run_id}) to {line['row']} {line['to']} ({end.run_id}), seed "
            f"{line['seed']}: training loss {first['loss']:.3g} at alpha 0 (top-1 {first['top1']:.1f}%), highest "
            f"{peak['loss']:.3g} at alpha {peak['alpha']:g}, {last['loss']:.3g} at alpha 1 (top-1 {last['top1']:.1f}%); "
            f"lowest top-1 {worst['top1']:.1f}% at alpha {worst['alpha']:g} ({len(curve)} points)")


__all__ = ["between_summary", "measuring_seconds", "not_converged", "unconverged"]
