"""The train-only step: DisAdv's two branches with no attack (a benchmark's method, not a training method).

The adversarial input is the clean one plus a fixed offset, so the step costs exactly the update of
DisAdv and ConAdv without their attack: what a ConAdv trainer's step costs when the attack is entirely
hidden (by attack workers, or by a side stream that finds the GPU idle). `benchmarks/throughput.py` and
`python -m conadv_repro.gpu_check` time it; it is not in `methods.METHODS`, so no run can train with it.
"""

from __future__ import annotations

import torch

from conadv_repro.data.loader import MicroBatch
from conadv_repro.methods.adversarial import AdversarialMethod
from conadv_repro.methods.base import Branch


class TrainOnly(AdversarialMethod):
    """DisAdv's two branches with no attack: the adversarial input is the clean one plus fixed noise."""

    name = "train_only"

    def branches(self, micro: MicroBatch) -> list[Branch]:
        noise = torch.full_like(micro.inputs, 0.01)
        return self.make_branches(micro, micro.inputs + noise)
