"""What DisAdv and ConAdv share: the attack in its configured BN mode, and the training branches.

Branches: the clean (or AutoAugment) image through the main BN and its adversarial twin through the
auxiliary BN (AdvProp's split BN, section 3.2 of the paper). With `bn.three_way` (the official code),
the original image goes through the main BN, the AutoAugment image through a third BN and the
adversarial one (attacked from the AutoAugment image) through the auxiliary BN. The loss is the sum of
the branch losses (eq. 2, Algorithm 1) or their mean (eq. 4's 1/2), per `attack.loss_weighting`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn

from conadv_repro.attack import AttackGeometry, attack_noise, pgd_one_step, random_wrong_labels
from conadv_repro.data.loader import MicroBatch
from conadv_repro.methods.base import Branch, Method, MethodContext
from conadv_repro.model.split_bn import bn_route


@contextmanager
def attack_mode(model: nn.Module, branch: str, bn_mode: str) -> Iterator[None]:
    """Put `model` in the attack's BN mode for the duration, and restore its train/eval flag."""
    was_training = model.training
    model.train(bn_mode != "eval")
    try:
        with bn_route(model, branch, record=bn_mode == "train_moving"):
            yield
    finally:
        model.train(was_training)


class AdversarialMethod(Method):
    name = "adversarial"

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        cfg = ctx.cfg
        self.attack_cfg = cfg.attack
        self.geometry = AttackGeometry.build(cfg.attack, ctx.mean, ctx.std, ctx.device)
        self.three_way = cfg.bn.three_way
        branches = 3 if self.three_way else 2
        self.weight = 1.0 if cfg.attack.loss_weighting == "sum" else 1.0 / branches

    def trained_bn_branches(self) -> tuple[str, ...]:
        return ("main", "aug", "aux") if self.three_way else ("main", "aux")

    def adversarial(self, model: nn.Module, micro: MicroBatch) -> Tensor:
        """The adversarial twin of `micro` (on the device) against `model` (the live network or a snapshot)."""
        cfg, seed, step = self.attack_cfg, self.ctx.cfg.seed, micro.key.step
        noise = attack_noise(cfg, seed, step, micro.indices, tuple(micro.inputs.shape[1:]), micro.inputs.device)
        target = None
        if cfg.target == "random":
            target = random_wrong_labels(seed, step, micro.indices, micro.targets, self.ctx.num_classes)
        with attack_mode(model, cfg.bn, cfg.bn_mode):
            return pgd_one_step(model, micro.inputs, micro.targets, self.geometry, noise=noise,
                                gradient=cfg.gradient, target=target, autocast=self.ctx.autocast)

    def make_branches(self, micro: MicroBatch, adversarial: Tensor) -> list[Branch]:
        w = self.weight
        if self.three_way:
            if micro.originals is None:
                raise RuntimeError("bn.three_way needs the data loader's paired original images")
            return [Branch("clean", micro.originals, micro.targets, "main", w),
                    Branch("augmented", micro.inputs, micro.targets, "aug", w),
                    Branch("adv", adversarial, micro.targets, "aux", w)]
        return [Branch("clean", micro.inputs, micro.targets, "main", w),
                Branch("adv", adversarial, micro.targets, "aux", w)]
