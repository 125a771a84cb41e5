"""The paper's figures from run records: Figure 2 and one training-curve figure per experiment.

Pure functions from records (`analysis.records`) to matplotlib figures and their bytes; no file is
written here (`analysis/make_figures.py` writes them atomically) and the training code is never
imported. Several seeds of a cell (the proxy scale) are drawn as their mean with the standard
deviation as error bars (Figure 2) or a band (curves).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402 - after choosing the backend
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis.records import load_curves  # noqa: E402
from conadv_repro.batch_sizes import parse_batch  # noqa: E402
from conadv_repro.launch.plan import PlannedRun  # noqa: E402
from conadv_repro.presets import SCALE_DESCRIPTIONS  # noqa: E402
from conadv_repro.registry import Experiment  # noqa: E402

FORMATS = ("png", "pdf")
DPI = 150
# What a reader may conclude from a scale's numbers, written on every figure.
SCALE_NOTES = {
    "smoke": "smoke scale: plumbing only (a few steps on the embedded digits), not comparable to the paper",
    "proxy": "proxy scale: the paper's effects in miniature on the embedded digits; compare trends, not values",
    "cifar10": "cifar10 scale: CIFAR-10, ResNet-18; compare trends, not values",
    "paper": "paper scale: ImageNet, ResNet-50, 90 epochs",
}
# Legend titles of columns that are not batch sizes (Table 5's "p=3").
COLUMN_TITLES = {"p": "perturbation p\n(0-255 pixel units)"}
ROW_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
# Figure 2's "not run" marks: heights in axes fractions (0 is the bottom of the plot), one step per row.
NOT_RUN_Y = 0.03
NOT_RUN_STEP = 0.04


def scale_note(scale: str) -> str:
    return SCALE_NOTES.get(scale) or f"{scale} scale: {SCALE_DESCRIPTIONS.get(scale, 'unknown')}"


@dataclass
class CellRuns:
    """One cell of an experiment with its planned runs and those of them that finished."""

    row: str
    column: str
    paper_batch: str
    batch_size: int | None
    paper: Mapping[str, float]
    run_ids: list[str] = field(default_factory=list)
    finished: list[dict[str, Any]] = field(default_factory=list)  # load_runs rows

    def values(self, metric: str = "test_top1") -> list[float]:
        out = []
        for run in self.finished:
            value = run.get(metric)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                out.append(float(value))
        return out


def runs_by_use(runs: Iterable[PlannedRun]) -> dict[tuple[str, str, str], list[PlannedRun]]:
    """(experiment, row, column) -> the planned runs of that cell (a run shared by cells is in each)."""
    by_use: dict[tuple[str, str, str], list[PlannedRun]] = {}
    for run in runs:
        for use in run.uses:
            by_use.setdefault(tuple(use), []).append(run)
    return by_use


def cells_with_runs(experiment: Experiment, runs: Iterable[PlannedRun], records: pd.DataFrame) -> list[CellRuns]:
    """Each cell of `experiment` (in declaration order) with its planned run ids and finished runs."""
    by_use = runs_by_use(runs)
    finished: dict[str, dict[str, Any]] = {}
    if not records.empty and "status" in records:
        for row in records[records["status"] == "finished"].to_dict("records"):
            finished[str(row["run_id"])] = row
    cells = []
    for cell in experiment.cells:
        planned = by_use.get((experiment.name, cell.row, cell.column), [])
        ids = [run.run_id for run in planned]
        cells.append(CellRuns(
            row=cell.row, column=cell.column, paper_batch=cell.paper_batch,
            batch_size=planned[0].config.batch_size if planned else None, paper=dict(cell.paper),
            run_ids=ids, finished=[finished[i] for i in ids if i in finished]))
    return cells


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return mean, std


def _batch_label(paper_batch: str, batch_size: int | None, scale: str) -> str:
    if scale == "paper" or batch_size is None:
        return paper_batch
    return f"{paper_batch}\n({batch_size})"


def _seeds_phrase(counts: Iterable[int], unit: str = "point") -> str:
    counts = sorted(set(counts))
    if not counts:
        return ""
    if counts == [1]:
        return f"1 run per {unit}"
    span = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"mean ± std of {span} seeds"


def figure2(experiment: Experiment, cells: list[CellRuns], scale: str) -> Figure:
    """Top-1 against the paper batch size (log2 axis), ours filled and solid, the paper's hollow and dashed."""
    columns = list(experiment.columns)
    batch_of = {c.column: c for c in cells}
    xs = {col: math.log2(parse_batch(batch_of[col].paper_batch) / 1024) for col in columns}
    fig = Figure(figsize=(9.0, 5.6), layout="constrained")
    ax = fig.add_subplot()
    colours = matplotlib.colormaps["tab10"]
    counts = [len(c.values()) for c in cells if c.values()]
    phrase = _seeds_phrase(counts)
    for i, row in enumerate(experiment.rows):
        colour = colours(i % 10)
        marker = ROW_MARKERS[i % len(ROW_MARKERS)]
        row_cells = {c.column: c for c in cells if c.row == row}
        x = [xs[col] for col in columns]
        ours = [_mean_std(row_cells[col].values()) if col in row_cells else (math.nan, math.nan) for col in columns]
        mean = [m for m, _ in ours]
        std = [s for _, s in ours]
        paper = [row_cells[col].paper.get("test_top1", math.nan) if col in row_cells else math.nan
                 for col in columns]
        ax.plot(x, paper, linestyle="--", linewidth=1.4, marker=marker, markersize=8, color=colour,
                markerfacecolor="white", markeredgewidth=1.6, label=f"{row}: paper")
        if not all(math.isnan(m) for m in mean):
            label = f"{row}: ours ({scale} scale{', ' + phrase if phrase else ''})"
            ax.errorbar(x, mean, yerr=[0.0 if math.isnan(s) else s for s in std], linestyle="-",
                        linewidth=2.0, marker=marker, markersize=8, color=colour, markerfacecolor=colour,
                        markeredgecolor=colour, capsize=4, label=label)
        not_run = [col for col, (m, _) in zip(columns, ours, strict=True) if math.isnan(m)]
        if not_run:
            # A point without a finished run would otherwise just be absent, which reads as "not in the
            # paper": mark it at the bottom of the axis, one height per row so that two rows stay apart.
            ax.plot([xs[col] for col in not_run], [NOT_RUN_Y + NOT_RUN_STEP * i] * len(not_run), linestyle="none",
                    marker="x", markersize=9, markeredgewidth=2.0, color=colour, transform=ax.get_xaxis_transform(),
                    clip_on=False, label=f"{row}: ours, not run (no finished run) at {', '.join(not_run)}")
    ax.set_xticks([xs[col] for col in columns])
    ax.set_xticklabels([_batch_label(batch_of[col].paper_batch, batch_of[col].batch_size, scale)
                        for col in columns])
    ax.set_xlabel("batch size (paper scale, log2 axis)" if scale == "paper" else
                  f"batch size (paper scale, log2 axis; trained batch at the {scale} scale in parentheses)")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"{experiment.title} ({scale} scale)\n{scale_note(scale)}", fontsize=11)
    return fig


@dataclass
class Curve:
    """One cell's test top-1 against epoch: the mean over its finished runs and their std."""

    row: str
    column: str
    batch_size: int | None
    paper_batch: str
    epoch: list[float]
    mean: list[float]
    std: list[float]
    runs: int


def run_curve(run: Mapping[str, Any]) -> dict[float, float]:
    """Test top-1 by epoch of one run: its epoch rows, plus the final evaluation where training ended
    between epochs (a smoke run can stop before its first full epoch)."""
    points: dict[float, float] = {}
    curve = load_curves(Path(str(run["run_dir"])))
    if not curve.empty and {"epoch", "test_top1"} <= set(curve.columns):
        for epoch, top1 in zip(curve["epoch"], curve["test_top1"], strict=True):
            if pd.notna(epoch) and pd.notna(top1):
                points[round(float(epoch), 6)] = float(top1)
    steps = run.get("steps_done")
    per_epoch = run.get("derived.steps_per_epoch")
    final = run.get("test_top1")
    if all(v is not None and pd.notna(v) for v in (steps, per_epoch, final)) and per_epoch:
        end = round(float(steps) / float(per_epoch), 6)
        if not points or end > max(points) + 1e-6:
            points[end] = float(final)
    return points


def curves_of(cells: list[CellRuns]) -> list[Curve]:
    out = []
    for cell in cells:
        per_run = [run_curve(run) for run in cell.finished]
        per_run = [p for p in per_run if p]
        if not per_run:
            continue
        epochs = sorted({e for p in per_run for e in p})
        stats = [_mean_std([p[e] for p in per_run if e in p]) for e in epochs]
        out.append(Curve(cell.row, cell.column, cell.batch_size, cell.paper_batch, epochs,
                         [m for m, _ in stats], [s for _, s in stats], len(per_run)))
    return out


def column_colours(columns: Sequence[str]) -> dict[str, Any]:
    """A clearly distinct colour per column from a qualitative map, by the column's rank in size (batch
    sizes; else the declared order, Table 5's p): a continuous map gave 1k, 4k and 8k nearly one colour.
    Ranked over all of an experiment's columns, so a column keeps its colour as more runs finish."""
    try:
        ordered = sorted(columns, key=parse_batch)
    except ValueError:
        ordered = list(columns)
    if len(ordered) <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return {col: cmap(rank) for rank, col in enumerate(ordered)}
    # tab20 pairs a dark and a light shade of each hue: the ten dark ones first, then the light ones, so
    # that neighbouring ranks never share a hue.
    cmap = matplotlib.colormaps["tab20"]
    return {col: cmap((2 * rank) % 20 + (2 * rank) // 20 % 2) for rank, col in enumerate(ordered)}


def curves_figure(experiment: Experiment, curves: list[Curve], scale: str) -> Figure:
    """One subplot per row of the experiment (rows with a finished run), one line per column, each
    column its own colour (`column_colours`)."""
    rows = [row for row in experiment.rows if any(c.row == row for c in curves)]
    ncols = min(3, len(rows))
    nrows = math.ceil(len(rows) / ncols)
    fig = Figure(figsize=(3.9 * ncols + 1.9, 3.2 * nrows + 1.1), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    columns = [col for col in experiment.columns if any(c.column == col for c in curves)]
    colour_of = column_colours(experiment.columns)
    is_batch = all(c.column == c.paper_batch for c in curves)
    handles: dict[str, Any] = {}
    for index, row in enumerate(rows):
        ax = axes[index // ncols][index % ncols]
        row_curves = [c for c in curves if c.row == row]
        for curve in row_curves:
            colour = colour_of.get(curve.column, "black")
            marker = "o" if len(curve.epoch) <= 12 else None  # a few points (smoke) must still show
            (line,) = ax.plot(curve.epoch, curve.mean, marker=marker, markersize=4, linewidth=1.6, color=colour)
            if curve.runs > 1:
                low = [m - s for m, s in zip(curve.mean, curve.std, strict=True)]
                high = [m + s for m, s in zip(curve.mean, curve.std, strict=True)]
                ax.fill_between(curve.epoch, low, high, color=colour, alpha=0.2, linewidth=0)
            if is_batch and curve.batch_size is not None and scale != "paper":
                label = f"{curve.column} ({curve.batch_size})"
            else:
                label = curve.column
            handles.setdefault(curve.column, (line, label))
        title = row
        if not is_batch:
            trained = sorted({c.batch_size for c in row_curves if c.batch_size is not None})
            if trained and scale != "paper":
                title += f" (trained batch {', '.join(map(str, trained))})"
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
    for index in range(nrows * ncols):
        ax = axes[index // ncols][index % ncols]
        if index >= len(rows):
            ax.set_visible(False)
            continue
        if index % ncols == 0:
            ax.set_ylabel("test top-1 (%)")
        # Every panel shows its epochs: sharex hides them above another panel, which left a panel with a
        # labelled neighbour (nothing below it) looking unlabelled, e.g. Table 1's first of four.
        ax.xaxis.set_tick_params(labelbottom=True)
        if index // ncols == nrows - 1 or index + ncols >= len(rows):
            ax.set_xlabel("epoch (passes over the training set)")
    ordered = [handles[col] for col in columns if col in handles]
    if is_batch:
        legend_title = "paper batch" if scale == "paper" else "paper batch\n(trained batch)"
    else:
        prefixes = {c.column.partition("=")[0] for c in curves if "=" in c.column}
        prefix = prefixes.pop() if len(prefixes) == 1 and all("=" in c.column for c in curves) else ""
        legend_title = COLUMN_TITLES.get(prefix, prefix or "column")
    fig.legend([h for h, _ in ordered], [label for _, label in ordered], loc="outside right upper",
               title=legend_title, fontsize=8, title_fontsize=8)
    seeds = _seeds_phrase((c.runs for c in curves), "line")
    fig.suptitle(f"{experiment.title}: training curves ({scale} scale, {seeds})\n{scale_note(scale)}",
                 fontsize=11)
    return fig


def render(fig: Figure, fmt: str) -> bytes:
    """The figure as PNG or PDF bytes, without timestamps, so an unchanged figure is byte-identical."""
    buffer = io.BytesIO()
    metadata: dict[str, Any] = {"Software": None} if fmt == "png" else {"CreationDate": None, "Producer": None}
    fig.savefig(buffer, format=fmt, dpi=DPI, metadata=metadata)
    return buffer.getvalue()
