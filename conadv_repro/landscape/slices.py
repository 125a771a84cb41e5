"""One-dimensional slices of the loss: along a filter-normalised random direction, or between two runs.

Li et al. 2018 ("Visualizing the Loss Landscape of Neural Nets") show that a random direction says
nothing comparable across networks unless it has the network's own scale: each output filter of the
direction (a conv kernel's output channel, an fc layer's row) is rescaled to the norm of that filter of
the weights, and 1-D parameters (BN's gamma and beta, biases) get a zero direction, as in their code.
The slice is then f(w + alpha d) at the given alphas.

Between two runs (Goodfellow et al. 2015's linear path), the point at alpha is lerp(theta_A, theta_B,
alpha) for every tensor given, BN running statistics included when the caller passes them: with the
statistics of one run and the weights of another, the interpolated network would normalise by the wrong
moments. `torch.lerp` is exact at both ends, so alpha = 0 and 1 are the two runs bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from conadv_repro.landscape.hessian import Vec
from conadv_repro.landscape.settings import BETWEEN_ALPHAS, SLICE_ALPHAS

# Li et al.'s guard against a zero-norm direction filter.
_TINY = 1e-10


def filter_normalised_direction(weights: Sequence[Tensor], generator: torch.Generator) -> Vec:
    """A Gaussian direction (drawn on the CPU in order, one tensor per weight) with each output filter
    rescaled to the norm of the weights' filter; zero for 1-D parameters."""
    direction = []
    for w in weights:
        d = torch.randn(w.shape, generator=generator, dtype=torch.float32).to(w.device)
        if w.dim() <= 1:
            d.zero_()
        else:
            filters = d.reshape(d.shape[0], -1)
            target = w.detach().reshape(w.shape[0], -1).norm(dim=1, keepdim=True)
            filters.mul_(target / (filters.norm(dim=1, keepdim=True) + _TINY))
        direction.append(d)
    return direction


def _scan(evaluate: Callable[[], dict[str, Any]], tensors: Sequence[Tensor],
          point: Callable[[int, float], Tensor], alphas: Sequence[float]) -> list[dict[str, Any]]:
    origin = [t.detach().clone() for t in tensors]
    rows = []
    try:
        for alpha in alphas:
            with torch.no_grad():
                for i, t in enumerate(tensors):
                    t.copy_(point(i, alpha))
            rows.append({"alpha": float(alpha), **evaluate()})
    finally:
        with torch.no_grad():
            for t, o in zip(tensors, origin, strict=True):
                t.copy_(o)
    return rows


def slice_along(evaluate: Callable[[], dict[str, Any]], tensors: Sequence[Tensor], direction: Sequence[Tensor],
                alphas: Sequence[float] = SLICE_ALPHAS) -> list[dict[str, Any]]:
    """`evaluate()` at w + alpha d for each alpha (w: the tensors' values now, put back afterwards)."""
    origin = [t.detach().clone() for t in tensors]
    return _scan(evaluate, tensors, lambda i, alpha: origin[i] + alpha * direction[i], alphas)


def slice_between(evaluate: Callable[[], dict[str, Any]], tensors: Sequence[Tensor], end: Sequence[Tensor],
                  alphas: Sequence[float] = BETWEEN_ALPHAS) -> list[dict[str, Any]]:
    """`evaluate()` at lerp(start, end, alpha), start the tensors' values now (put back afterwards)."""
    start = [t.detach().clone() for t in tensors]
    return _scan(evaluate, tensors, lambda i, alpha: torch.lerp(start[i], end[i], alpha), alphas)


__all__ = ["BETWEEN_ALPHAS", "SLICE_ALPHAS", "filter_normalised_direction", "slice_along", "slice_between"]
