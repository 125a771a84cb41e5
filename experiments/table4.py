"""Table 4: the generalization gap of large-batch training on ImageNet-1k.

Training top-1, test top-1 and their gap for vanilla, ConAdv and ConAdv + AutoAugment at 16k-96k (the
runs of Tables 1 and 2, shared). The paper's claim: ConAdv narrows the gap (4.6 -> 2.7 at 96k).
Training top-1 here is an evaluation pass over the training set in eval mode without augmentation.

    python -m conadv_repro.launch table4 [--scale paper --data-root /data/imagenet]
"""

from conadv_repro.registry import Cell, Experiment
from experiments.common import method_overrides

BATCHES = ("16k", "32k", "64k", "96k")
ROWS = {
    "Vanilla ResNet-50": ("vanilla", False, (81.4, 82.5, 79.6, 78.9), (76.6, 76.6, 75.3, 74.3)),
    "ConAdv": ("conadv", False, (80.3, 80.8, 78.2, 78.0), (77.4, 77.3, 76.2, 75.3)),
    "ConAdv + AA": ("conadv", True, (81.6, 81.7, 79.6, 78.4), (78.5, 78.3, 77.3, 76.2)),
}

EXPERIMENT = Experiment(
    name="table4",
    title="Table 4: Generalization Gap of Large-Batch Training on ImageNet-1k",
    description="train/test top-1 and gap of vanilla, ConAdv, ConAdv + AutoAugment x 16k-96k",
    rows=tuple(ROWS),
    columns=BATCHES,
    metrics=("train_top1", "test_top1", "gap"),
    cells=tuple(
        Cell(row=row, column=batch, paper_batch=batch, overrides=method_overrides(method, aa, batch),
             paper={"train_top1": train[i], "test_top1": test[i], "gap": round(train[i] - test[i], 1)})
        for row, (method, aa, train, test) in ROWS.items()
        for i, batch in enumerate(BATCHES)
    ),
)
