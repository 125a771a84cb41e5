"""The paper's attack: one step of PGD with random initialisation in an L-infinity ball (section 4.1).

    x_0   = clip(x + eps * u),          u ~ U[-1, 1]^d, keyed per example   (random init)
    x_adv = clip(x + proj_eps(x_0 - x + alpha * d))                         (one ascent step)

with d = sign(grad_x L) (PGD, Madry et al. 2017) or the raw gradient (the paper's eq. 3 and 5 write
x + alpha * grad_x L), alpha = step_size * eps, eps and alpha given in 0-255 pixel units (Table 5's p,
read as AdvProp reads it) and applied to the standardised input through each channel's std, and clip()
the range of valid pixels in standardised units. Gradients are taken with respect to the input only
(`torch.autograd.grad`), so the network's parameter gradients are never touched.

The random-init noise is a pure function of (seed, step, global example index, element), computed with
integer hashing on whatever device the batch lives: the same numbers on a CPU and a GPU, in any order of
execution, for any split of a batch into micro-batches or ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conadv_repro.config import AttackConfig
from conadv_repro.data.keys import STREAM_ATTACK, example_seed

MASK32 = 0xFFFFFFFF
STREAM_TARGET = 4  # the random wrong label of a targeted attack
STREAM_CLEAN_START = 5  # whether an example starts from the clean image


def _mul32(x: Tensor, constant: int) -> Tensor:
    """(x * constant) mod 2^32 for int64 tensors holding 32-bit values, without int64 overflow."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & MASK32


def hash32(x: Tensor) -> Tensor:
    """A 32-bit integer mixer (Wellons' lowbias32) on int64 tensors holding 32-bit values."""
    x = x & MASK32
    x = _mul32(x ^ (x >> 16), 0x7FEB352D)
    x = _mul32(x ^ (x >> 15), 0x846CA68B)
    return x ^ (x >> 16)


def keyed_uniform(keys: list[int], shape: tuple[int, ...], device: torch.device | str) -> Tensor:
    """Uniform [-1, 1) noise of `shape` per key: row i depends only on keys[i] (a 63-bit int)."""
    per_row = 1
    for size in shape:
        per_row *= size
    k = torch.tensor([[key & MASK32, (key >> 32) & MASK32] for key in keys], dtype=torch.int64)
    if torch.device(device).type == "cuda":
        # From pinned memory without blocking: a pageable copy would make the host wait for the device
        # (for the main stream's backlog, when the attack runs on the side stream) every micro-batch.
        k = k.pin_memory().to(device, non_blocking=True)
    counter = torch.arange(per_row, dtype=torch.int64, device=device).unsqueeze(0)
    bits = hash32(hash32(counter ^ k[:, :1]) ^ k[:, 1:])
    # 24 bits are exact in float32: u in [0, 1) on a grid of 2^-24, then mapped to [-1, 1).
    u = (bits >> 8).to(torch.float32) * (1.0 / (1 << 24))
    return (u * 2.0 - 1.0).reshape(len(keys), *shape)


@dataclass(frozen=True)
class AttackGeometry:
    """The attack's radius, step and valid range in standardised units, per channel (1,C,1,1)."""

    epsilon: Tensor
    step: Tensor
    low: Tensor
    high: Tensor

    @classmethod
    def build(cls, cfg: AttackConfig, mean: tuple[float, ...], std: tuple[float, ...],
              device: torch.device | str) -> AttackGeometry:
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        if cfg.units == "pixel":
            epsilon = cfg.epsilon / 255.0 / std_t
        else:  # the official code adds eps * 2/255 to the standardised input, whatever the std
            epsilon = torch.full_like(std_t, cfg.epsilon * 2.0 / 255.0)
        return cls(epsilon=epsilon, step=epsilon * cfg.step_size, low=(0.0 - mean_t) / std_t,
                   high=(1.0 - mean_t) / std_t)


def pgd_one_step(model: nn.Module, x: Tensor, y: Tensor, geometry: AttackGeometry, *,
                 noise: Tensor | None, gradient: str = "sign", target: Tensor | None = None,
                 autocast: Callable[[], AbstractContextManager[Any]] = nullcontext) -> Tensor:
    """One PGD step from `x` (standardised images) against `model` as it is (its mode and BN route are
    the caller's). `noise` in [-1, 1] (per element) scales to the random start; None starts at x.
    With `target`, the step descends the loss of the target label instead of ascending the true one."""
    x = x.detach()
    start = x if noise is None else torch.clamp(x + geometry.epsilon * noise, geometry.low, geometry.high)
    start = start.clone().requires_grad_(True)
    with autocast():
        logits = model(start)
    # A sum, not a mean: each example's input gradient then does not depend on the micro-batch size.
    if target is None:
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
    else:
        loss = -F.cross_entropy(logits.float(), target, reduction="sum")
    (grad,) = torch.autograd.grad(loss, start)
    direction = grad.sign() if gradient == "sign" else grad
    moved = start.detach() + geometry.step * direction
    delta = torch.maximum(torch.minimum(moved - x, geometry.epsilon), -geometry.epsilon)
    return torch.clamp(x + delta, geometry.low, geometry.high).detach()


def attack_noise(cfg: AttackConfig, seed: int, step: int, indices: Tensor, shape: tuple[int, ...],
                 device: torch.device | str) -> Tensor | None:
    """The random start of each example, keyed by (seed, step, global index); zero for examples that
    start from the clean image (`clean_start_prob`); None when there is no random init."""
    if not cfg.random_init:
        return None
    index_list = [int(i) for i in indices.tolist()]
    noise = keyed_uniform([example_seed(seed, step, i, STREAM_ATTACK) for i in index_list], shape, device)
    if cfg.clean_start_prob > 0:
        draws = keyed_uniform([example_seed(seed, step, i, STREAM_CLEAN_START) for i in index_list], (1,), device)
        clean = (draws.view(-1) + 1.0) / 2.0 < cfg.clean_start_prob
        noise = noise * (~clean).to(noise.dtype).view(-1, *([1] * len(shape)))
    return noise


def random_wrong_labels(seed: int, step: int, indices: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """A uniformly drawn label other than the true one, keyed per example (the official code's target)."""
    keys = [example_seed(seed, step, int(i), STREAM_TARGET) for i in indices.tolist()]
    u = (keyed_uniform(keys, (1,), labels.device).view(-1) + 1.0) / 2.0
    offset = 1 + torch.clamp((u * (num_classes - 1)).long(), max=num_classes - 2)
    return (labels + offset) % num_classes
