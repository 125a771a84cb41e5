"""How the trainers of a run share a step: one process, or DistributedDataParallel over the trainers.

Each trainer holds its own slice of the global batch (whole ghost-BN groups: groups stay per rank).
Gradients are averaged by DDP (its bucketed all-reduce overlaps the backward pass); the loss of a
micro-batch is scaled by its share of the trainer's slice, so the averaged gradient is the global
batch's. The ghost groups' recorded BN statistics are summed over the trainers once per step, before
the commit, so the running statistics equal those of one process on the whole batch and evaluation and
checkpoints do not depend on the device count. The step's metrics travel in the same single all-reduce
as a stop flag (rank 0 lost its lock), so every trainer agrees when to stop or that the loss diverged.

Why DDP is told to ignore some parameters: the split BN holds a branch per input kind, and a method
that trains only the main branch (vanilla) leaves the auxiliary one without gradients, which DDP's
reducer would wait for forever. The method says which branches it trains.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from conadv_repro.distributed.context import DistContext, local_gpu
from conadv_repro.model.split_bn import SplitBatchNorm2d, split_bn_modules

_DDP_PARAMETERS = inspect.signature(DistributedDataParallel.__init__).parameters


def unused_branch_parameters(model: nn.Module, trained: Iterable[str]) -> list[str]:
    """Names of the parameters and buffers of split-BN branches outside `trained`."""
    trained = set(trained)
    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, SplitBatchNorm2d):
            for branch in module.branches:
                if branch not in trained:
                    prefix = f"{module_name}.{branch}" if module_name else branch
                    bn = getattr(module, branch)
                    names += [f"{prefix}.{n}" for n, _ in bn.named_parameters()]
                    names += [f"{prefix}.{n}" for n, _ in bn.named_buffers()]
    return names


class Replicas:
    """The single-process case: nothing to share."""

    trainers = 1

    def wrap(self, model: nn.Module, trained_branches: Iterable[str]) -> nn.Module:
        return model

    def micro_context(self, wrapped: nn.Module, last: bool) -> AbstractContextManager[Any]:
        return nullcontext()

    def reduce_bn_statistics(self, model: nn.Module) -> None:
        pass

    def reduce_sums(self, values: Tensor) -> Tensor:
        return values


class DataParallelReplicas(Replicas):
    """The trainers of a multi-process run (attack workers are not in its group)."""

    def __init__(self, ctx: DistContext, device: torch.device):
        self.ctx = ctx
        self.trainers = ctx.trainers
        self.group = ctx.trainer_group
        self.device = device

    def gpu_index(self) -> int:
        """DDP's device: the model's; an unindexed "cuda" (trainer.resolve_device) is the GPU `local_gpu`
        gave this rank, which is not `local_rank` where each task sees only its own GPU."""
        return self.device.index if self.device.index is not None else local_gpu(self.ctx.local_rank)

    def wrap(self, model: nn.Module, trained_branches: Iterable[str]) -> nn.Module:
        ignored = unused_branch_parameters(model, trained_branches)
        if ignored:
            # The documented way to keep parameters out of DDP's reducer (used by torchrec and others).
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
        device_ids = [self.gpu_index()] if self.device.type == "cuda" else None
        # Buffers are not synchronised in forward: the BN statistics are reduced explicitly once per step.
        # (Newer torch names the switch forward_sync_buffers; both leave the initial sync, which is harmless:
        # every trainer builds the same seeded network.)
        no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in _DDP_PARAMETERS
                          else {"broadcast_buffers": False})
        return DistributedDataParallel(model, device_ids=device_ids, process_group=self.group, **no_buffer_sync)

    def micro_context(self, wrapped: nn.Module, last: bool) -> AbstractContextManager[Any]:
        # Gradient accumulation: only the step's last backward pass all-reduces.
        return nullcontext() if last else wrapped.no_sync()  # type: ignore[operator]

    @torch.no_grad()
    def reduce_bn_statistics(self, model: nn.Module) -> None:
        modules = list(split_bn_modules(model))
        tensors = [t for m in modules for t in m.pending_statistics().values()]
        if not tensors:
            return
        # The group counts travel with the sums: the commit divides by the groups of every trainer.
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, group=self.group)
        parts = flat.split([t.numel() for t in tensors])
        torch._foreach_copy_(tensors, [part.view_as(t) for part, t in zip(parts, tensors, strict=True)])

    def reduce_sums(self, values: Tensor) -> Tensor:
        dist.all_reduce(values, group=self.group)
        return values


def make_replicas(ctx: DistContext, device: torch.device) -> Replicas:
    return DataParallelReplicas(ctx, device) if ctx.multi and ctx.trainers > 1 else Replicas()
