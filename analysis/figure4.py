"""Figure 4 (throughput against the batch size) from the runs, beside the paper's points and the model's.

A point's throughput is the median `images_per_s` of its run's train rows after the first (the first
window holds start-up: data loaders, the attack workers' first broadcast), shown in images/ms as in the
paper. Several seeds of a point (the proxy scale) are drawn as their mean and standard deviation.

Beside them:
- the paper's points: only those the text of section 4.2 states (hollow markers, dashed), and ConAdv at
  the stated ratio over DisAdv's stated points (hollow stars, labelled as derived from the text);
- the performance model's curves for the paper's setting (ResNet-50 at 224 px, the panel's devices per
  batch), from a calibration (dotted), its assumptions written under the plot.

Pure functions from records to a matplotlib figure; `analysis/make_figures.py` writes the files.
"""

from __future__ import annotations

import math
import statistics
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis.figures import runs_by_use, scale_note  # noqa: E402
from analysis.records import mixed_layout  # noqa: E402
from conadv_repro.atomic import read_json_dict, read_jsonl  # noqa: E402
from conadv_repro.batch_sizes import parse_batch  # noqa: E402
from conadv_repro.launch.plan import PlannedRun  # noqa: E402
from conadv_repro.registry import Experiment  # noqa: E402
from conadv_repro.runfiles import METRICS_FILE, RECORD_FILE  # noqa: E402
from conadv_repro.throughput_model import (  # noqa: E402
    PAPER_NETWORK,
    Calibration,
    assumptions_text,
    calibration_from_choice,
    costs_for,
    find_calibration,
    published_anchor,
    step_time,
)

NAME = "figure4"
METHOD_STYLE = {"vanilla": (0, "o"), "disadv": (1, "s"), "conadv": (2, "^")}
METHOD_LABEL = {"vanilla": "ResNet-50 (vanilla)", "disadv": "DisAdv", "conadv": "ConAdv"}


def run_images_per_s(run_dir: Path) -> float | None:
    """Median images/s of a run's train rows after the first (None with fewer than two rows)."""
    rows = [r for r in read_jsonl(Path(run_dir) / METRICS_FILE) if r.get("kind") == "train"
            and isinstance(r.get("images_per_s"), (int, float)) and math.isfinite(r["images_per_s"])]
    rows.sort(key=lambda r: r.get("step", 0))
    if len(rows) < 2:
        return None
    return float(statistics.median(float(r["images_per_s"]) for r in rows[1:]))


@dataclass
class Point:
    """One point of Figure 4: a panel, a method, a paper batch, its runs and their throughput."""

    panel: str
    row: str
    method: str
    column: str
    batch_size: int | None
    trainers: int
    attack_workers: int
    paper: float | None
    run_ids: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    images_per_ms: list[float] = field(default_factory=list)
    setups: list[str] = field(default_factory=list)  # what each measured run recorded
    devices: list[str] = field(default_factory=list)
    mixed_layout: list[str] = field(default_factory=list)  # finished runs flagged, not measured

    @property
    def x(self) -> float:
        return math.log2(parse_batch(self.column))


def _setup(record: Mapping[str, Any]) -> str:
    """What a run recorded: its trainers, attack workers and executor (older records: 1 trainer, none)."""
    dist = {"trainers": 1, "attack_workers": 0, **(record.get("distributed") or {})}
    trainers, workers = int(dist.get("trainers") or 1), int(dist.get("attack_workers") or 0)
    text = f"{trainers} trainer{'s' if trainers != 1 else ''}"
    if workers:
        text += f" + {workers} attack worker{'s' if workers != 1 else ''}"
    executor = record.get("executor")
    return text + (f", executor {executor}" if executor else "")


def figure4_points(experiment: Experiment, runs: Iterable[PlannedRun], records: pd.DataFrame) -> list[Point]:
    """Every cell of Figure 4 with its planned runs and the throughput of those that finished."""
    by_use = runs_by_use(runs)
    rows: dict[str, dict[str, Any]] = {}
    if not records.empty and "run_id" in records:
        rows = {str(r["run_id"]): r for r in records.to_dict("records")}
    points = []
    for cell in experiment.cells:
        planned = by_use.get((experiment.name, cell.row, cell.column), [])
        panel, _, label = cell.row.partition(" ")
        cfg = planned[0].config if planned else None
        point = Point(panel=panel, row=label, method=str(cell.overrides.get("method", "vanilla")), column=cell.column,
                      batch_size=cfg.batch_size if cfg else None,
                      trainers=max(1, cfg.runtime.trainers) if cfg else 1,
                      attack_workers=cfg.conadv.attack_workers if cfg else 0,
                      paper=cell.paper.get("images_per_ms"))
        for run in planned:
            row = rows.get(run.run_id)
            status = str(row["status"]) if row else "missing"
            point.run_ids.append(run.run_id)
            point.statuses.append(status)
            if status != "finished":
                continue
            record = read_json_dict(Path(str(row["run_dir"])) / RECORD_FILE) or {}
            if mixed_layout(record):  # resumed on another layout: its throughput measures none of them
                point.mixed_layout.append(run.run_id)
                continue
            rate = run_images_per_s(Path(str(row["run_dir"])))
            if rate is None:
                continue
            point.images_per_ms.append(rate / 1000.0)
            point.setups.append(_setup(record))
            device = row.get("device")
            if isinstance(device, str) and device:
                point.devices.append(device)
        points.append(point)
    return points


@dataclass
class ModelCurve:
    panel: str
    label: str
    method: str
    batches: list[str]
    images_per_ms: list[float]
    devices: list[int]


def model_curves(experiment: Experiment, calibration: Calibration) -> list[ModelCurve]:
    """The model's throughput for the paper's setting: ResNet-50 at 224 px, per panel PER_WORKER examples
    per trainer, ConAdv with as many attack workers as trainers and, for comparison, without any."""
    costs = costs_for(calibration, PAPER_NETWORK)
    per_worker = experiment.settings.get("per_worker", {})
    curves = []
    for panel, batches in experiment.settings.get("panels", {}).items():
        per = int(per_worker.get(panel, 64))
        variants = [("vanilla", 0, "vanilla"), ("disadv", 0, "DisAdv"), ("conadv", 0, "ConAdv, no attack workers"),
                    ("conadv", 1, "ConAdv + attack workers")]
        for method, workers, label in variants:
            rates, devices = [], []
            for batch in batches:
                size = parse_batch(batch)
                trainers = max(1, size // per)
                step = step_time(method, size, trainers, trainers * workers, costs)
                rates.append(step.images_per_ms)
                devices.append(step.devices)
            curves.append(ModelCurve(panel, label, method, list(batches), rates, devices))
    return curves


def _axis_label(points: list[Point], column: str, scale: str) -> str:
    if scale == "paper":
        return column
    trained = next((p.batch_size for p in points if p.column == column and p.batch_size), None)
    return column if trained is None else f"{column}\n({trained})"


def hardware(points: list[Point]) -> str:
    names = sorted({d for p in points for d in p.devices})
    return ", ".join(names) if names else "unrecorded hardware"


def figure4(experiment: Experiment, points: list[Point], scale: str, calibration: Calibration | None) -> Figure:
    """Two panels, (a) and (b): images/ms against the paper batch (log2 axis; log y, since a small scale's
    measured throughput and the paper's differ by orders of magnitude)."""
    panels = list(experiment.settings.get("panels", {}))
    ratio = experiment.settings.get("paper_ratio", {})
    per_worker = experiment.settings.get("per_worker", {})
    curves = model_curves(experiment, calibration) if calibration is not None else []
    fig = Figure(figsize=(13.0, 8.4 if calibration is not None else 7.0), layout="constrained")
    grid = fig.add_gridspec(2 if calibration is not None else 1, len(panels),
                            height_ratios=[4.2, 1.0] if calibration is not None else [1.0])
    axes = [fig.add_subplot(grid[0, i]) for i in range(len(panels))]
    colours = matplotlib.colormaps["tab10"]
    for ax, panel in zip(axes, panels, strict=True):
        mine = [p for p in points if p.panel == panel]
        columns = list(experiment.settings["panels"][panel])
        for method, (colour_index, marker) in METHOD_STYLE.items():
            colour = colours(colour_index)
            series = sorted((p for p in mine if p.method == method), key=lambda p: p.x)
            measured = [p for p in series if p.images_per_ms]
            if measured:
                means = [statistics.fmean(p.images_per_ms) for p in measured]
                stds = [statistics.stdev(p.images_per_ms) if len(p.images_per_ms) > 1 else 0.0 for p in measured]
                workers = sorted({(p.trainers, p.attack_workers) for p in measured})
                setup = ", ".join(f"{t} trainer{'s' if t > 1 else ''}" + (f" + {w} attack worker{'s' if w > 1 else ''}"
                                                                        if w else "") for t, w in workers[:2])
                ax.errorbar([p.x for p in measured], means, yerr=stds, linestyle="-", linewidth=2.0, marker=marker,
                            markersize=8, color=colour, capsize=4,
                            label=f"{METHOD_LABEL[method]}: ours ({scale} scale; {setup})")
            stated = [p for p in series if p.paper is not None]
            if stated:
                ax.plot([p.x for p in stated], [p.paper for p in stated], linestyle="--", linewidth=1.4,
                        marker=marker, markersize=9, color=colour, markerfacecolor="white", markeredgewidth=1.6,
                        label=f"{METHOD_LABEL[method]}: paper (stated in the text)")
            if method == "conadv" and panel in ratio:
                disadv = sorted((p for p in mine if p.method == "disadv" and p.paper is not None), key=lambda p: p.x)
                derived = [p for p in disadv if not any(q.column == p.column and q.paper is not None for q in series)]
                if derived:
                    ax.plot([p.x for p in derived], [ratio[panel] * p.paper for p in derived], linestyle="none",
                            marker="*", markersize=13, color=colour, markerfacecolor="white", markeredgewidth=1.4,
                            label=f"ConAdv: paper, \"about {ratio[panel]:g}x DisAdv\" (derived from the text)")
        for curve in (c for c in curves if c.panel == panel):
            colour_index, _ = METHOD_STYLE[curve.method]
            style = ":" if "no attack" not in curve.label else (0, (1, 4))
            ax.plot([math.log2(parse_batch(b)) for b in curve.batches], curve.images_per_ms, linestyle=style,
                    linewidth=1.6, color=colours(colour_index),
                    label=f"{curve.label}: model ({curve.devices[0]}-{curve.devices[-1]} devices)")
        ax.set_xticks([math.log2(parse_batch(c)) for c in columns])
        ax.set_xticklabels([_axis_label(mine, c, scale) for c in columns])
        ax.set_yscale("log")
        per = per_worker.get(panel)
        ax.set_title(f"{panel} {'one trainer per ' + str(per) + ' examples at the paper scale' if per else ''}",
                     fontsize=10)
        ax.set_xlabel("paper batch size (log2 axis)" + ("" if scale == "paper" else
                      f"; trained at the {scale} scale in parentheses"))
        ax.set_ylabel("throughput (images/ms, log axis)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="best", fontsize=7)
    executors = sorted({s for p in points for s in p.setups})
    title = (f"{experiment.title} ({scale} scale)\nmeasured on {hardware(points)}"
             + (f" ({'; '.join(executors[:4])})" if executors else "")
             + f"\n{scale_note(scale)}")
    fig.suptitle(title, fontsize=10)
    if calibration is not None:
        lines = ["Model (conadv_repro/throughput_model.py), ResNet-50 at 224 px, the panel's trainers per batch, "
                 "ConAdv with one attack worker per trainer:"]
        lines += [f"- {line}" for line in assumptions_text(costs_for(calibration, PAPER_NETWORK), calibration)]
        wrapped = "\n".join(textwrap.fill(line, 200, subsequent_indent="  ") for line in lines)
        note = fig.add_subplot(grid[1, :])
        note.axis("off")
        note.text(0.0, 1.0, wrapped, fontsize=7, va="top", ha="left", family="monospace", transform=note.transAxes)
    return fig


def choose_calibration(choice: str | None, points: list[Point]) -> Calibration:
    """`--calibration` when given; else the newest calibration measured on the runs' hardware, else the
    newest of any; else NVIDIA's published A100 figure (labelled "published, not measured here")."""
    if choice:
        return calibration_from_choice(choice)
    names = tuple(sorted({d for p in points for d in p.devices}))
    return (find_calibration(match=names) if names else None) or find_calibration() or published_anchor()


def draw_figure4(experiment: Experiment, runs: Iterable[PlannedRun], records: pd.DataFrame, scale: str,
                 calibration_choice: str | None) -> tuple[Figure | None, str]:
    """The figure (None when no point is measured) and the line make_figures prints about it."""
    points = figure4_points(experiment, runs, records)
    measured = sum(1 for p in points if p.images_per_ms)
    if not measured:
        waiting = sorted({s for p in points for s in p.statuses if s not in ("finished", "missing")})
        return None, (f"figure4: no finished run of its {len(points)} points"
                      + (f" ({', '.join(waiting)})" if waiting else "") + "; no file written")
    calibration = choose_calibration(calibration_choice, points)
    stated = sum(1 for p in points if p.paper is not None)
    line = (f"figure4: {measured} of {len(points)} points measured at the {scale} scale on {hardware(points)} "
            f"(the paper's {stated} stated points beside them; model from {calibration.describe()})")
    mixed = [run_id for p in points for run_id in p.mixed_layout]
    if mixed:
        line += (f"; not measured: {len(mixed)} run{'s' if len(mixed) != 1 else ''} resumed on another layout "
                 f"({', '.join(mixed[:5])})")
    return figure4(experiment, points, scale, calibration), line
