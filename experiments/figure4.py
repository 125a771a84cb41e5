"""Figure 4: throughput (images/ms) of vanilla training, DisAdv and ConAdv against the batch size.

(a) 4k-32k with one worker per 64 examples, the paper's "Normal Setting" (section 4.2: every worker needs
    at least 64 examples for its BatchNorm statistics, so ceil(B / 64) cores). The text's points: DisAdv
    10.3 img/ms at 4k and 81.7 at 32k, ConAdv "about 1.5x" DisAdv.
(b) 512, 1k and 2k with the most workers the batch can use: the paper trains them on TPU v3-128, v3-256
    and v3-512, 4 examples per core. The text's points at 2k: vanilla 75.7, ConAdv 71.3, DisAdv 36.1 img/ms
    (ConAdv "about 2x" DisAdv). Every other point of the figure is not printed in the paper: unknown here.

Each point is a short training run (STEPS steps, a train row every LOG_EVERY steps, no checkpoint on
the way); its throughput is the median images/s of its train rows after the first.

Devices. At the paper scale a cell has PER_WORKER[panel] examples per trainer: B / 64 trainers in (a),
B / 4 in (b) (with BN groups of 4 there, the only way to put 4 examples on a device; (b) measures speed,
not accuracy). ConAdv adds as many attack workers as trainers, one per trainer's examples: the extra
processors ConAdv is designed to use (section 3). At the smaller scales, on one machine, every cell has
one trainer and ConAdv one attack worker (two processes): they show the mechanism, not the paper's scale,
which the performance model (conadv_repro/throughput_model.py) projects from measured step times.

    python -m conadv_repro.launch figure4 [--scale paper --data-root /data/imagenet --profile NAME]
    python analysis/make_figures.py --experiments figure4 [--scale paper]
"""

from conadv_repro.batch_sizes import parse_batch
from conadv_repro.config import timed_layout
from conadv_repro.registry import Cell, Experiment
from experiments.common import method_overrides

STEPS = 60
LOG_EVERY = 5
PANELS = {"(a)": ("4k", "8k", "16k", "32k"), "(b)": ("512", "1k", "2k")}
PER_WORKER = {"(a)": 64, "(b)": 4}
METHODS = {"ResNet-50": "vanilla", "DisAdv": "disadv", "ConAdv": "conadv"}

# The numbers the text of section 4.2 states: (panel, row) -> {paper batch: images/ms}.
PAPER = {
    ("(a)", "DisAdv"): {"4k": 10.3, "32k": 81.7},
    ("(b)", "ResNet-50"): {"2k": 75.7},
    ("(b)", "DisAdv"): {"2k": 36.1},
    ("(b)", "ConAdv"): {"2k": 71.3},
}
# ConAdv's speed-up over DisAdv that the text states per panel (not points: drawn as such, labelled).
PAPER_RATIO = {"(a)": 1.5, "(b)": 2.0}

# A throughput run: short, logged often, no checkpoint or evaluation on the way (only at its end).
RUN = {"steps": STEPS, "runtime.log_every": LOG_EVERY, "runtime.checkpoint_every": 1_000_000,
       "runtime.eval_every": 1_000}
SMALL_SCALES = ("smoke", "proxy", "cifar10")


def devices(panel: str, method: str, paper_batch: str) -> dict[str, dict[str, int | str]]:
    """Per scale, the trainers (and ConAdv's attack workers) of a cell."""
    per = PER_WORKER[panel]
    trainers = max(1, parse_batch(paper_batch) // per)
    paper: dict[str, int | str] = {"runtime.trainers": trainers, "runtime.micro_batch": per}
    if panel == "(b)":
        paper["bn.group_size"] = per
    small: dict[str, int | str] = {"runtime.trainers": 1}
    if method == "conadv":
        paper["conadv.attack_workers"] = trainers
        small["conadv.attack_workers"] = 1
    # The layout is what a throughput point measures: pinned in the run id (the device counts alone are not).
    paper["runtime.timed_layout"] = timed_layout(trainers, trainers if method == "conadv" else 0)
    small["runtime.timed_layout"] = timed_layout(1, 1 if method == "conadv" else 0)
    return {"paper": paper, **{scale: dict(small) for scale in SMALL_SCALES}}


def _cells() -> tuple[Cell, ...]:
    cells = []
    for panel, batches in PANELS.items():
        for row, method in METHODS.items():
            for batch in batches:
                value = PAPER.get((panel, row), {}).get(batch)
                cells.append(Cell(row=f"{panel} {row}", column=batch, paper_batch=batch,
                                  overrides={**method_overrides(method, False, batch), **RUN},
                                  paper={} if value is None else {"images_per_ms": value},
                                  scale_overrides=devices(panel, method, batch)))
    return tuple(cells)


EXPERIMENT = Experiment(
    name="figure4",
    title="Figure 4: Throughput of ResNet-50 against the batch size",
    description="throughput of vanilla, DisAdv, ConAdv: (a) 4k-32k, (b) 512-2k (short runs)",
    kind="figure",
    rows=tuple(f"{panel} {row}" for panel in PANELS for row in METHODS),
    columns=("512", "1k", "2k", "4k", "8k", "16k", "32k"),
    metrics=("images_per_ms",),
    cells=_cells(),
    # timed: its throughputs are the measurement, so on one machine its runs train one at a time.
    settings={"panels": PANELS, "per_worker": PER_WORKER, "paper_ratio": PAPER_RATIO, "steps": STEPS,
              "timed": True},
    notes=("Paper points: only those the text of section 4.2 states; the others are unknown.",
           "ConAdv runs have one attack worker per trainer (two processes at the small scales)."),
)
