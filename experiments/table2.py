"""Table 2: top-1 accuracy with AutoAugment on ImageNet, batch sizes 1k to 96k.

ConAdv combined with AutoAugment against vanilla and AutoAugment alone (those two rows are Table 1's
runs, shared). The paper's claim: ConAdv + AA keeps 76.2 at 96k where both others give 74.3.

    python -m conadv_repro.launch table2 [--scale paper --data-root /data/imagenet]
"""

from experiments.common import BATCHES, batch_grid

ROWS = {
    "ResNet-50": ("vanilla", False, (76.9, 76.9, 76.6, 76.6, 76.6, 75.3, 74.3)),
    "ResNet-50+AA": ("vanilla", True, (77.5, 77.5, 77.4, 77.1, 76.9, 75.6, 74.3)),
    "ResNet-50+ConAdv+AA": ("conadv", True, (78.5, 78.5, 78.5, 78.5, 78.3, 77.3, 76.2)),
}

EXPERIMENT = batch_grid(
    name="table2",
    title="Table 2: Top-1 accuracy with AutoAug on ImageNet",
    description="vanilla, AutoAugment, ConAdv + AutoAugment x 1k-96k",
    columns=BATCHES,
    rows=ROWS,
)
