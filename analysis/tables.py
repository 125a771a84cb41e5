"""The paper's tables from a DataFrame of runs: each cell our value beside the paper's and the difference.

A cell's runs are the launcher's own expansion of the experiment at the scale (several seeds at the
proxy scale give several runs: the cell shows their mean, and the standard deviation and count when there
are more than one). Cells without a finished run show as missing.

Paired differences: each row minus vanilla (plain ResNet, no AutoAugment) and each adversarial row minus
DisAdv at the same paper batch size, seed by seed on the seeds both cells finished (the seed fixes the
initialisation and the data order, so the pair shares both), with a two-sided 95% paired-t confidence
interval: mean(d) +- t(0.975, n-1) * sd(d) / sqrt(n). The reference runs are the experiment's own vanilla
and DisAdv cells, else Table 1's. See docs/fidelity.md (Statistics) for why paired t and not a bootstrap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from conadv_repro.launch.plan import PlannedRun, expand
from conadv_repro.registry import Cell, Experiment, load_experiments

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
    seeds: list[int] = field(default_factory=list)  # the seed of each value (finished runs only)

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
        if self.std is not None:
            ours = f"{self.mean:.2f}±{self.std:.2f} (n={len(self.values)})"
        else:
            ours = f"{self.mean:.2f}" + (" (n=1)" if len(self.run_ids) > 1 else "")
        diff = "" if self.diff is None else f" ({self.diff:+.2f})"
        return f"{ours} / {paper}{diff}"


def cell_results(experiment: Experiment, runs: list[PlannedRun], frame: pd.DataFrame) -> list[CellResult]:
    by_id = {row["run_id"]: row for row in frame.to_dict("records")} if not frame.empty else {}
    seed_of = {run.run_id: run.config.seed for run in runs}
    results = []
    for cell in experiment.cells:
        ids = [run.run_id for run in runs if (experiment.name, cell.row, cell.column) in run.uses]
        for metric in experiment.metrics:
            values, statuses, seeds = [], [], []
            for run_id in ids:
                row: dict[str, Any] | None = by_id.get(run_id)
                status = row["status"] if row else "missing"
                statuses.append(status)
                value = row.get(metric) if row else None
                if status == "finished" and value is not None and not (isinstance(value, float) and math.isnan(value)):
                    values.append(float(value))
                    seeds.append(seed_of[run_id])
            results.append(CellResult(experiment.name, cell.row, cell.column, metric, cell.paper.get(metric),
                                      values, ids, statuses, seeds))
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
        "statuses": " ".join(r.statuses), "seeds": " ".join(map(str, r.seeds)),
        "values": " ".join(f"{v:.4f}" for v in r.values)} for r in results])


# ------------------------------------------------------------------------------ paired differences

# Two-sided 95% Student t quantiles t(0.975, df) for df = 1..60: scipy.stats.t.ppf(0.975, df) rounded to 4
# decimals (the values of any printed t table: 12.706 at df 1, 2.776 at df 4, 2.042 at df 30, 2.000 at
# 60). tests/test_stats.py integrates the t density to check every entry. Above 60 degrees of freedom,
# t_quantile uses the Cornish-Fisher expansion around the normal quantile (error < 1e-4 there).
T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.306, 2.2622, 2.2281, 2.201, 2.1788,
        2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.093, 2.086, 2.0796, 2.0739, 2.0687, 2.0639,
        2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423, 2.0395, 2.0369, 2.0345, 2.0322, 2.0301, 2.0281,
        2.0262, 2.0244, 2.0227, 2.0211, 2.0195, 2.0181, 2.0167, 2.0154, 2.0141, 2.0129, 2.0117, 2.0106,
        2.0096, 2.0086, 2.0076, 2.0066, 2.0057, 2.0049, 2.004, 2.0032, 2.0025, 2.0017, 2.001, 2.0003)
Z975 = 1.959964


def t_quantile(df: int) -> float:
    """t(0.975, df): the two-sided 95% quantile of Student's t with `df` degrees of freedom."""
    if df < 1:
        raise ValueError(f"df={df} must be >= 1")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


@dataclass
class PairedResult:
    """A row's cell minus a reference cell (vanilla or DisAdv at the same paper batch), seed by seed."""

    experiment: str
    row: str
    column: str
    metric: str
    reference: str  # "vanilla" or "DisAdv"
    seeds: list[int]
    diffs: list[float]

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float | None:
        return sum(self.diffs) / self.n if self.diffs else None

    @property
    def std(self) -> float | None:
        if self.n < 2:
            return None
        m = self.mean or 0.0
        return math.sqrt(sum((d - m) ** 2 for d in self.diffs) / (self.n - 1))

    @property
    def ci(self) -> tuple[float, float] | None:
        """The two-sided 95% paired-t interval of the mean difference (None below two pairs)."""
        if self.std is None or self.mean is None:
            return None
        half = t_quantile(self.n - 1) * self.std / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    def text(self) -> str:
        if self.mean is None:
            return "no pairs"
        if self.ci is None:
            return f"{self.mean:+.2f} (n=1)"
        lo, hi = self.ci
        return f"{self.mean:+.2f} [{lo:+.2f}, {hi:+.2f}] (n={self.n})"


# A reference row: its label, and the method of the cells that stand for it (without AutoAugment).
REFERENCES = (("vanilla", "vanilla"), ("DisAdv", "disadv"))
ATTACK_METHODS = ("disadv", "conadv", "noise")


def reference_experiment(experiment: Experiment, pool: list[Experiment]) -> Experiment:
    """The vanilla and DisAdv cells each paper batch of `experiment` is compared with: the experiment's
    own cells of those methods (without AutoAugment), else the first of `pool` (Table 1) that has them."""
    wanted = {cell.paper_batch for cell in experiment.cells}
    cells: dict[tuple[str, str], Cell] = {}
    for source in (experiment, *pool):
        for cell in source.cells:
            for label, method in REFERENCES:
                key = (label, cell.paper_batch)
                if cell.paper_batch in wanted and key not in cells and cell.overrides.get("method") == method \
                        and not cell.overrides.get("autoaugment"):
                    cells[key] = Cell(row=label, column=cell.paper_batch, paper_batch=cell.paper_batch,
                                      overrides=dict(cell.overrides))
    batches = sorted(wanted)
    return Experiment(name=f"{experiment.name}/references", title="references", description="",
                      rows=tuple(label for label, _ in REFERENCES), columns=tuple(batches),
                      cells=tuple(cells.values()), metrics=experiment.metrics)


def row_methods(experiment: Experiment) -> dict[str, str]:
    return {cell.row: str(cell.overrides.get("method", "vanilla")) for cell in experiment.cells}


def paired_results(experiment: Experiment, results: list[CellResult], references: list[CellResult]
                   ) -> list[PairedResult]:
    """Every row minus vanilla, and every adversarial (or noise) row minus DisAdv, cell by cell, on the
    seeds both finished. A row is not compared with itself (the same runs)."""
    paper_batch = {(cell.row, cell.column): cell.paper_batch for cell in experiment.cells}
    refs = {(r.row, r.column, r.metric): r for r in references}
    methods = row_methods(experiment)
    out = []
    for label, _ in REFERENCES:
        for r in results:
            if label == "DisAdv" and methods.get(r.row) not in ATTACK_METHODS:
                continue
            ref = refs.get((label, paper_batch[(r.row, r.column)], r.metric))
            if ref is not None and set(ref.run_ids) == set(r.run_ids):
                continue  # the reference itself
            if ref is None:
                out.append(PairedResult(r.experiment, r.row, r.column, r.metric, label, [], []))
                continue
            theirs = dict(zip(ref.seeds, ref.values, strict=True))
            seeds = [s for s in r.seeds if s in theirs]
            ours = dict(zip(r.seeds, r.values, strict=True))
            out.append(PairedResult(r.experiment, r.row, r.column, r.metric, label, seeds,
                                    [ours[s] - theirs[s] for s in seeds]))
    return out


def paired_for(experiment: Experiment, results: list[CellResult], frame: pd.DataFrame, *, scale: str,
               runs_dir: Any, sets: dict[str, str] | None = None) -> list[PairedResult]:
    """The paired differences of a table's cells against vanilla and DisAdv (their runs planned as the
    launcher plans them: the experiment's own, else Table 1's, at `scale` with the same `sets`)."""
    pool = [e for e in load_experiments(["table1"]) if e.name != experiment.name]
    references = reference_experiment(experiment, pool)
    runs = expand([references], scale=scale, runs_dir=runs_dir, sets=sets or {}, check_data=False)
    return paired_results(experiment, results, cell_results(references, runs, frame))


PAIRED_NOTE = ("Each cell: the row minus the reference at the same batch size, seed by seed on the seeds both "
               "finished: mean difference [95% paired-t confidence interval] (n pairs). An interval that "
               "excludes 0 is a difference beyond seed-to-seed noise; n=1 has no interval.")


def paired_layout(experiment: Experiment, pairs: list[PairedResult]) -> pd.DataFrame:
    """One line per compared row and reference (and metric), the experiment's columns."""
    index = {(p.row, p.column, p.metric, p.reference): p for p in pairs}
    rows, labels = [], []
    for label, _ in REFERENCES:
        for row in experiment.rows:
            for metric in experiment.metrics:
                cells = [index.get((row, col, metric, label)) for col in experiment.columns]
                if not any(cells):
                    continue
                name = f"{row} − {label}"
                labels.append(name if len(experiment.metrics) == 1 else f"{name}: {METRIC_NAMES.get(metric, metric)}")
                rows.append(["" if c is None else c.text() for c in cells])
    return pd.DataFrame(rows, index=labels, columns=list(experiment.columns))


def paired_long_form(pairs: list[PairedResult], scale: str) -> pd.DataFrame:
    columns = ["experiment", "row", "column", "metric", "reference", "scale", "n", "mean_diff", "std_diff",
               "ci_low", "ci_high", "seeds", "diffs"]
    return pd.DataFrame([{
        "experiment": p.experiment, "row": p.row, "column": p.column, "metric": p.metric,
        "reference": p.reference, "scale": scale, "n": p.n, "mean_diff": p.mean, "std_diff": p.std,
        "ci_low": p.ci[0] if p.ci else None, "ci_high": p.ci[1] if p.ci else None,
        "seeds": " ".join(map(str, p.seeds)), "diffs": " ".join(f"{d:.4f}" for d in p.diffs)}
        for p in pairs], columns=columns)


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
