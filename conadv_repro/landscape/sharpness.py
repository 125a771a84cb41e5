"""Sharpness that a rescaling of the weights cannot fake: the adaptive Hessian and epsilon-sharpness.

Dinh et al. 2017 ("Sharp Minima Can Generalize For Deep Nets") show that a raw Hessian eigenvalue is not
a property of the function a ReLU network computes: scaling one layer by a and the next by 1/a leaves the
function unchanged and scales the curvature at will. Batch normalisation adds its own freedom: in
training a weight before a BN is scale-free (the batch-normalised loss is unchanged by w -> a w, and its
Hessian scales by 1/a^2), so weight decay and the LR, not flatness, set much of its curvature. Two figures
that follow the weights' scale:

- `adaptive_operator`: diag(|w|) H diag(|w|), the Hessian in ASAM's normalised coordinates (Kwon et al.
  2021, "ASAM: Adaptive Sharpness-Aware Minimization", with their T_w = diag(|w|) and eta = 0 here):
  a perturbation of w_i is measured relative to |w_i|, so scaling a layer leaves its curvature unchanged.
  Its top eigenvalue is found by the same power iteration as H's (hessian.power_iteration).
- `epsilon_sharpness`: Keskar et al. 2017 ("On Large-Batch Training for Deep Learning: Generalization Gap
  and Sharp Minima", metric 3): phi = 100 (max f(w + z) - f(w)) / (1 + f(w)) over the box
  |z_i| <= eps (|w_i| + 1), in the full parameter space (their A = I). Keskar maximise with L-BFGS-B;
  here it is `steps` projected sign-ascent steps from z = 0, each of 2 eps (|w_i| + 1) / steps per
  coordinate, clamped to the box, the maximum taken over every point visited. A lower bound on the
  true maximum, like any finite ascent, and the same bound for everyone who uses the same steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from conadv_repro.landscape.hessian import MatVec, Vec
from conadv_repro.landscape.settings import ASCENT_STEPS, EPSILON


def adaptive_operator(matvec: MatVec, weights: Sequence[Tensor], *, eta: float = 0.0) -> MatVec:
    """v -> D H D v with D = diag(|w| + eta), `weights` the point's values (copied now)."""
    scale = [w.detach().abs() + eta for w in weights]

    def product(v: Vec) -> Vec:
        return [s * hv for s, hv in zip(scale, matvec([s * x for s, x in zip(scale, v, strict=True)]), strict=True)]

    return product


@dataclass(frozen=True)
class EpsilonSharpness:
    """phi in percent, the loss at w and the largest loss found in the box, and at which ascent step."""

    value: float
    loss: float
    max_loss: float
    best_step: int
    epsilon: float
    steps: int

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def epsilon_sharpness(value_and_grad: Callable[[], tuple[float, Vec]], value: Callable[[], float],
                      params: Sequence[Tensor], *, epsilon: float = EPSILON,
                      steps: int = ASCENT_STEPS) -> EpsilonSharpness:
    """Keskar's phi by projected sign ascent (module docstring). `value_and_grad` and `value` evaluate the
    loss at the current values of `params`, which are moved in place and put back before returning."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    origin = [p.detach().clone() for p in params]
    bound = [epsilon * (w.abs() + 1.0) for w in origin]
    step = [2.0 * b / steps for b in bound]
    offset = [torch.zeros_like(w) for w in origin]
    base, grad = value_and_grad()
    best, best_step = base, 0
    try:
        for k in range(1, steps + 1):
            with torch.no_grad():
                for p, w, z, g, a, b in zip(params, origin, offset, grad, step, bound, strict=True):
                    z.add_(a * g.sign())
                    torch.maximum(torch.minimum(z, b), -b, out=z)
                    p.copy_(w + z)
            # The last point needs no gradient: nothing steps from it.
            current = value() if k == steps else None
            if current is None:
                current, grad = value_and_grad()
            if current > best:
                best, best_step = current, k
    finally:
        with torch.no_grad():
            for p, w in zip(params, origin, strict=True):
                p.copy_(w)
    return EpsilonSharpness(value=100.0 * (best - base) / (1.0 + base), loss=base, max_loss=best,
                            best_step=best_step, epsilon=epsilon, steps=steps)


__all__ = ["ASCENT_STEPS", "EPSILON", "EpsilonSharpness", "adaptive_operator", "epsilon_sharpness"]
