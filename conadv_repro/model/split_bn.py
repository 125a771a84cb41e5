"""Split ghost BatchNorm: a main BN for clean images and an auxiliary BN for adversarial ones.

Split BN follows AdvProp (Xie et al. 2020), which the paper adopts (section 3.2): clean examples are
normalised by the main BN, adversarial ones by the auxiliary BN, and evaluation uses the main BN only.

Ghost BN: in training mode the batch statistics come from groups of `group_size` examples of one
branch (the paper keeps at least 64 examples per worker for its statistics, section 4.2). The running
statistics are NOT updated in the forward pass: every forward records its groups' (mean, unbiased var),
and `commit_bn_statistics` folds the mean of all recorded groups into the running statistics once per
optimizer step. So the running statistics, evaluation and checkpoints do not depend on how a batch was
split over micro-batches or devices.

Which BN a forward uses, and whether it records statistics, is set on the modules by `bn_route`
(a context manager); a snapshot copy of the network has its own modules, so a concurrent attack on a
snapshot never races with training on the live network.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BRANCHES = ("main", "aux")
THREE_WAY = ("main", "aux", "aug")  # the official code's third BN, for AutoAugment images


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
        # Per branch: sums of the recorded groups' means and unbiased variances (buffers, on the device)
        # and the number of groups (a Python int: known from shapes, so committing needs no host sync).
        # Not part of the state dict: they are empty at every step boundary, where checkpoints are taken.
        for name in branches:
            self.register_buffer(f"_sum_mean_{name}", torch.zeros(num_features), persistent=False)
            self.register_buffer(f"_sum_var_{name}", torch.zeros(num_features), persistent=False)
        self.groups = dict.fromkeys(branches, 0)

    def forward(self, x: Tensor) -> Tensor:
        bn: nn.BatchNorm2d = getattr(self, self.branch)
        if not self.training:
            return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, self.eps)
        n, c = x.shape[0], x.shape[1]
        if n % self.group_size:
            raise ValueError(f"a training batch of {n} examples is not a whole number of BN groups of "
                             f"{self.group_size}")
        groups = n // self.group_size
        # Statistics in float32 even under autocast: bf16 variances of large groups lose too much.
        xg = x.float().reshape(groups, self.group_size, c, -1)
        var, mean = torch.var_mean(xg, dim=(1, 3), keepdim=True, unbiased=False)
        y = (xg - mean) * torch.rsqrt(var + self.eps)
        y = y.reshape(x.shape) * bn.weight.view(1, c, 1, 1) + bn.bias.view(1, c, 1, 1)
        if self.record:
            with torch.no_grad():
                count = self.group_size * xg.shape[3]
                unbiased = var.reshape(groups, c) * (count / max(count - 1, 1))
                getattr(self, f"_sum_mean_{self.branch}").add_(mean.reshape(groups, c).sum(0))
                getattr(self, f"_sum_var_{self.branch}").add_(unbiased.sum(0))
                self.groups[self.branch] += groups
        return y.to(x.dtype)

    def pending_statistics(self) -> dict[str, Tensor]:
        """The recorded sums (for an all-reduce across ranks before `commit`); counts are in `groups`."""
        return {f"_{kind}_{b}": getattr(self, f"_{kind}_{b}") for b in self.branches
                for kind in ("sum_mean", "sum_var")}

    @torch.no_grad()
    def commit(self) -> None:
        """Fold the mean of the recorded group statistics into the running statistics, then reset.
        Branches that recorded nothing keep their statistics."""
        m = self.momentum
        for name in self.branches:
            groups = self.groups[name]
            if not groups:
                continue
            bn: nn.BatchNorm2d = getattr(self, name)
            bn.running_mean.mul_(1 - m).add_(getattr(self, f"_sum_mean_{name}"), alpha=m / groups)
            bn.running_var.mul_(1 - m).add_(getattr(self, f"_sum_var_{name}"), alpha=m / groups)
            bn.num_batches_tracked.add_(1)
        self.discard()

    @torch.no_grad()
    def discard(self) -> None:
        for name in self.branches:
            if self.groups[name]:
                getattr(self, f"_sum_mean_{name}").zero_()
                getattr(self, f"_sum_var_{name}").zero_()
                self.groups[name] = 0


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


def commit_bn_statistics(model: nn.Module) -> None:
    """Once per optimizer step: update every split BN's running statistics from its recorded groups."""
    for m in split_bn_modules(model):
        m.commit()


def discard_bn_statistics(model: nn.Module) -> None:
    for m in split_bn_modules(model):
        m.discard()


@torch.no_grad()
def move_pending_statistics(source: nn.Module, target: nn.Module) -> None:
    """Add the statistics `source` recorded to those of `target` (same architecture) and clear them in
    `source`: an attack on a snapshot that should move the live network's running statistics."""
    for src, dst in zip(split_bn_modules(source), split_bn_modules(target), strict=True):
        for name, value in src.pending_statistics().items():
            getattr(dst, name).add_(value)
        for branch, groups in src.groups.items():
            dst.groups[branch] += groups
        src.discard()
