"""The measured function: a run's network in eval mode through its main BN, on a fixed sample.

What is perturbed is the main route's trainable parameters, picked through the split BN modules
(model/split_bn.py): every parameter outside a SplitBatchNorm2d, which are the convolutions and the fc
layer, plus each split BN's main branch's gamma and beta. The auxiliary and AutoAugment branches take no
part in evaluation and are never perturbed; no buffer is (running statistics stay fixed, except on the
line between two runs, see slices.py).

The loss is the run's training loss, cross-entropy with its label smoothing and without the weight-decay
term, as a mean over the sample; plain cross-entropy and top-1 are evaluated beside it. All of it in
float32 (`fp32_numerics`): no autocast, TF32 off, deterministic cuDNN, never torch.compile.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conadv_repro.landscape.hessian import Vec, hvp
from conadv_repro.model.split_bn import SplitBatchNorm2d, bn_route, split_bn_modules

Batches = Sequence[tuple[Tensor, Tensor]]


def main_route_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of the main route's trainable parameters, in `named_parameters` order (module
    docstring). Call it before building an `Objective`, which turns gradients off for everything else."""
    other_branches: set[int] = set()
    for split in split_bn_modules(model):
        for branch in split.branches:
            if branch != "main":
                other_branches.update(id(p) for p in getattr(split, branch).parameters())
    return [(name, p) for name, p in model.named_parameters() if id(p) not in other_branches and p.requires_grad]


def main_statistics(model: nn.Module) -> list[tuple[str, Tensor]]:
    """(name, buffer) of every split BN's main running mean and variance, in module order."""
    found: list[tuple[str, Tensor]] = []
    for name, module in model.named_modules():
        if isinstance(module, SplitBatchNorm2d):
            main: nn.BatchNorm2d = module.main
            found += [(f"{name}.main.running_mean", main.running_mean), (f"{name}.main.running_var", main.running_var)]
    return found


@contextmanager
def fp32_numerics() -> Iterator[None]:
    """float32 as written: TF32 off for matmuls and convolutions, deterministic cuDNN without autotuning
    (its algorithm choice would change the last bits from call to call); restored afterwards."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, precision,
         torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) = saved
        torch.set_float32_matmul_precision(precision)


class Objective:
    """The mean loss over `batches` as a function of `params`, which are moved in place by the measures.

    `model` is put in eval mode and every other parameter stops requiring gradients, so backward passes
    compute only what the measures need. `label_smoothing` is the run's (the training loss)."""

    def __init__(self, model: nn.Module, params: Sequence[nn.Parameter], batches: Batches, *,
                 label_smoothing: float):
        self.model = model.eval()
        self.params = list(params)
        self.batches = list(batches)
        self.label_smoothing = float(label_smoothing)
        self.examples = sum(int(t.shape[0]) for _, t in self.batches)
        chosen = {id(p) for p in self.params}
        for p in model.parameters():
            p.requires_grad_(id(p) in chosen)

    def _logits(self, inputs: Tensor) -> Tensor:
        with bn_route(self.model, "main", record=False):
            return self.model(inputs)

    def loss(self, inputs: Tensor, targets: Tensor, *, smoothing: float | None = None) -> Tensor:
        """The mean training loss (or cross-entropy with `smoothing`) over one micro-batch."""
        ls = self.label_smoothing if smoothing is None else smoothing
        return F.cross_entropy(self._logits(inputs), targets, label_smoothing=ls)

    def _weight(self, targets: Tensor) -> float:
        return int(targets.shape[0]) / self.examples

    def hvp(self, vector: Vec, *, smoothing: float | None = None) -> Vec:
        """H v of the mean loss over the sample (hessian.hvp, micro-batch by micro-batch)."""
        return hvp(lambda x, y: self.loss(x, y, smoothing=smoothing), self.batches, self.params, vector)

    def value(self) -> float:
        """The mean training loss over the sample (float64 sum of the micro-batches' weighted means)."""
        total = 0.0
        with torch.no_grad():
            for inputs, targets in self.batches:
                total += float(self.loss(inputs, targets).double()) * self._weight(targets)
        return total

    def value_and_grad(self) -> tuple[float, Vec]:
        total = 0.0
        grads = [torch.zeros_like(p) for p in self.params]
        for inputs, targets in self.batches:
            loss = self.loss(inputs, targets)
            weight = self._weight(targets)
            parts = torch.autograd.grad(loss, self.params, allow_unused=True)
            for acc, part in zip(grads, parts, strict=True):
                if part is not None:
                    acc.add_(part, alpha=weight)
            total += float(loss.detach().double()) * weight
        return total, grads

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Training loss, plain cross-entropy and top-1 (%) over the sample, from one forward."""
        train = ce = 0.0
        correct = 0
        for inputs, targets in self.batches:
            logits = self._logits(inputs)
            weight = self._weight(targets)
            train += float(F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing).double()) * weight
            ce += float(F.cross_entropy(logits, targets).double()) * weight
            correct += int(logits.argmax(1).eq(targets).sum())
        return {"loss": train, "loss_ce": ce, "top1": 100.0 * correct / self.examples}


__all__ = ["Objective", "fp32_numerics", "main_route_parameters", "main_statistics"]
