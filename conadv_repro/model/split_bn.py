"""Split ghost BatchNorm: a main BN for clean images and an auxiliary BN for adversarial ones.

Split BN follows AdvProp (Xie et al. 2020), which the paper adopts (section 3.2): clean examples are
normalised by the main BN, adversarial ones by the auxiliary BN, and evaluation uses the main BN only.

Ghost BN: in training mode the batch statistics come from groups of `group_size` examples of one
branch (the paper keeps at least 64 examples per worker for its statistics, section 4.2). The running
statistics are NOT updated in the forward pass: every forward records its groups' (mean, unbiased var),
and `commit_bn_statistics` folds the mean of all recorded groups into the running statistics once per
optimizer step. So the running statistics, evaluation and checkpoints do not depend on how a batch was
split over micro-batches or devices.

Each group is one call of torch's fused batch norm (cuDNN's on a GPU), on a `split` of the batch: it saves
only its input (a view of the layer's input) for backward, as torchvision's BatchNorm2d does, and
accumulates its statistics in float32 whatever the input's dtype. Called with momentum 1.0 and a zeroed
row of a scratch tensor as its running statistics, the kernel writes the group's mean and unbiased
variance there itself, so recording costs no extra pass over the activations.

What is recorded lives in tensors on the device, counts included: committing, moving and reducing the
statistics are tensor operations that never wait for the device, and the forward holds no Python state
that changes from call to call, so torch.compile traces it once per branch.

Which BN a forward uses, and whether it records statistics, is set on the modules by `bn_route`
(a context manager); a snapshot copy of the network has its own modules, so a concurrent attack on a
snapshot never races with training on the live network.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BRANCHES = ("main", "aux")
THREE_WAY = ("main", "aux", "aug")  # the official code's third BN, for AutoAugment images

# Rows of a branch's pending statistics: summed group means, summed unbiased variances, group count.
MEAN, VAR, COUNT = 0, 1, 2


class SplitBatchNorm2d(nn.Module):
    """BatchNorm2d with a main and an auxiliary branch, ghost groups, and once-per-step running stats."""

    def __init__(self, num_features: int, *, group_size: int, momentum: float = 0.1, eps: float = 1e-5,
                 branches: tuple[str, ...] = BRANCHES):
        super().__init__()
        self.branches = branches
        self.num_features = num_features
        self.group_size = group_size
        self.momentum = momentum
        self.eps = eps
        for name in branches:
            self.add_module(name, nn.BatchNorm2d(num_features, eps=eps, momentum=momentum))
        self.branch = "main"
        self.record = True
        # Per branch, a (3, C) float32 buffer of what the forwards recorded since the last commit (rows MEAN,
        # VAR, COUNT; the count repeated per channel, so that the commit's foreach operations pair tensors of
        # one shape). Not part of the state dict: empty at every step boundary, where checkpoints are taken.
        for name in branches:
            self.register_buffer(f"_pending_{name}", torch.zeros(3, num_features), persistent=False)

    def pending(self, branch: str) -> Tensor:
        return getattr(self, f"_pending_{branch}")

    def forward(self, x: Tensor) -> Tensor:
        bn: nn.BatchNorm2d = getattr(self, self.branch)
        if not self.training:
            return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, self.eps)
        n, c = x.shape[0], x.shape[1]
        if n % self.group_size:
            raise ValueError(f"a training batch of {n} examples is not a whole number of BN groups of "
                             f"{self.group_size}")
        if self.group_size * math.prod(x.shape[2:]) < 2:
            raise ValueError(f"a BN group of {self.group_size} examples of {tuple(x.shape[2:])} positions has "
                             "one value per channel, which has no variance; use a larger bn.group_size")
        groups = n // self.group_size
        # With momentum 1.0 each call writes its group's mean and unbiased variance into its row of `stats`
        # (zeroed, since the kernel computes 0 * old + 1 * new). Without recording, nothing is written.
        stats = torch.zeros(2, groups, c, device=x.device, dtype=torch.float32) if self.record else None
        parts = x.split(self.group_size) if groups > 1 else (x,)
        outputs = [F.batch_norm(part, None if stats is None else stats[0, i], None if stats is None else stats[1, i],
                                bn.weight, bn.bias, True, 1.0, self.eps) for i, part in enumerate(parts)]
        y = torch.cat(outputs) if groups > 1 else outputs[0]
        if stats is not None:
            with torch.no_grad():
                pending = self.pending(self.branch)
                pending[:COUNT].add_(stats.sum(1))
                pending[COUNT].add_(groups)
        return y

    def pending_statistics(self) -> dict[str, Tensor]:
        """The recorded sums and counts (for an all-reduce across ranks before the commit)."""
        return {f"_pending_{b}": self.pending(b) for b in self.branches}


def split_bn_modules(model: nn.Module) -> Iterator[SplitBatchNorm2d]:
    return (m for m in model.modules() if isinstance(m, SplitBatchNorm2d))


def convert_to_split_bn(model: nn.Module, *, group_size: int, momentum: float, eps: float,
                        branches: tuple[str, ...] = BRANCHES) -> nn.Module:
    """Replace every BatchNorm2d of `model` by a SplitBatchNorm2d whose branches all start as copies."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            split = SplitBatchNorm2d(child.num_features, group_size=group_size, momentum=momentum, eps=eps,
                                     branches=branches)
            with torch.no_grad():
                for branch in branches:
                    getattr(split, branch).weight.copy_(child.weight)
                    getattr(split, branch).bias.copy_(child.bias)
            setattr(model, name, split)
        else:
            convert_to_split_bn(child, group_size=group_size, momentum=momentum, eps=eps, branches=branches)
    return model


@contextmanager
def bn_route(model: nn.Module, branch: str, *, record: bool = True) -> Iterator[None]:
    """Route forwards of `model` through the `branch` BN ("main" or "aux"); `record=False` leaves the
    running statistics untouched (e.g. an attack in train mode with frozen statistics)."""
    modules = list(split_bn_modules(model))
    allowed = modules[0].branches if modules else BRANCHES
    if branch not in allowed:
        raise ValueError(f"unknown BN branch {branch!r}; allowed: {', '.join(allowed)}")
    previous = [(m.branch, m.record) for m in modules]
    for m in modules:
        m.branch, m.record = branch, record
    try:
        yield
    finally:
        for m, (b, r) in zip(modules, previous, strict=True):
            m.branch, m.record = b, r


@torch.no_grad()
def commit_bn_statistics(model: nn.Module) -> None:
    """Once per optimizer step: update every split BN's running statistics from its recorded groups.

    running = (1 - m) * running + m * (sum of the groups' statistics) / groups, for each branch that
    recorded groups; the others keep theirs. A few foreach operations per branch over all layers, with
    the count read on the device, so the commit neither syncs with the host nor launches per layer."""
    modules = list(split_bn_modules(model))
    if not modules:
        return
    for branch in modules[0].branches:
        for momentum in sorted({m.momentum for m in modules}):
            layers = [m for m in modules if m.momentum == momentum]
            bns: list[nn.BatchNorm2d] = [getattr(m, branch) for m in layers]
            pending = [m.pending(branch) for m in layers]
            counts = [p[COUNT] for p in pending]
            recorded = torch._foreach_sign(counts)  # 1 where the branch recorded groups, else 0
            scale = torch._foreach_clamp_min(counts, 1.0)
            torch._foreach_reciprocal_(scale)
            torch._foreach_mul_(scale, recorded)
            torch._foreach_mul_(scale, momentum)  # m / groups, or 0
            keep = torch._foreach_mul(recorded, -momentum)
            torch._foreach_add_(keep, 1.0)  # 1 - m, or 1
            for row, running in ((MEAN, [bn.running_mean for bn in bns]), (VAR, [bn.running_var for bn in bns])):
                torch._foreach_mul_(running, keep)
                torch._foreach_addcmul_(running, [p[row] for p in pending], scale)
            steps = torch.stack([r[0] for r in recorded]).long().unbind(0)
            torch._foreach_add_([bn.num_batches_tracked for bn in bns], steps)
            torch._foreach_zero_(pending)


@torch.no_grad()
def discard_bn_statistics(model: nn.Module) -> None:
    """Forget what the forwards recorded since the last commit (e.g. a diverged step's)."""
    pending = [t for m in split_bn_modules(model) for t in m.pending_statistics().values()]
    if pending:
        torch._foreach_zero_(pending)


@torch.no_grad()
def move_pending_statistics(source: nn.Module, target: nn.Module) -> None:
    """Add the statistics `source` recorded to those of `target` (same architecture) and clear them in
    `source`: an attack on a snapshot that should move the live network's running statistics."""
    sources: list[Tensor] = []
    targets: list[Tensor] = []
    for src, dst in zip(split_bn_modules(source), split_bn_modules(target), strict=True):
        sources += src.pending_statistics().values()
        targets += dst.pending_statistics().values()
    if sources:
        torch._foreach_add_(targets, sources)
        torch._foreach_zero_(sources)
