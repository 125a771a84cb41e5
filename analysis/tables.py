"""The paper's tables from a DataFrame of runs: each cell our value beside the paper's and the difference.

A cell's runs are the launcher's own expansion of the experiment at the scale (several seeds at the
proxy scale give several runs: the cell shows their mean, and the standard deviation when there are
more than one). Cells without a finished run show as missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from conadv_repro.launch.plan import PlannedRun
from conadv_repro.registry import Experiment

METRIC_NAMES = {"test_top1": "Test top-1", "train_top1": "Training top-1", "gap": "Generalization gap"}


@dataclass
class CellResult:
    experiment: str
    row: str
    column: str
    metric: str
    paper: float | None
    values: list[float]
    run_ids: list[str]
    statuses: list[str]

    @property
    def mean(self) -> float | None:
        return sum(self.values) / len(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        if len(self.values) < 2:
            return None
        m = self.mean or 0.0
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (len(self.values) - 1))

    @property
    def diff(self) -> float | None:
        return None if self.mean is None or self.paper is None else self.mean - self.paper

    def text(self) -> str:
        paper = "n/a" if self.paper is None else f"{self.paper:.1f}"
        if self.mean is None:
            waiting = sorted({s for s in self.statuses if s not in ("finished", "missing")})
            return f"missing ({', '.join(waiting)}) / {paper}" if waiting else f"missing / {paper}"
        ours = f"{self.mean:.2f}" if self.std is None else f"{self.mean:.2f}±{self.std:.2f} (n={len(self.values)})"
        diff = "" if self.diff is None else f" ({self.diff:+.2f})"
        return f"{ours} / {paper}{diff}"


def cell_results(experiment: Experiment, runs: list[PlannedRun], frame: pd.DataFrame) -> list[CellResult]:
    by_id = {row["run_id"]: row for row in frame.to_dict("records")} if not frame.empty else {}
    results = []
    for cell in experiment.cells:
        ids = [run.run_id for run in runs if (experiment.name, cell.row, cell.column) in run.uses]
        for metric in experiment.metrics:
            values, statuses = [], []
            for run_id in ids:
                row: dict[str, Any] | None = by_id.get(run_id)
                status = row["status"] if row else "missing"
                statuses.append(status)
                value = row.get(metric) if row else None
                if status == "finished" and value is not None and not (isinstance(value, float) and math.isnan(value)):
                    values.append(float(value))
            results.append(CellResult(experiment.name, cell.row, cell.column, metric, cell.paper.get(metric),
                                      values, ids, statuses))
    return results


def filled(results: list[CellResult]) -> tuple[int, int]:
    cells = {(r.row, r.column) for r in results}
    done = {(r.row, r.column) for r in results if r.mean is not None}
    return len(done), len(cells)


def layout(experiment: Experiment, results: list[CellResult]) -> pd.DataFrame:
    """Rows as the paper's (one per metric when a table has several), columns as the paper's."""
    index = {(r.row, r.column, r.metric): r for r in results}
    rows, labels = [], []
    for row in experiment.rows:
        for metric in experiment.metrics:
            label = row if len(experiment.metrics) == 1 else f"{row}: {METRIC_NAMES.get(metric, metric)}"
            labels.append(label)
            rows.append([index[(row, col, metric)].text() if (row, col, metric) in index else ""
                         for col in experiment.columns])
    return pd.DataFrame(rows, index=labels, columns=list(experiment.columns))


def long_form(results: list[CellResult], scale: str) -> pd.DataFrame:
    return pd.DataFrame([{
        "experiment": r.experiment, "row": r.row, "column": r.column, "metric": r.metric, "scale": scale,
        "ours_mean": r.mean, "ours_std": r.std, "runs_finished": len(r.values), "runs": len(r.run_ids),
        "paper": r.paper, "diff": r.diff, "run_ids": " ".join(r.run_ids),
        "statuses": " ".join(r.statuses)} for r in results])


def to_markdown(frame: pd.DataFrame) -> str:
    header = "| | " + " | ".join(frame.columns) + " |"
    rule = "|---|" + "---|" * len(frame.columns)
    body = ["| " + str(label) + " | " + " | ".join(str(v) for v in values) + " |"
            for label, values in zip(frame.index, frame.to_numpy().tolist(), strict=True)]
    return "\n".join([header, rule, *body])


def to_latex(frame: pd.DataFrame, caption: str) -> str:
    def esc(text: Any) -> str:
        return str(text).replace("\\", "\\textbackslash{}").replace("&", "\\&").replace("%", "\\%") \
            .replace("_", "\\_").replace("#", "\\#").replace("±", "$\\pm$")

    cols = "l" + "c" * len(frame.columns)
    lines = ["\\begin{table}[t]", "\\centering", f"\\caption{{{esc(caption)}}}", f"\\begin{{tabular}}{{{cols}}}",
             "\\hline", " & ".join(["", *map(esc, frame.columns)]) + " \\\\", "\\hline"]
    for label, values in zip(frame.index, frame.to_numpy().tolist(), strict=True):
        lines.append(" & ".join([esc(label), *map(esc, values)]) + " \\\\")
    lines += ["\\hline", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(lines)
