"""Table 3: wall-clock training time of ResNet-50, ConAdv against DisAdv and vanilla training, at 16k-64k.

The paper's claim (section 4.4): DisAdv needs about 1.5x vanilla's time, ConAdv brings it back near
vanilla's (677 s against 1191 s at 32k), and the time falls as the batch grows (ConAdv 1277 s at 16k, 227 s
at 64k). Vanilla at 64k has no time ("/"): its top-1 (75.3, Table 1) stays below MLPerf's 75.9.

Each cell is a time to a target top-1, MLPerf's measure: the elapsed time at the end of the first epoch
whose test top-1 reaches the target (training and the evaluations up to then), and beside it the run's
total wall time. The paper's times fit a time to target rather than 90 full epochs: at Figure 4's 81.7
img/ms, DisAdv's 90 epochs at 32k would take about 1,410 s, against Table 3's 1191 s. The target of each
scale is in TARGET_TOP1 below, the one place it is defined.

The runs are Table 1's vanilla, DisAdv and ConAdv runs at 16k, 32k and 64k (the same training, one run
directory). Each uses the fastest executor on the hardware it runs on (`conadv.executor=auto`: a side
CUDA stream on a GPU, a worker thread on the CPU) and as many devices as the launcher gives it; its record
names the executor, the trainers and the attack workers, and the table prints them beside the times.

    python -m conadv_repro.launch table3 [--scale paper --data-root /data/imagenet --profile NAME]
    python analysis/make_tables.py --experiments table3 [--scale paper]
"""

from conadv_repro.registry import Cell, Experiment
from experiments.common import method_overrides

BATCHES = ("16k", "32k", "64k")

# The top-1 (%) a run must reach for its time to count, per scale.
# - paper: MLPerf's ResNet-50 target, 75.9 (section 4.1).
# - cifar10: 93.0, about a point and a half under what ResNet-18 usually reaches on CIFAR-10 in 90 epochs
#   (94-95%), as 75.9 is a point under the paper's small-batch 76.9; to revisit once this scale's 1k
#   vanilla run has reported.
# - proxy: 90.0 on the digits, at the tuned 3-epoch budget (results/proxy/table1.md, 5 seeds): vanilla ends
#   at 98.4 (16k), 96.4 (32k) and 68.2±12.0 (64k), so 90 is reached at 16k and 32k and, like the paper's
#   75.9 for its vanilla 64k, not at 64k; 97 (chosen on an earlier 20-epoch probe) would leave most 32k
#   seeds unreached.
# - smoke: 20.0, twice chance on the ten digits: 40 steps check the plumbing (a cell filled, another "/"),
#   nothing more.
TARGET_TOP1 = {"paper": 75.9, "cifar10": 93.0, "proxy": 90.0, "smoke": 20.0}

# Method, and the paper's seconds per batch size (None: "/", the paper's run never reached 75.9).
ROWS = {
    "ResNet-50": ("vanilla", (1194.0, 622.0, None)),
    "DisAdv": ("disadv", (1657.0, 1191.0, 592.0)),
    "ConAdv": ("conadv", (1277.0, 677.0, 227.0)),
}

EXPERIMENT = Experiment(
    name="table3",
    title="Table 3: Training Time Analysis",
    description="wall time to the target top-1 of vanilla, DisAdv, ConAdv x 16k-64k (Table 1's runs)",
    rows=tuple(ROWS),
    columns=BATCHES,
    metrics=("time_to_target_s", "wall_time_s"),
    cells=tuple(
        Cell(row=row, column=batch, paper_batch=batch, overrides=method_overrides(method, False, batch),
             paper={} if seconds[i] is None else {"time_to_target_s": seconds[i]})
        for row, (method, seconds) in ROWS.items()
        for i, batch in enumerate(BATCHES)
    ),
    settings={
        "timed": True,  # its wall times are the measurement: on one machine its runs train one at a time
        "target_top1": TARGET_TOP1,
        # Cells the paper marks "/" (its run never reached the target): (row, column).
        "paper_not_reached": (("ResNet-50", "64k"),),
    },
    notes=("The paper gives one time per cell, a time to 75.9% (MLPerf); our total wall time has no paper "
           "counterpart.",),
)
