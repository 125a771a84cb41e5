"""Staleness and controls (ours, not in the paper): what ConAdv's stale weights cost, and what the
auxiliary BN branch does without an adversarial perturbation.

ConAdv computes the adversarial examples of step t from theta_(t-tau) (eq. 5; tau = 1 "in practice").
Rows: ConAdv at tau = 0 (bit for bit DisAdv: a check), 1 (Table 1's ConAdv run, shared), 2 and 4; the
references vanilla and DisAdv (Table 1's runs, shared); and the noise control (method=noise: DisAdv's split
BN and two-branch loss with a random corner of the same epsilon ball instead of the attack), which
separates the adversarial gradient's effect from the second BN branch's. The paper's numbers are Table 1's
where a row is Table 1's; tau = 0, 2, 4 and noise have none. Epsilon as Table 1's ConAdv at each batch.

The table's paired differences (analysis/make_tables.py) give each row minus vanilla and minus DisAdv
(= tau 0) on the same seeds: ConAdv tau=k - DisAdv is the cost of k steps of staleness, noise - vanilla
the effect of the second branch alone, DisAdv - noise (the negative of noise - DisAdv) the adversarial
direction's.

    python -m conadv_repro.launch staleness [--scale proxy]
"""

from conadv_repro.registry import Cell, Experiment
from experiments.common import method_overrides
from experiments.table1 import ROWS as TABLE1

BATCHES = ("8k", "32k", "96k")
TAUS = (0, 1, 2, 4)


def _paper(row: str, batch: str) -> dict[str, float]:
    columns = ("1k", "4k", "8k", "16k", "32k", "64k", "96k")
    return {"test_top1": TABLE1[row][2][columns.index(batch)]}


ROWS: dict[str, tuple[dict, str | None]] = {
    "Vanilla": ({"method": "vanilla"}, "ResNet-50"),
    "DisAdv": ({"method": "disadv"}, "ResNet-50+DisAdv"),
    **{f"ConAdv tau={tau}": ({"method": "conadv", "conadv.tau": tau}, "ResNet-50+ConAdv" if tau == 1 else None)
       for tau in TAUS},
    "Noise (control)": ({"method": "noise"}, None),
}


def _overrides(extra: dict, batch: str) -> dict:
    return {**method_overrides(extra["method"], False, batch), **extra}


EXPERIMENT = Experiment(
    name="staleness",
    title="Staleness and controls: ConAdv at tau = 0, 1, 2, 4, DisAdv, vanilla and the noise control (ours)",
    description="ConAdv tau 0/1/2/4, DisAdv, vanilla, noise control x 8k, 32k, 96k",
    rows=tuple(ROWS),
    columns=BATCHES,
    cells=tuple(
        Cell(row=row, column=batch, paper_batch=batch, overrides=_overrides(extra, batch),
             paper=_paper(table1_row, batch) if table1_row else {})
        for row, (extra, table1_row) in ROWS.items()
        for batch in BATCHES
    ),
    notes=("Not in the paper. ConAdv tau=0 trains exactly as DisAdv (tests/test_conadv.py): its row checks that.",
           "The paper's numbers shown are Table 1's, for the rows that are Table 1's runs."),
)
