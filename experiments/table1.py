"""Table 1: top-1 accuracy of ResNet-50 on ImageNet, batch sizes 1k to 96k.

Vanilla training, AutoAugment, DisAdv and ConAdv. The paper's claim: all methods are stable up to 32k;
beyond it vanilla drops (75.3 at 64k, 74.3 at 96k), AutoAugment stops helping at 96k, while DisAdv and
ConAdv keep a 0.7-1.0 point gain (75.3 at 96k), ConAdv matching DisAdv.

    python -m conadv_repro.launch table1                 # smoke scale on this machine
    python -m conadv_repro.launch table1 --scale paper --data-root /data/imagenet --cluster slurm --profile NAME
"""

from experiments.common import BATCHES, batch_grid

ROWS = {
    "ResNet-50": ("vanilla", False, (76.9, 76.9, 76.6, 76.6, 76.6, 75.3, 74.3)),
    "ResNet-50+AA": ("vanilla", True, (77.5, 77.5, 77.4, 77.1, 76.9, 75.6, 74.3)),
    "ResNet-50+DisAdv": ("disadv", False, (77.4, 77.4, 77.4, 77.4, 77.3, 76.2, 75.3)),
    "ResNet-50+ConAdv": ("conadv", False, (77.4, 77.4, 77.4, 77.4, 77.3, 76.2, 75.3)),
}

EXPERIMENT = batch_grid(
    name="table1",
    title="Table 1: Top-1 accuracy for ResNet-50 on ImageNet",
    description="vanilla, AutoAugment, DisAdv, ConAdv x 1k-96k",
    columns=BATCHES,
    rows=ROWS,
)
