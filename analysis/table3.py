"""Table 3 (training time) from run directories: each cell the wall time to the target top-1 and the
run's total wall time, beside the paper's time, with the executor and devices each run used.

Time to target: the `elapsed_s` of the first epoch row of `metrics.jsonl` whose `test_top1` reaches the
target (training plus the evaluations until then, as MLPerf counts it); when training ends between epochs
(the smoke scale), the final evaluation counts too, at the record's `wall_time_s`. A finished run that
never reaches the target shows "not reached" (the paper prints "/" for its vanilla 64k; here "/"
already separates ours from the paper's). The target of each scale is Table 3's
`settings["target_top1"]` (experiments/table3.py). With several seeds (the proxy scale) a cell is the mean
over the seeds that reached the target, and says how many did.

Each run's setup comes from its record: `executor` (sequential, thread, stream, workers, or null for
methods without an attack executor) and `distributed` (world size, trainers, attack workers, backend);
records written before those fields existed are one trainer and no attack worker.

Pure functions of the records (no torch); `analysis/make_tables.py` writes the files.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.records import load_curves, mixed_layout, trained_layouts
from analysis.tables import to_latex, to_markdown
from conadv_repro.atomic import atomic_write_text, read_json_dict
from conadv_repro.launch.plan import PlannedRun, expand, parse_sets
from conadv_repro.registry import Experiment, load_experiment
from conadv_repro.runfiles import RECORD_FILE

NAME = "table3"
METRIC_LABELS = {"time_to_target_s": "time to {target:g}%", "wall_time_s": "total wall time"}
OLD_RECORD = {"world_size": 1, "trainers": 1, "attack_workers": 0, "backend": None}


def target_for(experiment: Experiment, scale: str) -> float:
    targets = experiment.settings.get("target_top1") or {}
    if scale not in targets:
        raise KeyError(f"{experiment.name} declares no target top-1 for the {scale} scale")
    return float(targets[scale])


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


@dataclass
class RunTiming:
    """One run's times and setup."""

    run_id: str
    status: str
    time_to_target_s: float | None  # None: never reached (or no run directory to read it from)
    wall_time_s: float | None
    final_top1: float | None
    executor: str | None = None
    world_size: int = 1
    trainers: int = 1
    attack_workers: int = 0
    backend: str | None = None
    device: str | None = None
    layouts: tuple[str, ...] = ()  # with more than one: resumed on another layout, flagged and not timed

    @property
    def mixed(self) -> bool:
        return len(self.layouts) > 1

    @property
    def reached(self) -> bool:
        return self.time_to_target_s is not None

    def setup(self) -> str:
        workers = f" + {self.attack_workers} attack worker{'s' if self.attack_workers != 1 else ''}" \
            if self.attack_workers else ""
        backend = f", {self.backend}" if self.backend else ""
        return f"{self.trainers} trainer{'s' if self.trainers != 1 else ''}{workers}{backend}"


def time_to_target(epochs: pd.DataFrame, target: float, *, final_top1: float | None,
                   wall_time_s: float | None) -> float | None:
    """Seconds until the test top-1 first reaches `target`: the first epoch row that does, else the final
    evaluation when it does (training ended between epochs); None if it never does."""
    if not epochs.empty and {"test_top1", "elapsed_s"} <= set(epochs.columns):
        ordered = epochs.sort_values("step") if "step" in epochs.columns else epochs
        for top1, elapsed in zip(ordered["test_top1"], ordered["elapsed_s"], strict=True):
            if _number(top1) is not None and _number(elapsed) is not None and float(top1) >= target:
                return float(elapsed)
    if final_top1 is not None and wall_time_s is not None and final_top1 >= target:
        return wall_time_s
    return None


def run_timing(row: Mapping[str, Any], target: float) -> RunTiming:
    """A run's timing from its load_runs row, its record and its metrics.jsonl."""
    run_dir = Path(str(row.get("run_dir", "")))
    record = (read_json_dict(run_dir / RECORD_FILE) or {}) if row.get("run_dir") else {}
    dist = {**OLD_RECORD, **(record.get("distributed") or {})}
    final_top1 = _number(row.get("test_top1"))
    wall = _number(row.get("wall_time_s"))
    epochs = load_curves(run_dir) if row.get("run_dir") else pd.DataFrame()
    return RunTiming(
        run_id=str(row.get("run_id")), status=str(row.get("status")),
        time_to_target_s=time_to_target(epochs, target, final_top1=final_top1, wall_time_s=wall),
        wall_time_s=wall, final_top1=final_top1,
        # null: a method with no attack executor; a missing key: a record older than the field.
        executor=(record.get("executor") or "none") if "executor" in record else None,
        world_size=int(dist.get("world_size") or 1), trainers=int(dist.get("trainers") or 1),
        attack_workers=int(dist.get("attack_workers") or 0), backend=dist.get("backend"),
        device=row.get("device") if isinstance(row.get("device"), str) else None,
        layouts=tuple(trained_layouts(record)) if mixed_layout(record) else ())


def seconds(value: float) -> str:
    return f"{value:.0f}s" if value >= 100 else f"{value:.1f}s"


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


@dataclass
class Table3Cell:
    row: str
    column: str
    paper: float | None
    paper_not_reached: bool
    run_ids: list[str]
    statuses: list[str]
    timings: list[RunTiming] = field(default_factory=list)  # the finished runs

    @property
    def timed(self) -> list[RunTiming]:
        """The finished runs trained on one layout throughout: the ones whose times count."""
        return [t for t in self.timings if not t.mixed]

    def values(self, metric: str) -> list[float]:
        out = [getattr(t, metric) for t in self.timed]
        return [float(v) for v in out if v is not None]

    def mean(self, metric: str) -> float | None:
        values = self.values(metric)
        return _mean_std(values)[0] if values else None

    def std(self, metric: str) -> float | None:
        values = self.values(metric)
        return _mean_std(values)[1] if values else None

    def paper_for(self, metric: str) -> float | None:
        return self.paper if metric == "time_to_target_s" else None

    def diff(self, metric: str) -> float | None:
        ours, paper = self.mean(metric), self.paper_for(metric)
        return None if ours is None or paper is None else ours - paper

    def paper_text(self, metric: str) -> str:
        if metric != "time_to_target_s":
            return "n/a"
        if self.paper_not_reached:
            return "not reached"
        return "n/a" if self.paper is None else seconds(self.paper)

    def text(self, metric: str) -> str:
        mixed = len(self.timings) - len(self.timed)
        flag = f" ({mixed} run{'s' if mixed != 1 else ''} resumed on another layout, not timed)" if mixed else ""
        return self._text(metric) + flag

    def _text(self, metric: str) -> str:
        paper = self.paper_text(metric)
        if self.timings and not self.timed:
            return f"not timed / {paper}"
        if not self.timed:
            waiting = sorted({s for s in self.statuses if s not in ("finished", "missing")})
            return f"missing ({', '.join(waiting)}) / {paper}" if waiting else f"missing / {paper}"
        values = self.values(metric)
        if not values:
            ours = "not reached" if metric == "time_to_target_s" else "n/a"
            if metric == "time_to_target_s" and len(self.timed) > 1:
                ours += f" (0 of {len(self.timed)} reached)"
            return f"{ours} / {paper}"
        mean, std = _mean_std(values)
        ours = seconds(mean) if std is None else f"{seconds(mean)}±{seconds(std)} (n={len(values)})"
        if metric == "time_to_target_s" and len(values) < len(self.timed):
            ours += f" ({len(values)} of {len(self.timed)} reached)"
        diff = self.diff(metric)
        return f"{ours} / {paper}" + ("" if diff is None else f" ({'+' if diff >= 0 else '-'}{seconds(abs(diff))})")


def table3_cells(experiment: Experiment, runs: list[PlannedRun], frame: pd.DataFrame, target: float) -> list[Table3Cell]:
    by_id = {str(r["run_id"]): r for r in frame.to_dict("records")} if not frame.empty else {}
    not_reached = {tuple(c) for c in experiment.settings.get("paper_not_reached", ())}
    cells = []
    for cell in experiment.cells:
        ids = [run.run_id for run in runs if (experiment.name, cell.row, cell.column) in run.uses]
        statuses = [str(by_id[i]["status"]) if i in by_id else "missing" for i in ids]
        timings = [run_timing(by_id[i], target) for i, s in zip(ids, statuses, strict=True) if s == "finished"]
        cells.append(Table3Cell(cell.row, cell.column, cell.paper.get("time_to_target_s"),
                                (cell.row, cell.column) in not_reached, ids, statuses, timings))
    return cells


def filled(cells: list[Table3Cell]) -> int:
    return sum(1 for c in cells if c.timings)


def layout(experiment: Experiment, cells: list[Table3Cell], target: float) -> pd.DataFrame:
    index = {(c.row, c.column): c for c in cells}
    labels, rows = [], []
    for row in experiment.rows:
        for metric in experiment.metrics:
            labels.append(f"{row}: {METRIC_LABELS[metric].format(target=target)}")
            rows.append([index[(row, col)].text(metric) if (row, col) in index else ""
                         for col in experiment.columns])
    return pd.DataFrame(rows, index=labels, columns=list(experiment.columns))


def runs_layout(cells: list[Table3Cell]) -> pd.DataFrame:
    """One line per finished run: its cell, id, times, final top-1, executor, devices and hardware."""
    labels, rows = [], []
    for cell in cells:
        for t in cell.timings:
            labels.append(f"{cell.row} {cell.column}")
            rows.append([t.run_id, "not reached" if t.time_to_target_s is None else seconds(t.time_to_target_s),
                         "n/a" if t.wall_time_s is None else seconds(t.wall_time_s),
                         "n/a" if t.final_top1 is None else f"{t.final_top1:.2f}",
                         t.executor or "unrecorded",
                         t.setup() if not t.mixed else "mixed, not timed: " + " then ".join(t.layouts),
                         t.device or "unrecorded"])
    return pd.DataFrame(rows, index=labels, columns=["run", "time to target", "total", "final top-1", "executor",
                                                     "devices", "hardware"])


def long_form(cells: list[Table3Cell], scale: str, target: float) -> pd.DataFrame:
    out = []
    for cell in cells:
        for metric in ("time_to_target_s", "wall_time_s"):
            out.append({
                "experiment": NAME, "row": cell.row, "column": cell.column, "metric": metric, "scale": scale,
                "target_top1": target, "ours_mean": cell.mean(metric), "ours_std": cell.std(metric),
                "runs_finished": len(cell.timings), "runs_reached": sum(t.reached for t in cell.timed),
                "runs_mixed_layout": len(cell.timings) - len(cell.timed),
                "runs": len(cell.run_ids), "paper": cell.paper_for(metric),
                "paper_not_reached": cell.paper_not_reached and metric == "time_to_target_s",
                "diff": cell.diff(metric), "run_ids": " ".join(cell.run_ids), "statuses": " ".join(cell.statuses),
                "executors": " ".join(t.executor or "unrecorded" for t in cell.timings),
                "trainers": " ".join(str(t.trainers) for t in cell.timings),
                "attack_workers": " ".join(str(t.attack_workers) for t in cell.timings),
                "devices": " | ".join(t.device or "unrecorded" for t in cell.timings)})
    return pd.DataFrame(out)


def write_table3(frame: pd.DataFrame, *, scale: str, runs_dir: Path, out: Path, note: str, quiet: bool = False,
                 sets: Mapping[str, str] | Iterable[str] | None = None) -> None:
    """Write results/<scale>/table3.md/.csv/.tex and print the summary line (and the table unless quiet).
    `sets`: the launcher's `--set` items of a variation (KEY=VALUE strings, or a parsed mapping)."""
    experiment = load_experiment(NAME)
    chosen = dict(sets) if isinstance(sets, Mapping) else parse_sets(sets or [])
    runs = expand([experiment], scale=scale, runs_dir=runs_dir, sets=chosen, check_data=False)
    target = target_for(experiment, scale)
    cells = table3_cells(experiment, runs, frame, target)
    done, total = filled(cells), len(cells)
    grid = layout(experiment, cells, target)
    runs_grid = runs_layout(cells)
    markdown = (f"# {experiment.title}\n\n{done} of {total} cells filled, {note}. Each cell: ours / the paper's "
                f"(ours - paper). Time to {target:g}%: wall time until the first evaluation at or above "
                f"{target:g}% test top-1 (the {scale} scale's target, experiments/table3.py); 'not reached': "
                "never reached (the paper prints / for its vanilla 64k). Total wall time: the whole run (the paper gives none)."
                f"\n\n{to_markdown(grid)}\n")
    if not runs_grid.empty:
        markdown += f"\n## Runs\n\n{to_markdown(runs_grid)}\n"
    folder = Path(out)
    atomic_write_text(folder / f"{NAME}.md", markdown)
    atomic_write_text(folder / f"{NAME}.csv", long_form(cells, scale, target).to_csv(index=False))
    caption = f"{experiment.title} -- time to {target:g}% top-1, ours / paper; {done} of {total} cells filled"
    atomic_write_text(folder / f"{NAME}.tex", to_latex(grid, f"{caption} ({scale} scale)"))
    print(f"{NAME}: {done} of {total} cells filled ({scale} scale, target {target:g}% top-1) -> "
          f"{folder / NAME}.md/.csv/.tex")
    if not quiet:
        print(f"\n{markdown}")
