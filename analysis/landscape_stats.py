"""Paired comparisons of landscape measures across seeds, in log space.

Curvature measures are positive and spread over orders of magnitude (a top eigenvalue of 10 at one batch size,
200 at another), and what the paper claims about them is a ratio ("flatter", "sharper"). So two cells are
compared by the per-seed difference of the logs, log(a_s) - log(b_s) = log(a_s / b_s), over the seeds both
cells measured (the seed fixes the initialisation and the data order, so the pair shares both), with the same
two-sided 95% paired-t interval as the accuracy tables (analysis/tables.py: PairedResult). The ratio is
exp(mean), and the interval's ends map the same way.

Two kinds of comparison:
  - against a reference row at the same column (e.g. DisAdv - vanilla at 96k): the method's effect;
  - within a row, its last column against its first (e.g. vanilla 96k / 8k): the batch size's effect.

A value that is not positive has no log (a power iteration can end on a negative eigenvalue at a saddle): that
seed is left out of the pair and counted in `dropped`. Pure: numbers in, numbers out; no torch, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from analysis.tables import CellResult, PairedResult


@dataclass
class LogRatio(PairedResult):
    """A PairedResult whose diffs are log(ours / theirs), one per seed; `dropped` seeds had a value <= 0."""

    dropped: list[int] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        return None if self.mean is None else math.exp(self.mean)

    def text(self) -> str:
        if self.mean is None:
            return "no pairs" + (f" ({len(self.dropped)} not positive)" if self.dropped else "")
        ratio = f"×{math.exp(self.mean):.3g}"
        if self.ci is None:
            body = f"{self.mean:+.3f} ({ratio}, n=1)"
        else:
            lo, hi = self.ci
            body = f"{self.mean:+.3f} [{lo:+.3f}, {hi:+.3f}] ({ratio}, n={self.n})"
        return body + (f", {len(self.dropped)} not positive" if self.dropped else "")


def log_ratio(ours: CellResult, theirs: CellResult, *, row: str, column: str, reference: str) -> LogRatio:
    """log(ours / theirs) seed by seed on the seeds both cells have."""
    mine = dict(zip(ours.seeds, ours.values, strict=True))
    other = dict(zip(theirs.seeds, theirs.values, strict=True))
    seeds, diffs, dropped = [], [], []
    for seed in ours.seeds:
        if seed not in other:
            continue
        if mine[seed] > 0 and other[seed] > 0:
            seeds.append(seed)
            diffs.append(math.log(mine[seed]) - math.log(other[seed]))
        else:
            dropped.append(seed)
    return LogRatio(ours.experiment, row, column, ours.metric, reference, seeds, diffs, dropped)


def against_references(results: Sequence[CellResult], rows: Sequence[str], references: Sequence[str]
                       ) -> list[LogRatio]:
    """Every row against each reference row, per column and metric; a row is not compared with itself nor with a
    later reference when it is a reference too (that is the earlier comparison inverted)."""
    index = {(r.row, r.column, r.metric): r for r in results}
    out = []
    for k, reference in enumerate(references):
        for r in results:
            if r.row == reference or r.row not in rows or r.row in references[:k]:
                continue
            theirs = index.get((reference, r.column, r.metric))
            if theirs is not None:
                out.append(log_ratio(r, theirs, row=r.row, column=r.column, reference=reference))
    return out


def across_columns(results: Sequence[CellResult], columns: Sequence[str]) -> list[LogRatio]:
    """Each row's last column against its first, per metric: log(value at last / value at first) per seed.
    The result's `column` is the last column and its `reference` the first."""
    if len(columns) < 2:
        return []
    first, last = columns[0], columns[-1]
    index = {(r.row, r.column, r.metric): r for r in results}
    out = []
    for r in results:
        if r.column != last:
            continue
        start = index.get((r.row, first, r.metric))
        if start is not None:
            out.append(log_ratio(r, start, row=r.row, column=last, reference=first))
    return out


__all__ = ["LogRatio", "across_columns", "against_references", "log_ratio"]
