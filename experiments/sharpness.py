"""Sharpness (ours, not in the paper): where vanilla and DisAdv training end, at 8k, 32k and 96k.

The paper's explanation of large-batch failure is sharp minima; adversarial learning should end flatter.
This grid is Table 1's vanilla and DisAdv runs at three batch sizes (shared: nothing new is trained), and
declares a landscape measurement of each (`settings["landscape"]`, conadv_repro/landscape_state.py): the
launcher measures every run on the job that trained it, into its landscape.json (docs/landscape.md).

    python -m conadv_repro.launch sharpness [--scale proxy]
"""

from conadv_repro.registry import Cell, Experiment
from experiments.common import method_overrides
from experiments.table1 import ROWS as TABLE1

BATCHES = ("8k", "32k", "96k")
COLUMNS = ("1k", "4k", "8k", "16k", "32k", "64k", "96k")
ROWS = {"Vanilla": ("vanilla", "ResNet-50"), "DisAdv": ("disadv", "ResNet-50+DisAdv")}

EXPERIMENT = Experiment(
    name="sharpness",
    title="Sharpness: top Hessian eigenvalue and trace of vanilla and DisAdv training (ours)",
    description="vanilla, DisAdv x 8k, 32k, 96k, each measured (eigenvalues, trace)",
    rows=tuple(ROWS),
    columns=BATCHES,
    cells=tuple(
        Cell(row=row, column=batch, paper_batch=batch, overrides=method_overrides(method, False, batch),
             paper={"test_top1": TABLE1[table1_row][2][COLUMNS.index(batch)]})
        for row, (method, table1_row) in ROWS.items()
        for batch in BATCHES
    ),
    # The smoke scale's sample is small so that its plumbing runs in seconds; the dataset's default
    # (landscape/settings.py: 5000 on ImageNet, else 512) elsewhere. The same declaration as the flatness
    # grid's, which shares these runs: one measurement serves both.
    settings={"landscape": {"measures": ["eigenvalue", "adaptive", "trace"], "examples": {"smoke": 32, "proxy": 512},
                            "micro_batch": {"paper": 32}}},
    notes=("Not in the paper. The paper's numbers shown are Table 1's test top-1 of the same runs.",),
)
