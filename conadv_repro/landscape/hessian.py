"""Second-order figures of a loss through Hessian-vector products: the top eigenvalue and the trace.

The Hessian of a network's loss is never formed. Its product with a vector v is the gradient of
(grad f . v), a second backward pass through the first one's graph (Pearlmutter 1994), and both figures
are built on that product as PyHessian does (Yao et al. 2020, "PyHessian: Neural Networks Through the
Lens of the Hessian"):

- the top eigenvalue by power iteration: v <- Hv / ||Hv||, the Rayleigh quotient v.Hv as the estimate,
  stopping when it changes by at most `tolerance` relative to itself, or after `max_iterations`. Power
  iteration finds the eigenvalue of largest magnitude, so a saddle's negative curvature can come out;
  the estimate keeps its sign. The residual ||Hv - lambda v|| is reported because it bounds the error:
  for a symmetric H some eigenvalue lies within it of the Rayleigh quotient (Krylov-Weinstein).
- the trace by Hutchinson's estimator: E[z.Hz] = tr(H) for Rademacher z (Hutchinson 1990), the mean
  over the probes with its standard error.

Vectors are lists of tensors shaped like the parameters. Dot products and norms accumulate in float64 in
a fixed order, so a run on the CPU with a given thread count repeats bit for bit. Random vectors come
from the caller's CPU `torch.Generator` and are then moved to the parameters' device, so a seed gives
the same draws on every device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Vec = list[Tensor]
MatVec = Callable[[Vec], Vec]
# (inputs, targets) -> the mean loss over that micro-batch, differentiable in the parameters.
LossFn = Callable[[Tensor, Tensor], Tensor]


def dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    """sum_i a_i . b_i, accumulated in float64."""
    total = torch.zeros((), dtype=torch.float64, device=a[0].device if a else "cpu")
    for x, y in zip(a, b, strict=True):
        total += (x.double() * y.double()).sum()
    return float(total)


def norm(a: Sequence[Tensor]) -> float:
    return math.sqrt(dot(a, a))


def scaled(a: Sequence[Tensor], factor: float) -> Vec:
    return [x * factor for x in a]


def combine(a: Sequence[Tensor], b: Sequence[Tensor], beta: float) -> Vec:
    """a + beta * b."""
    return [x + beta * y for x, y in zip(a, b, strict=True)]


def gaussian_like(like: Sequence[Tensor], generator: torch.Generator) -> Vec:
    """Standard normal draws shaped like `like`, drawn on the CPU in order, then moved to its device."""
    return [torch.randn(t.shape, generator=generator, dtype=torch.float32).to(t.device) for t in like]


def rademacher_like(like: Sequence[Tensor], generator: torch.Generator) -> Vec:
    """+-1 with equal probability, shaped like `like` (drawn on the CPU, as `gaussian_like`)."""
    return [(torch.randint(0, 2, t.shape, generator=generator) * 2 - 1).to(torch.float32).to(t.device)
            for t in like]


def hvp(loss_fn: LossFn, batches: Sequence[tuple[Tensor, Tensor]], params: Sequence[Tensor],
        vector: Sequence[Tensor]) -> Vec:
    """H v for the mean loss over all examples of `batches`, one micro-batch's graph at a time.

    The mean over the sample is the sum of the micro-batch means weighted by their share of the
    examples, and so is its Hessian: memory stays at one micro-batch's double-backward graph."""
    total = sum(int(targets.shape[0]) for _, targets in batches)
    out = [torch.zeros_like(p) for p in params]
    for inputs, targets in batches:
        loss = loss_fn(inputs, targets)
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        inner = sum((g * v).sum() for g, v in zip(grads, vector, strict=True) if g is not None)
        if not isinstance(inner, Tensor) or not inner.requires_grad:
            continue  # the loss is linear in every parameter on this micro-batch: H v = 0 here
        products = torch.autograd.grad(inner, params, allow_unused=True)
        weight = int(targets.shape[0]) / total
        for acc, product in zip(out, products, strict=True):
            if product is not None:
                acc.add_(product.detach(), alpha=weight)
    return out


@dataclass(frozen=True)
class Eigen:
    """A power iteration's answer: the signed estimate, the iterations used, ||Hv - value v|| at the
    last v, whether the relative change fell under the tolerance, and the estimate per iteration."""

    value: float
    iterations: int
    residual: float
    converged: bool
    history: tuple[float, ...]

    def as_dict(self) -> dict[str, object]:
        return {"value": self.value, "iterations": self.iterations, "residual": self.residual,
                "converged": self.converged, "history": list(self.history)}


def power_iteration(matvec: MatVec, like: Sequence[Tensor], generator: torch.Generator, *,
                    max_iterations: int = 20, tolerance: float = 1e-3) -> Eigen:
    """The eigenvalue of largest magnitude of the symmetric operator `matvec` (PyHessian's loop).

    Starts from a normalised Gaussian vector; each iteration costs one product. Stops after the first
    iteration k >= 2 with |lambda_k - lambda_{k-1}| <= tolerance * |lambda_k|."""
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
    v = gaussian_like(like, generator)
    v = scaled(v, 1.0 / norm(v))
    history: list[float] = []
    value, residual, converged = 0.0, 0.0, False
    for _ in range(max_iterations):
        w = matvec(v)
        value = dot(v, w)
        residual = norm(combine(w, v, -value))
        history.append(value)
        if len(history) > 1 and abs(value - history[-2]) <= tolerance * abs(value):
            converged = True
            break
        size = norm(w)
        if size == 0.0:  # v is in the null space; the operator may be zero
            converged = True
            break
        v = scaled(w, 1.0 / size)
    return Eigen(value=value, iterations=len(history), residual=residual, converged=converged,
                 history=tuple(history))


@dataclass(frozen=True)
class Trace:
    """Hutchinson's estimate: the mean of z.Hz over the probes and its standard error."""

    value: float
    stderr: float
    probes: int
    samples: tuple[float, ...]

    def as_dict(self) -> dict[str, object]:
        return {"value": self.value, "stderr": self.stderr, "probes": self.probes, "samples": list(self.samples)}


def hutchinson_trace(matvec: MatVec, like: Sequence[Tensor], generator: torch.Generator, *,
                     probes: int = 16) -> Trace:
    """tr(H) ~ mean of z.Hz over `probes` Rademacher vectors z; the standard error is the samples'
    standard deviation (n - 1) over sqrt(probes)."""
    if probes < 2:
        raise ValueError(f"probes must be >= 2 for a standard error, got {probes}")
    samples = []
    for _ in range(probes):
        z = rademacher_like(like, generator)
        samples.append(dot(z, matvec(z)))
    mean = math.fsum(samples) / probes
    variance = math.fsum((s - mean) ** 2 for s in samples) / (probes - 1)
    return Trace(value=mean, stderr=math.sqrt(variance / probes), probes=probes, samples=tuple(samples))


__all__ = ["Eigen", "LossFn", "MatVec", "Trace", "Vec", "combine", "dot", "gaussian_like", "hutchinson_trace",
           "hvp", "norm", "power_iteration", "rademacher_like", "scaled"]
