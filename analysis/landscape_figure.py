"""The loss-landscape figures of an experiment that declares `settings["landscape"]` (ours, not the paper's).

`landscape_figure`: one panel per declared measure (top Hessian eigenvalue, adaptive eigenvalue, trace,
epsilon-sharpness) against the trained batch size, log axes, one point per measured run and a line through
each method's geometric means; then one panel of lines: the random filter-normalised slices (training loss
against alpha, one line per run, coloured by method) and the lines between two runs (`--between`, dashed).

`paired_figure`: the log ratios of analysis/landscape_stats.py with their 95% intervals, one panel per
reference row (each other row against it, per column) and one for the growth from the first column to the
last, for the primary measure.

Only runs whose entry has the declared settings are drawn (as in analysis/landscape_table.py). Pure: records
in, a matplotlib Figure out; no torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402

from analysis.figures import CellRuns, scale_note  # noqa: E402
from analysis.landscape_stats import LogRatio  # noqa: E402
from analysis.landscape_table import SETTING, label_of, metrics_of, primary_of, references  # noqa: E402
from analysis.records import load_slices  # noqa: E402
from conadv_repro.registry import Experiment  # noqa: E402

METRIC = "landscape.top_eigenvalue"


def measured(run: dict[str, Any], metric: str = METRIC) -> float | None:
    """The run's value of `metric` when its entry has the declared settings, else None."""
    value = run.get(metric)
    if run.get("landscape.match") != "requested" or value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _per_cell(points: list[tuple[CellRuns, dict[str, Any], float]]) -> str:
    counts: dict[tuple[str, str], int] = {}
    for cell, _, _ in points:
        counts[(cell.row, cell.column)] = counts.get((cell.row, cell.column), 0) + 1
    span = sorted(set(counts.values()))
    runs = str(span[0]) if len(span) == 1 else f"{span[0]}-{span[-1]}"
    return f"{runs} run{'s' if runs != '1' else ''} per cell"


def _draw_measure(axis: Any, experiment: Experiment, cells: list[CellRuns], metric: str, primary: str) -> None:
    colours = matplotlib.colormaps["tab10"]
    for i, row in enumerate(experiment.rows):
        mine = [(cell, run, measured(run, metric)) for cell in cells if cell.row == row for run in cell.finished]
        mine = [(cell, run, value) for cell, run, value in mine if value is not None]
        if not mine:
            continue
        # Trained batch from the run's own record: at the smaller scales it is not the paper's.
        xs = [float(run.get("batch_size") or cell.batch_size or math.nan) for cell, run, _ in mine]
        axis.scatter(xs, [v for _, _, v in mine], color=colours(i % 10), s=22, zorder=3, alpha=0.8, label=row)
        groups: dict[float, list[float]] = {}
        for x, (_, _, value) in zip(xs, mine, strict=True):
            groups.setdefault(x, []).append(value)
        order = sorted(groups)
        if all(v > 0 for vs in groups.values() for v in vs):  # geometric means on the log axis
            means = [math.exp(sum(math.log(v) for v in groups[x]) / len(groups[x])) for x in order]
        else:
            means = [sum(groups[x]) / len(groups[x]) for x in order]
        axis.plot(order, means, color=colours(i % 10), linewidth=1.4, alpha=0.8)
    axis.set_xscale("log", base=2)
    if all(v > 0 for line in axis.lines for v in line.get_ydata()) and axis.lines:
        axis.set_yscale("log")
    axis.set_xlabel("trained batch size (log2 axis)")
    axis.set_ylabel(label_of(metric, primary))
    axis.grid(True, alpha=0.3, which="both")


def _draw_lines(axis: Any, experiment: Experiment, cells: list[CellRuns]) -> None:
    colours = matplotlib.colormaps["tab10"]
    declared = experiment.settings.get(SETTING)
    # A line's other end named by its cell (the run id when it is no run of this experiment).
    cell_of = {str(run["run_id"]): f"{cell.row} {cell.column}" for cell in cells for run in cell.finished}
    labelled: set[str] = set()
    for i, row in enumerate(experiment.rows):
        for cell in (c for c in cells if c.row == row):
            for run in cell.finished:
                curves = load_slices(Path(str(run["run_dir"])), declared)
                for kind, style in (("random", "-"), ("between", "--")):
                    for other, curve in curves[curves["kind"] == kind].groupby("other", dropna=False):
                        curve = curve.sort_values("alpha")
                        name = (f"{row}, random slice" if kind == "random"
                                else f"{row} {cell.column} → {cell_of.get(str(other), f'run {other}')}")
                        axis.plot(curve["alpha"], curve["loss"], style, color=colours(i % 10), linewidth=1.2,
                                  alpha=0.8, label=None if name in labelled else name)
                        labelled.add(name)
    axis.set_xlabel("alpha")
    axis.set_ylabel("training loss on the sample")
    axis.set_title("1-D lines: random filter-normalised slices (solid);\nbetween two runs, 0 = the first (dashed)",
                   fontsize=9)
    axis.grid(True, alpha=0.3)
    if axis.lines:
        axis.set_yscale("log")
        axis.legend(fontsize=7)
    else:
        axis.text(0.5, 0.5, "no slice or line between runs measured", ha="center", va="center",
                  transform=axis.transAxes)


def landscape_figure(experiment: Experiment, cells: list[CellRuns], scale: str) -> Figure | None:
    """The measures against the batch size and the 1-D lines, or None when no run of the experiment is
    measured with its declared settings."""
    metrics = metrics_of(experiment)
    points = [(cell, run, measured(run, metrics[0] if metrics else METRIC)) for cell in cells for run in cell.finished]
    points = [(cell, run, value) for cell, run, value in points if value is not None]
    if not points:
        return None
    primary = primary_of(experiment)
    fig = Figure(figsize=(4.6 * (len(metrics) + 1), 4.4), layout="constrained")
    axes = fig.subplots(1, len(metrics) + 1)
    for axis, metric in zip(axes, metrics, strict=False):
        _draw_measure(axis, experiment, cells, metric, primary)
    axes[0].legend(fontsize=8)
    _draw_lines(axes[-1], experiment, cells)
    fig.suptitle(f"{experiment.title}: loss landscape ({scale} scale, {_per_cell(points)}, one point per run, "
                 f"lines through geometric means; ours, not in the paper)\n{scale_note(scale)}", fontsize=10)
    return fig


def paired_figure(experiment: Experiment, pairs: list[LogRatio], growth: list[LogRatio], scale: str
                  ) -> Figure | None:
    """The primary measure's log ratios with 95% intervals, or None when there is no pair with an interval."""
    primary = primary_of(experiment)
    panels = [(f"against {reference}", [p for p in pairs if p.reference == reference and p.metric == primary])
              for reference in references(experiment)]
    panels.append((f"{experiment.columns[-1]} against {experiment.columns[0]}, within each row",
                   [g for g in growth if g.metric == primary]))
    panels = [(title, [p for p in items if p.ci is not None]) for title, items in panels]
    panels = [(title, items) for title, items in panels if items]
    if not panels:
        return None
    fig = Figure(figsize=(4.8 * len(panels), 0.5 + 0.32 * max(len(items) for _, items in panels) + 1.6),
                 layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for axis, (title, items) in zip(axes, panels, strict=True):
        labels = [f"{p.row} {p.column}" if p.reference != experiment.columns[0] else p.row for p in items]
        ys = list(range(len(items)))[::-1]
        for y, p in zip(ys, items, strict=True):
            lo, hi = p.ci  # type: ignore[misc]
            beyond = lo > 0 or hi < 0
            axis.plot([lo, hi], [y, y], color="black" if beyond else "grey", linewidth=2)
            axis.plot([p.mean], [y], "o", color="black" if beyond else "grey")
        axis.axvline(0.0, color="red", linewidth=1, alpha=0.6)
        axis.set_yticks(ys, labels, fontsize=8)
        axis.set_xlabel("log ratio (mean, 95% paired-t interval)")
        axis.set_title(title, fontsize=10)
        axis.grid(True, axis="x", alpha=0.3)
    fig.suptitle(f"{experiment.title}\n{label_of(primary)}: paired log ratios over seeds ({scale} scale; black: the "
                 "interval excludes 0; ours, not in the paper)", fontsize=10)
    return fig


__all__ = ["landscape_figure", "measured", "paired_figure"]
