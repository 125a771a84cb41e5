"""The loss-landscape figure of an experiment that declares `settings["landscape"]` (ours, not the paper's).

Left: the top Hessian eigenvalue against the trained batch size (log2 axis), one point per measured run
and a line through each method's means. Right: the random filter-normalised slice, training loss against
alpha, one line per run, coloured by method. Only runs whose entry has the declared settings are drawn
(as in analysis/landscape_table.py). Pure: records in, a matplotlib Figure out; no torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402

from analysis.figures import CellRuns, scale_note  # noqa: E402
from analysis.landscape_table import SETTING  # noqa: E402
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


def landscape_figure(experiment: Experiment, cells: list[CellRuns], scale: str) -> Figure | None:
    """The figure, or None when no run of the experiment is measured with its declared settings."""
    points = [(cell, run, measured(run)) for cell in cells for run in cell.finished]
    points = [(cell, run, value) for cell, run, value in points if value is not None]
    if not points:
        return None
    fig = Figure(figsize=(11.0, 4.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    colours = matplotlib.colormaps["tab10"]
    declared = experiment.settings.get(SETTING)
    for i, row in enumerate(experiment.rows):
        colour = colours(i % 10)
        mine = [(cell, run, value) for cell, run, value in points if cell.row == row]
        if not mine:
            continue
        # Trained batch from the run's own record: at the smaller scales it is not the paper's.
        xs = [float(run.get("batch_size") or cell.batch_size or math.nan) for cell, run, _ in mine]
        left.scatter(xs, [v for _, _, v in mine], color=colour, s=28, zorder=3, label=f"{row} (one point per run)")
        means: dict[float, list[float]] = {}
        for x, (_, _, value) in zip(xs, mine, strict=True):
            means.setdefault(x, []).append(value)
        order = sorted(means)
        left.plot(order, [sum(means[x]) / len(means[x]) for x in order], color=colour, linewidth=1.4, alpha=0.8)
        labelled = False
        for _, run, _ in mine:
            curve = load_slices(Path(str(run["run_dir"])), declared)
            curve = curve[curve["kind"] == "random"].sort_values("alpha")
            if curve.empty:
                continue
            right.plot(curve["alpha"], curve["loss"], color=colour, linewidth=1.2, alpha=0.8,
                       label=None if labelled else row)
            labelled = True
    left.set_xscale("log", base=2)
    left.set_xlabel("trained batch size (log2 axis)")
    left.set_ylabel("top Hessian eigenvalue of the training loss")
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    right.set_xlabel("alpha (filter-normalised random direction)")
    right.set_ylabel("training loss on the sample")
    right.set_title("1-D slices, one line per run", fontsize=10)
    right.grid(True, alpha=0.3)
    if right.lines:
        right.legend(fontsize=8)
    else:
        right.text(0.5, 0.5, "no slice measured", ha="center", va="center", transform=right.transAxes)
    counts: dict[tuple[str, str], int] = {}
    for cell, _, _ in points:
        counts[(cell.row, cell.column)] = counts.get((cell.row, cell.column), 0) + 1
    span = sorted(set(counts.values()))
    runs = str(span[0]) if len(span) == 1 else f"{span[0]}-{span[-1]}"
    per_cell = f"{runs} run{'s' if runs != '1' else ''} per cell"
    fig.suptitle(f"{experiment.title}: loss landscape ({scale} scale, {per_cell}, lines through their means; "
                 f"ours, not in the paper)\n{scale_note(scale)}", fontsize=10)
    return fig


__all__ = ["landscape_figure", "measured"]
