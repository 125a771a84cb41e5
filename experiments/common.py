"""What several of the paper's grids share: the batch sizes and the epsilon of each cell.

The paper does not say which epsilon (p, in 0-255 pixel units) Tables 1, 2 and 4 use. We take, at
32k/64k/96k, the p that Table 5 marks best for that method (ConAdv 3/5/8, ConAdv + AutoAugment 5/7/8)
and, below 32k, the 32k value; DisAdv uses ConAdv's. See docs/fidelity.md for where Table 5 and the
text disagree with this reading.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from conadv_repro.registry import Cell, Experiment

BATCHES = ("1k", "4k", "8k", "16k", "32k", "64k", "96k")
LARGE = ("32k", "64k", "96k")

# Table 5's bold cells: the best p per method and batch size.
BEST_EPSILON = {
    False: {"32k": 3.0, "64k": 5.0, "96k": 8.0},  # ResNet-50 + ConAdv
    True: {"32k": 5.0, "64k": 7.0, "96k": 8.0},  # ResNet-50 + ConAdv + AA
}


def epsilon_for(autoaugment: bool, paper_batch: str) -> float:
    best = BEST_EPSILON[autoaugment]
    return best.get(paper_batch, best["32k"])


def method_overrides(method: str, autoaugment: bool, paper_batch: str) -> dict[str, Any]:
    """Config overrides of one row's cell: the method, AutoAugment, and the attack's epsilon."""
    out: dict[str, Any] = {"method": method}
    if autoaugment:
        out["autoaugment"] = True
    if method in ("disadv", "conadv", "noise"):
        out["attack.epsilon"] = epsilon_for(autoaugment, paper_batch)
    return out


def batch_grid(*, name: str, title: str, description: str, columns: tuple[str, ...],
               rows: Mapping[str, tuple[str, bool, tuple[float, ...]]], kind: str = "table",
               notes: tuple[str, ...] = ()) -> Experiment:
    """A grid of rows (method, AutoAugment, the paper's test top-1 per column) by paper batch sizes."""
    return Experiment(
        name=name, title=title, description=description, kind=kind, notes=notes,
        rows=tuple(rows), columns=columns,
        cells=tuple(
            Cell(row=row, column=batch, paper_batch=batch, overrides=method_overrides(method, aa, batch),
                 paper={"test_top1": values[i]})
            for row, (method, aa, values) in rows.items()
            for i, batch in enumerate(columns)
        ),
    )
