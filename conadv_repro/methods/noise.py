"""A control for the adversarial methods: DisAdv's split BN and two-branch loss, with a random
perturbation of the same epsilon instead of the adversarial one.

It separates what the adversarial *gradient* brings from what the auxiliary BN branch and a perturbed
second view bring. The perturbation is a random corner of the epsilon ball (each element +eps or -eps,
keyed per example by (seed, step, index)): one sign step of PGD lands on the ball's faces too, so the two
perturbations have the same L-infinity and nearly the same L2 size.
"""

from __future__ import annotations

import torch

from conadv_repro.attack import keyed_uniform
from conadv_repro.data.keys import example_seed
from conadv_repro.data.loader import MicroBatch
from conadv_repro.methods.adversarial import AdversarialMethod
from conadv_repro.methods.base import Branch

STREAM_NOISE = 6


class NoiseControl(AdversarialMethod):
    name = "noise"

    def perturbed(self, micro: MicroBatch) -> torch.Tensor:
        keys = [example_seed(self.ctx.cfg.seed, micro.key.step, int(i), STREAM_NOISE) for i in micro.indices.tolist()]
        signs = keyed_uniform(keys, tuple(micro.inputs.shape[1:]), micro.inputs.device).sign()
        g = self.geometry
        return torch.clamp(micro.inputs + g.epsilon * signs, g.low, g.high)

    def branches(self, micro: MicroBatch) -> list[Branch]:
        return self.make_branches(micro, self.perturbed(micro))
