"""The loss-landscape table of an experiment that declares `settings["landscape"]`: ours only (no paper).

Rows are the experiment's methods, columns its batch sizes: one line per measure the experiment declares
(top Hessian eigenvalue, adaptive eigenvalue, trace, epsilon-sharpness; the `landscape.*` columns of
`analysis.records`), the norm of the perturbed weights (which a raw curvature depends on; shown, never
compared), then the accuracies it lists in `metrics` (training and test top-1, and the gap when it lists
both). A measure's cell is the mean over the cell's finished runs whose entry has exactly the declared
settings (`landscape.match == "requested"`: entries of other settings are measured on another sample and
are not comparable), `mean±sd (n=k)` with several seeds. The paper has no such numbers, so there is no
"/ paper" part.

Settings the table reads beside the launcher's `landscape` declaration (whose keys
conadv_repro/landscape_state.py checks):
  - `landscape_reference`: the row(s) the others are compared with, each a row label or a method name
    (default "vanilla");
  - `primary`: the measure the experiment's claims are tested on, declared before its runs (marked in the
    table; default the top eigenvalue);
  - `converged_train_top1`: runs below this training top-1 (eval mode) are not at a minimum; they are
    counted in their cell and listed under the table, not dropped.

Paired comparisons (analysis/landscape_stats.py), seed by seed in log space with 95% paired-t intervals:
each row against each reference row at the same column, and each row's last column against its first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.landscape_notes import between_summary, measuring_seconds, not_converged, unconverged
from analysis.landscape_stats import LogRatio, across_columns, against_references
from analysis.tables import METRIC_NAMES, CellResult, cell_results, to_latex, to_markdown
from conadv_repro.atomic import atomic_write_text
from conadv_repro.errors import UserError
from conadv_repro.launch.plan import PlannedRun
from conadv_repro.registry import Experiment

SETTING = "landscape"
REFERENCE_SETTING = "landscape_reference"
DEFAULT_REFERENCE = "vanilla"
PRIMARY_SETTING = "primary"
CONVERGED_SETTING = "converged_train_top1"
# measure (landscape/settings.MEASURES) -> its records column and label, in table order.
MEASURE_COLUMNS = {
    "eigenvalue": ("landscape.top_eigenvalue", "top eigenvalue"),
    "adaptive": ("landscape.adaptive_eigenvalue", "adaptive eigenvalue"),
    "trace": ("landscape.trace", "Hessian trace"),
    "epsilon": ("landscape.epsilon_sharpness", "epsilon-sharpness (%)"),
}
DEFAULT_MEASURES = ("eigenvalue", "adaptive")
# Shown beside the measures, never compared: the scale of the weights a raw curvature depends on, and the LR
# of the last update (curvature after training is bounded by the LR it ended with).
WEIGHT_NORM = ("landscape.weight_norm", "weight norm")
LAST_LR = ("landscape.last_lr", "last LR")
DESCRIPTIVE = (WEIGHT_NORM, LAST_LR)
ACCURACIES = ("train_top1", "test_top1")


def declares_landscape(experiment: Experiment) -> bool:
    return SETTING in experiment.settings


def metrics_of(experiment: Experiment) -> tuple[str, ...]:
    """The records columns of the measures the experiment declares (eigenvalue and adaptive by default)."""
    declared = experiment.settings.get(SETTING) or {}
    measures = [m for m in MEASURE_COLUMNS if m in (declared.get("measures") or DEFAULT_MEASURES)]
    return tuple(MEASURE_COLUMNS[m][0] for m in measures)


def accuracies_of(experiment: Experiment) -> tuple[str, ...]:
    """The accuracy lines: the experiment's training and test top-1 (as it lists them), and the gap with both."""
    listed = tuple(m for m in ACCURACIES if m in experiment.metrics)
    return listed + (("gap",) if len(listed) == len(ACCURACIES) else ())


def primary_of(experiment: Experiment) -> str:
    """The records column of the experiment's primary measure (`settings["primary"]`), one it declares."""
    primary = str(experiment.settings.get(PRIMARY_SETTING, MEASURE_COLUMNS["eigenvalue"][0]))
    declared = metrics_of(experiment)
    if PRIMARY_SETTING in experiment.settings and primary not in declared:
        raise UserError(f"experiment {experiment.name}: settings['{PRIMARY_SETTING}'] {primary!r} is not a measure it "
                        f"declares; allowed: {', '.join(declared)}")
    return primary


def label_of(metric: str, primary: str | None = None) -> str:
    label = next((label for column, label in (*MEASURE_COLUMNS.values(), *DESCRIPTIVE) if column == metric),
                 METRIC_NAMES.get(metric, metric))
    return f"{label} (primary)" if metric == primary else label


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows whose landscape entry has the requested settings (others' numbers are blanked)."""
    if frame.empty:
        return frame
    frame = frame.copy()
    # No run has a landscape entry at all (e.g. W&B records): every cell is missing.
    other = frame["landscape.match"] != "requested" if "landscape.match" in frame else pd.Series(True, frame.index)
    for column, _ in (*MEASURE_COLUMNS.values(), *DESCRIPTIVE):
        frame[column] = frame[column].astype(object).where(~other, None) if column in frame else None
    return frame


def landscape_results(experiment: Experiment, runs: list[PlannedRun], frame: pd.DataFrame) -> list[CellResult]:
    """tables.cell_results over the declared measures' columns, the weight norm and the last LR (on the
    comparable rows only), then over the accuracy columns (every finished run)."""
    measures = cell_results(replace(experiment, metrics=metrics_of(experiment) + tuple(c for c, _ in DESCRIPTIVE)),
                            runs, comparable(frame))
    accuracies = accuracies_of(experiment)
    return measures + (cell_results(replace(experiment, metrics=accuracies), runs, frame) if accuracies else [])


def cell_text(result: CellResult, flagged: int = 0) -> str:
    """Ours only: `mean`, `mean±sd (n=k)`, or `missing (statuses)`; `flagged` runs under the convergence line."""
    if result.mean is None:
        waiting = sorted({s for s in result.statuses if s not in ("finished", "missing")})
        return f"missing ({', '.join(waiting)})" if waiting else "missing"
    digits = ".2f" if result.metric in (*ACCURACIES, "gap") else ".4g"
    if result.std is not None:
        text = f"{result.mean:{digits}}±{result.std:.2g} (n={len(result.values)})"
    else:
        text = f"{result.mean:{digits}}" + (" (n=1)" if len(result.run_ids) > 1 else "")
    return text + (f", {flagged} unconverged" if flagged else "")


def references(experiment: Experiment) -> tuple[str, ...]:
    """The rows the others are compared with: `settings["landscape_reference"]`, one or several, each a row
    label or a method name (the row whose cells all train that method, without AutoAugment); names that fit no
    row are skipped."""
    wanted = experiment.settings.get(REFERENCE_SETTING, DEFAULT_REFERENCE)
    out: list[str] = []
    for name in ([wanted] if isinstance(wanted, str) else list(wanted)):
        row = name if name in experiment.rows else next(
            (r for r in experiment.rows
             if (cells := [c for c in experiment.cells if c.row == r])
             and all(c.overrides.get("method") == name and not c.overrides.get("autoaugment") for c in cells)), None)
        if row is not None and row not in out:
            out.append(row)
    return tuple(out)


def paired(experiment: Experiment, results: list[CellResult]) -> list[LogRatio]:
    """Every other row against each reference row, per column and measure: log ratios on the shared seeds."""
    measures = set(metrics_of(experiment))
    return against_references([r for r in results if r.metric in measures], experiment.rows, references(experiment))


def growth(experiment: Experiment, results: list[CellResult]) -> list[LogRatio]:
    """Each row's last column against its first (the batch size's effect), per measure, seed by seed."""
    measures = set(metrics_of(experiment))
    return across_columns([r for r in results if r.metric in measures], experiment.columns)


def _label(row: str, metric: str, metrics: tuple[str, ...], primary: str) -> str:
    return row if len(metrics) == 1 else f"{row}: {label_of(metric, primary)}"


def layout(experiment: Experiment, results: list[CellResult], flags: list[dict[str, Any]] | None = None
           ) -> pd.DataFrame:
    """One line per row and measure, the weight norm and last LR, then per row and accuracy; a training top-1
    cell counts its runs under the convergence line."""
    index = {(r.row, r.column, r.metric): r for r in results}
    metrics = metrics_of(experiment) + tuple(c for c, _ in DESCRIPTIVE) + accuracies_of(experiment)
    primary = primary_of(experiment)
    counts: dict[tuple[str, str], int] = {}
    for flag in flags or []:
        counts[(flag["row"], flag["column"])] = counts.get((flag["row"], flag["column"]), 0) + 1
    labels, rows = [], []
    for row in experiment.rows:
        for metric in metrics:
            labels.append(_label(row, metric, metrics, primary))
            rows.append([cell_text(index[(row, col, metric)], counts.get((row, col), 0) if metric == "train_top1" else 0)
                         if (row, col, metric) in index else "" for col in experiment.columns])
    return pd.DataFrame(rows, index=labels, columns=list(experiment.columns))


def paired_layout(experiment: Experiment, pairs: list[LogRatio]) -> pd.DataFrame:
    """One line per reference, compared row and measure, the experiment's columns."""
    index = {(p.row, p.column, p.metric, p.reference): p for p in pairs}
    metrics, primary = metrics_of(experiment), primary_of(experiment)
    labels, rows = [], []
    for reference in references(experiment):
        for row in experiment.rows:
            for metric in metrics:
                cells = [index.get((row, col, metric, reference)) for col in experiment.columns]
                if any(cells):
                    labels.append(_label(f"{row} / {reference}", metric, metrics, primary))
                    rows.append(["" if c is None else c.text() for c in cells])
    return pd.DataFrame(rows, index=labels, columns=list(experiment.columns))


def growth_layout(experiment: Experiment, ratios: list[LogRatio]) -> pd.DataFrame:
    """One line per row, one column per measure: log(last column / first column) seed by seed; then the primary
    measure's per-seed log ratios."""
    metrics, primary = metrics_of(experiment), primary_of(experiment)
    index = {(r.row, r.metric): r for r in ratios}
    rows = [[index[(row, m)].text() if (row, m) in index else "" for m in metrics]
            + [", ".join(f"{s}: {d:+.2f}" for s, d in zip(index[(row, primary)].seeds, index[(row, primary)].diffs,
                                                          strict=True)) if (row, primary) in index else ""]
            for row in experiment.rows]
    columns = [label_of(m, primary) for m in metrics] + [f"{label_of(primary)}, per seed"]
    return pd.DataFrame(rows, index=list(experiment.rows), columns=columns)


def long_form(results: list[CellResult], pairs: list[LogRatio], ratios: list[LogRatio], scale: str) -> pd.DataFrame:
    """One line per cell and metric (`kind` cell), per comparison with a reference row (`paired`: log ratios)
    and per row's growth across the columns (`growth`: log ratios, `reference` the first column)."""
    lines: list[dict[str, Any]] = [{
        "experiment": r.experiment, "kind": "cell", "row": r.row, "column": r.column, "metric": r.metric,
        "reference": "", "scale": scale, "mean": r.mean, "std": r.std, "ci_low": None, "ci_high": None,
        "n": len(r.values), "runs": len(r.run_ids), "run_ids": " ".join(r.run_ids), "statuses": " ".join(r.statuses),
        "seeds": " ".join(map(str, r.seeds)), "values": " ".join(f"{v:.6g}" for v in r.values)} for r in results]
    for kind, items in (("paired", pairs), ("growth", ratios)):
        lines += [{
            "experiment": p.experiment, "kind": kind, "row": p.row, "column": p.column, "metric": p.metric,
            "reference": p.reference, "scale": scale, "mean": p.mean, "std": p.std,
            "ci_low": p.ci[0] if p.ci else None, "ci_high": p.ci[1] if p.ci else None, "n": p.n, "runs": None,
            "run_ids": "", "statuses": "", "seeds": " ".join(map(str, p.seeds)),
            "values": " ".join(f"{d:.6g}" for d in p.diffs)} for p in items]
    # Integer counts even with the comparisons' empty `runs` (pandas would make the column float).
    return pd.DataFrame(lines).astype({"runs": "Int64"}) if lines else pd.DataFrame(lines)


LOG_NOTE = ("Each cell: log(row / reference) seed by seed on the seeds both measured: mean [95% paired-t "
            "interval] (the ratio exp(mean), n pairs). Below 0 the row is flatter than the reference; an interval "
            "that excludes 0 is beyond seed-to-seed noise.")


def write_landscape_table(experiment: Experiment, runs: list[PlannedRun], frame: pd.DataFrame, *, scale: str,
                          out: Path, note: str, quiet: bool = False) -> Mapping[str, str]:
    """Write OUT/<experiment>_landscape.md/.csv/.tex and print the summary line; the texts written, by suffix.
    `frame`: load_runs(..., landscape=experiment.settings["landscape"]), so the declared entries are chosen."""
    results = landscape_results(experiment, runs, frame)
    measures = set(metrics_of(experiment))
    pairs, ratios = paired(experiment, results), growth(experiment, results)
    flags = unconverged(experiment, runs, frame, experiment.settings.get(CONVERGED_SETTING))
    cells = {(r.row, r.column) for r in results}
    done = len({(r.row, r.column) for r in results if r.mean is not None and r.metric in measures})
    grid = layout(experiment, results, flags)
    stem = f"{experiment.name}_landscape"
    primary = label_of(primary_of(experiment))
    markdown = (f"# {experiment.title}: loss landscape\n\n{done} of {len(cells)} cells measured, {note}. Each cell: "
                "ours (not in the paper), the mean over the cell's finished runs measured with the experiment's "
                f"declared settings, ±sd over seeds (docs/landscape.md). The primary measure is the {primary}; "
                "the others are secondary.\n\n" + to_markdown(grid) + "\n")
    threshold = experiment.settings.get(CONVERGED_SETTING)
    if threshold is not None:
        markdown += (f"\nRuns under {float(threshold):g}% training top-1 (eval mode), not at a minimum: "
                     + (", ".join(f"{f['row']} {f['column']} seed {f['seed']} ({f['run_id']}, {f['train_top1']:.2f}%)"
                                  for f in flags) or "none") + ". They are counted in the cells above, not dropped.\n")
    unmet = not_converged(experiment, runs, comparable(frame), metrics_of(experiment))
    if unmet:
        markdown += ("\nPower iterations that stopped at their limit of iterations before the tolerance (the value is "
                     "then a lower bound): " + "; ".join(f"{label_of(m)} {n}" for m, n in unmet.items()) + ".\n")
    spent = measuring_seconds(experiment, runs, comparable(frame), metrics_of(experiment)[0]) \
        if metrics_of(experiment) else None
    if spent:
        markdown += f"\nMeasuring: {spent} (the entries' own times; training not counted).\n"
    if any(p.n for p in pairs):
        markdown += "\n## Paired differences in log\n\n" + LOG_NOTE + "\n\n" + to_markdown(paired_layout(experiment, pairs)) + "\n"
    if any(r.n for r in ratios):
        first, last = experiment.columns[0], experiment.columns[-1]
        markdown += (f"\n## From {first} to {last}\n\nEach cell: log(value at {last} / value at {first}) seed by seed, "
                     "within the row: mean [95% paired-t interval] (the ratio, n seeds). Above 0 the larger batch "
                     "ends sharper.\n\n" + to_markdown(growth_layout(experiment, ratios)) + "\n")
    line = between_summary(experiment, runs)
    if line:
        markdown += f"\n## The line between two runs\n\n{line}.\n"
    texts = {"md": markdown, "csv": long_form(results, pairs, ratios, scale).to_csv(index=False),
             "tex": to_latex(grid, f"{experiment.title} -- loss landscape, ours; {done} of {len(cells)} cells "
                                   f"measured ({scale} scale)")}
    for suffix, text in texts.items():
        atomic_write_text(Path(out) / f"{stem}.{suffix}", text)
    print(f"{stem}: {done} of {len(cells)} cells measured ({scale} scale) -> {Path(out) / stem}.md/.csv/.tex")
    if not quiet:
        print(f"\n{markdown}")
    return texts


__all__ = ["comparable", "declares_landscape", "growth", "landscape_results", "layout", "metrics_of", "paired",
           "paired_layout", "references", "write_landscape_table"]
