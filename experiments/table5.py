"""Table 5: top-1 accuracy of ConAdv (with and without AutoAugment) against the perturbation p.

p in {0, ..., 10, 12} (0-255 pixel units) at 32k, 64k and 96k. The paper's claim: the best p grows
with the batch size (3 -> 8 for ConAdv) and with AutoAugment (5 at 32k).

    python -m conadv_repro.launch table5 [--scale paper --data-root /data/imagenet]
"""

from conadv_repro.registry import Cell, Experiment

EPSILONS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12)
ROWS = {
    ("ResNet-50 + ConAdv", "32k"): (False, (76.8, 77.2, 77.3, 77.4, 77.3, 77.3, 77.3, 77.3, 77.3, 77.3, 77.2, 77.2)),
    ("ResNet-50 + ConAdv + AA", "32k"): (True, (77.8, 78.0, 78.1, 78.1, 78.0, 78.3, 78.2, 78.2, 78.2, 78.2, 78.2, 78.1)),
    ("ResNet-50 + ConAdv", "64k"): (False, (75.7, 76.2, 76.3, 76.3, 76.4, 76.7, 76.4, 76.4, 76.4, 76.4, 76.4, 76.3)),
    ("ResNet-50 + ConAdv + AA", "64k"): (True, (76.8, 77.0, 76.8, 77.0, 77.1, 77.1, 77.2, 77.4, 77.2, 77.1, 77.1, 77.1)),
    ("ResNet-50 + ConAdv", "96k"): (False, (74.6, 75.1, 75.1, 75.1, 75.3, 75.1, 75.1, 75.1, 75.3, 75.2, 75.1, 75.1)),
    ("ResNet-50 + ConAdv + AA", "96k"): (True, (75.8, 75.9, 75.8, 76.0, 76.0, 76.0, 76.0, 76.1, 76.2, 76.2, 76.0, 76.0)),
}


def _overrides(aa: bool, p: int) -> dict:
    out = {"method": "conadv", "attack.epsilon": float(p)}
    if aa:
        out["autoaugment"] = True
    return out


EXPERIMENT = Experiment(
    name="table5",
    title="Table 5: Top-1 accuracy when using different adversarial perturbation",
    description="ConAdv, ConAdv + AutoAugment x p in 0-10, 12 x 32k, 64k, 96k",
    rows=tuple(f"{row} {batch}" for row, batch in ROWS),
    columns=tuple(f"p={p}" for p in EPSILONS),
    cells=tuple(
        Cell(row=f"{row} {batch}", column=f"p={p}", paper_batch=batch, overrides=_overrides(aa, p),
             paper={"test_top1": values[i]})
        for (row, batch), (aa, values) in ROWS.items()
        for i, p in enumerate(EPSILONS)
    ),
    notes=("p = 0 with random init is a perturbation of zero: the clean batch twice, through the two BNs.",),
)
