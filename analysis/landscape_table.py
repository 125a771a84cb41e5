"""The loss-landscape table of an experiment that declares `settings["landscape"]`: ours only (no paper).

Rows are the experiment's methods, columns its batch sizes, one line per measure the experiment declares
(top Hessian eigenvalue, adaptive eigenvalue, trace, epsilon-sharpness; the `landscape.*` columns of
`analysis.records`). A cell is the mean over the cell's finished runs whose entry has exactly the declared
settings (`landscape.match == "requested"`: entries of other settings are measured on another sample and
are not comparable), `mean±sd (n=k)` with several seeds. The paper has no such numbers, so there is no
"/ paper" part.

Paired differences: each row minus the experiment's reference row at the same column, seed by seed on the
seeds both finished (the seed fixes the initialisation and the data order), `mean±sd (n=k)`. The reference
is `settings["landscape_reference"]`, a row label or a method name (default "vanilla": the row whose
cells train vanilla). It is a setting of its own because `settings["landscape"]` is the launcher's
declaration, whose keys conadv_repro/landscape_state.py checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.tables import CellResult, PairedResult, cell_results, to_latex, to_markdown
from conadv_repro.atomic import atomic_write_text
from conadv_repro.launch.plan import PlannedRun
from conadv_repro.registry import Experiment

SETTING = "landscape"
REFERENCE_SETTING = "landscape_reference"
DEFAULT_REFERENCE = "vanilla"
# measure (landscape/settings.MEASURES) -> its records column and label, in table order.
MEASURE_COLUMNS = {
    "eigenvalue": ("landscape.top_eigenvalue", "top eigenvalue"),
    "adaptive": ("landscape.adaptive_eigenvalue", "adaptive eigenvalue"),
    "trace": ("landscape.trace", "Hessian trace"),
    "epsilon": ("landscape.epsilon_sharpness", "epsilon-sharpness (%)"),
}
DEFAULT_MEASURES = ("eigenvalue", "adaptive")


def declares_landscape(experiment: Experiment) -> bool:
    return SETTING in experiment.settings


def metrics_of(experiment: Experiment) -> tuple[str, ...]:
    """The records columns of the measures the experiment declares (eigenvalue and adaptive by default)."""
    declared = experiment.settings.get(SETTING) or {}
    measures = [m for m in MEASURE_COLUMNS if m in (declared.get("measures") or DEFAULT_MEASURES)]
    return tuple(MEASURE_COLUMNS[m][0] for m in measures)


def label_of(metric: str) -> str:
    return next((label for column, label in MEASURE_COLUMNS.values() if column == metric), metric)


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows whose landscape entry has the requested settings (others' numbers are blanked)."""
    if frame.empty:
        return frame
    frame = frame.copy()
    # No run has a landscape entry at all (e.g. W&B records): every cell is missing.
    other = frame["landscape.match"] != "requested" if "landscape.match" in frame else pd.Series(True, frame.index)
    for column, _ in MEASURE_COLUMNS.values():
        frame[column] = frame[column].astype(object).where(~other, None) if column in frame else None
    return frame


def landscape_results(experiment: Experiment, runs: list[PlannedRun], frame: pd.DataFrame) -> list[CellResult]:
    """tables.cell_results over the declared measures' columns, on the comparable rows only."""
    return cell_results(replace(experiment, metrics=metrics_of(experiment)), runs, comparable(frame))


def cell_text(result: CellResult) -> str:
    """Ours only: `mean`, `mean±sd (n=k)`, or `missing (statuses)`."""
    if result.mean is None:
        waiting = sorted({s for s in result.statuses if s not in ("finished", "missing")})
        return f"missing ({', '.join(waiting)})" if waiting else "missing"
    if result.std is not None:
        return f"{result.mean:.4g}±{result.std:.2g} (n={len(result.values)})"
    return f"{result.mean:.4g}" + (" (n=1)" if len(result.run_ids) > 1 else "")


def reference_row(experiment: Experiment) -> str | None:
    """The row the others are compared with: the setting as a row label, else the row whose cells all
    train that method; None when no row fits (then there are no paired differences)."""
    wanted = str(experiment.settings.get(REFERENCE_SETTING, DEFAULT_REFERENCE))
    if wanted in experiment.rows:
        return wanted
    for row in experiment.rows:
        cells = [c for c in experiment.cells if c.row == row]
        if cells and all(c.overrides.get("method") == wanted and not c.overrides.get("autoaugment") for c in cells):
            return row
    return None


def paired(experiment: Experiment, results: list[CellResult]) -> list[PairedResult]:
    """Every other row minus the reference row, per column and metric, on the seeds both finished."""
    reference = reference_row(experiment)
    if reference is None:
        return []
    index = {(r.row, r.column, r.metric): r for r in results}
    out = []
    for r in results:
        ref = index.get((reference, r.column, r.metric))
        if r.row == reference or ref is None:
            continue
        theirs = dict(zip(ref.seeds, ref.values, strict=True))
        ours = dict(zip(r.seeds, r.values, strict=True))
        seeds = [s for s in r.seeds if s in theirs]
        out.append(PairedResult(r.experiment, r.row, r.column, r.metric, reference, seeds,
                                [ours[s] - theirs[s] for s in seeds]))
    return out


def paired_text(pair: PairedResult) -> str:
    if pair.mean is None:
        return "no pairs"
    return f"{pair.mean:+.4g}" + (f"±{pair.std:.2g}" if pair.std is not None else "") + f" (n={pair.n})"


def _label(row: str, metric: str, metrics: tuple[str, ...]) -> str:
    return row if len(metrics) == 1 else f"{row}: {label_of(metric)}"


def layout(experiment: Experiment, results: list[CellResult]) -> pd.DataFrame:
    index = {(r.row, r.column, r.metric): r for r in results}
    metrics = metrics_of(experiment)
    labels, rows = [], []
    for row in experiment.rows:
        for metric in metrics:
            labels.append(_label(row, metric, metrics))
            rows.append([cell_text(index[(row, col, metric)]) if (row, col, metric) in index else ""
                         for col in experiment.columns])
    return pd.DataFrame(rows, index=labels, columns=list(experiment.columns))


def paired_layout(experiment: Experiment, pairs: list[PairedResult]) -> pd.DataFrame:
    index = {(p.row, p.column, p.metric): p for p in pairs}
    metrics = metrics_of(experiment)
    labels, rows = [], []
    for row in experiment.rows:
        for metric in metrics:
            cells = [index.get((row, col, metric)) for col in experiment.columns]
            if not any(cells):
                continue
            reference = next(c.reference for c in cells if c is not None)
            labels.append(_label(f"{row} − {reference}", metric, metrics))
            rows.append(["" if c is None else paired_text(c) for c in cells])
    return pd.DataFrame(rows, index=labels, columns=list(experiment.columns))


def long_form(results: list[CellResult], pairs: list[PairedResult], scale: str) -> pd.DataFrame:
    """One line per cell and metric (`reference` empty), then one per paired difference."""
    lines: list[dict[str, Any]] = [{
        "experiment": r.experiment, "row": r.row, "column": r.column, "metric": r.metric, "reference": "",
        "scale": scale, "mean": r.mean, "std": r.std, "n": len(r.values), "runs": len(r.run_ids),
        "run_ids": " ".join(r.run_ids), "statuses": " ".join(r.statuses), "seeds": " ".join(map(str, r.seeds)),
        "values": " ".join(f"{v:.6g}" for v in r.values)} for r in results]
    lines += [{
        "experiment": p.experiment, "row": p.row, "column": p.column, "metric": p.metric, "reference": p.reference,
        "scale": scale, "mean": p.mean, "std": p.std, "n": p.n, "runs": None, "run_ids": "", "statuses": "",
        "seeds": " ".join(map(str, p.seeds)), "values": " ".join(f"{d:.6g}" for d in p.diffs)} for p in pairs]
    # Integer counts even with the paired lines' empty `runs` (pandas would make the column float).
    return pd.DataFrame(lines).astype({"runs": "Int64"}) if lines else pd.DataFrame(lines)


def write_landscape_table(experiment: Experiment, runs: list[PlannedRun], frame: pd.DataFrame, *, scale: str,
                          out: Path, note: str, quiet: bool = False) -> Mapping[str, str]:
    """Write OUT/<experiment>_landscape.md/.csv/.tex and print the summary line; the texts written, by suffix.
    `frame`: load_runs(..., landscape=experiment.settings["landscape"]), so the declared entries are chosen."""
    results = landscape_results(experiment, runs, frame)
    pairs = paired(experiment, results)
    cells = {(r.row, r.column) for r in results}
    done = len({(r.row, r.column) for r in results if r.mean is not None})
    grid = layout(experiment, results)
    stem = f"{experiment.name}_landscape"
    markdown = (f"# {experiment.title}: loss landscape\n\n{done} of {len(cells)} cells measured, {note}. Each cell: "
                "ours (not in the paper), the mean over the cell's finished runs measured with the experiment's "
                "declared settings, ±sd over seeds (docs/landscape.md).\n\n" + to_markdown(grid) + "\n")
    if any(p.n for p in pairs):
        markdown += ("\n## Paired differences\n\nEach cell: the row minus the reference row at the same column, "
                     "seed by seed on the seeds both measured: mean±sd (n pairs).\n\n"
                     + to_markdown(paired_layout(experiment, pairs)) + "\n")
    texts = {"md": markdown, "csv": long_form(results, pairs, scale).to_csv(index=False),
             "tex": to_latex(grid, f"{experiment.title} -- loss landscape, ours; {done} of {len(cells)} cells "
                                   f"measured ({scale} scale)")}
    for suffix, text in texts.items():
        atomic_write_text(Path(out) / f"{stem}.{suffix}", text)
    print(f"{stem}: {done} of {len(cells)} cells measured ({scale} scale) -> {Path(out) / stem}.md/.csv/.tex")
    if not quiet:
        print(f"\n{markdown}")
    return texts


__all__ = ["declares_landscape", "landscape_results", "layout", "metrics_of", "paired", "paired_layout",
           "reference_row", "write_landscape_table"]
