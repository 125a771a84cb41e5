"""Figure 2: does data augmentation help large-batch training? Top-1 against batch size, with and
without AutoAugment, from 1k to 256k.

The paper's claim (section 3.1): AutoAugment helps up to 64k, its gain shrinks as the batch grows, and
it hurts at 128k (73.2 -> 72.9) and 256k (64.7 -> 62.5). The figure's points are not printed in the
paper; 1k-96k are Table 1's values for the same runs and 128k/256k are the values its text quotes.

    python -m conadv_repro.launch figure2 [--scale paper --data-root /data/imagenet]
"""

from experiments.common import batch_grid

BATCHES = ("1k", "4k", "8k", "16k", "32k", "64k", "96k", "128k", "256k")
ROWS = {
    "ResNet-50": ("vanilla", False, (76.9, 76.9, 76.6, 76.6, 76.6, 75.3, 74.3, 73.2, 64.7)),
    "ResNet-50+AA": ("vanilla", True, (77.5, 77.5, 77.4, 77.1, 76.9, 75.6, 74.3, 72.9, 62.5)),
}

EXPERIMENT = batch_grid(
    name="figure2",
    title="Figure 2: Augmentation Analysis",
    description="vanilla and AutoAugment x 1k-256k",
    kind="figure",
    columns=BATCHES,
    rows=ROWS,
    notes=("Paper points at 1k-96k are Table 1's; 128k and 256k are from the text of section 3.1.",),
)
