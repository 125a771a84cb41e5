"""The split ghost BN as the first release wrote it: seven fp32 tensor operations per layer.

Kept in the tests as the definition the fused module (`conadv_repro/model/split_bn.py`) is held to:
statistics per group of `group_size` examples of one branch, in float32 under bf16 autocast; the groups'
means and unbiased variances recorded and folded into the running statistics once per `commit`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BRANCHES = ("main", "aux")


class ReferenceSplitBatchNorm2d(nn.Module):
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
