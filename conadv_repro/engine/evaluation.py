"""Clean top-1/top-5 of a network in eval mode (main BN, running statistics)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conadv_repro.model.split_bn import bn_route


def topk_correct(logits: Tensor, targets: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[Tensor]:
    """Number of examples whose target is among the top-k logits, for each k (capped at #classes)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top.eq(targets.unsqueeze(1))
    return [hits[:, : min(k, kmax)].any(dim=1).sum() for k in ks]


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], *, device: torch.device,
             channels_last: bool = False,
             autocast: Callable[[], AbstractContextManager[Any]] = nullcontext) -> dict[str, float]:
    """Top-1 and top-5 accuracy (in %) and the mean cross-entropy over `batches`."""
    was_training = model.training
    model.eval()
    correct1 = torch.zeros((), device=device, dtype=torch.float64)
    correct5 = torch.zeros((), device=device, dtype=torch.float64)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    count = 0
    try:
        with bn_route(model, "main", record=False):
            for inputs, targets in batches:
                inputs = inputs.to(device, non_blocking=True)
                if channels_last:
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                targets = targets.to(device, non_blocking=True)
                with autocast():
                    logits = model(inputs)
                logits = logits.float()
                loss_sum += F.cross_entropy(logits, targets, reduction="sum")
                c1, c5 = topk_correct(logits, targets)
                correct1 += c1
                correct5 += c5
                count += targets.shape[0]
    finally:
        model.train(was_training)
    if count == 0:
        return {"top1": float("nan"), "top5": float("nan"), "loss": float("nan"), "count": 0}
    return {"top1": 100.0 * correct1.item() / count, "top5": 100.0 * correct5.item() / count,
            "loss": loss_sum.item() / count, "count": count}
