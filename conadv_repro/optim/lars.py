"""LARS: layer-wise adaptive rate scaling (You, Gitman & Ginsburg 2017, arXiv:1708.03888).

Follows the MLPerf ResNet-50 reference (TF `LARSOptimizer` of the MLPerf training reference, and NVIDIA's
MXNet submission). For each non-excluded parameter `w` with gradient `g`:

    trust    = eta * ||w|| / (||g|| + wd * ||w|| + eps)     (1 where ||w|| or ||g|| is 0)
    local_lr = lr * trust
    d        = g + wd * w

Momentum form (`momentum_form`):

* ``"lr_inside"`` (default; MLPerf TF / NVIDIA MXNet): ``v = m * v + local_lr * d; w = w - v``.
  The LR lives inside the momentum buffer, so when the schedule changes the LR, past updates keep the LR
  they were taken with (NVIDIA's MXNet code expresses this as rescaling the buffer by lr_t / lr_{t-1}).
* ``"lr_outside"`` (timm `Lars`, torch SGD): ``v = m * v + trust * d; w = w - lr * v``.
  The current LR multiplies the whole buffer.

The two forms agree at constant LR and differ under a schedule.

Parameters in a group with ``lars_exclude=True`` (BatchNorm parameters and biases in MLPerf) get neither
the trust ratio nor weight decay: the same momentum update with ``trust = 1`` and ``d = g``.

The buffer starts at zero, so the first step stores exactly the update term. No Nesterov, no dampening.
A step runs per parameter group in `torch._foreach_*` operations: the norms, the weight decay, the momentum
and the update are multi-tensor kernels on a GPU, and the trust ratios of all the group's parameters are
computed at once on the device (their multiplication, a 0-d tensor per parameter, still launches one
kernel each). On the CPU the results are bit-identical to the per-tensor loop of the previous release
(tests/reference_lars.py).
Unlike the TF reference, `eps=0` stays 0 here (TF silently turns it into about 1e-7); the denominator is
positive wherever both norms are, and the ratio is 1 elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

MOMENTUM_FORMS = ("lr_inside", "lr_outside")


def trust_ratio(
    param_norm: Tensor,
    grad_norm: Tensor,
    *,
    trust_coefficient: float,
    weight_decay: float,
    eps: float,
) -> Tensor:
    """LARS trust ratio ``tc * ||w|| / (||g|| + wd * ||w|| + eps)``, 1 where either norm is 0.

    `torch.where` rather than a Python `if` keeps the decision on the device (no host sync); the
    discarded branch may hold inf/NaN for zero norms, which is harmless.
    """
    ratio = trust_coefficient * param_norm / (grad_norm + weight_decay * param_norm + eps)
    both_nonzero = (param_norm > 0) & (grad_norm > 0)
    return torch.where(both_nonzero, ratio, torch.ones_like(ratio))


def _check_momentum_form(momentum_form: Any) -> None:
    if momentum_form not in MOMENTUM_FORMS:
        raise ValueError(f"unknown momentum_form {momentum_form!r}; expected one of {MOMENTUM_FORMS}")


class LARS(torch.optim.Optimizer):
    """LARS with momentum; see the module docstring for the exact update and the two momentum forms."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        trust_coefficient: float = 0.001,
        eps: float = 0.0,
        momentum_form: str = "lr_inside",
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if momentum < 0.0:
            raise ValueError(f"momentum must be >= 0, got {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        _check_momentum_form(momentum_form)
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            eps=eps,
            momentum_form=momentum_form,
            lars_exclude=False,
            adapt=True,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # A group may override momentum_form; reject a bad one here rather than at the first step().
        super().add_param_group(param_group)
        _check_momentum_form(self.param_groups[-1]["momentum_form"])

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._step_group(group, params)
        return loss

    def _step_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        """One group's update in foreach ops (see the module docstring), with no host sync."""
        lr, momentum = group["lr"], group["momentum"]
        exclude = group["lars_exclude"]
        lr_inside = group["momentum_form"] == "lr_inside"
        # Excluded params (BN, biases) ignore the group's weight_decay, as in MLPerf.
        wd = 0.0 if exclude else group["weight_decay"]
        grads = [p.grad for p in params]
        if exclude or wd == 0.0:
            # Copies: a buffer must not alias p.grad, which zero_grad may clear in place.
            updates = [g.clone() for g in grads]
        else:
            updates = torch._foreach_add(grads, params, alpha=wd)
        if not exclude and group["adapt"]:
            trust = trust_ratio(torch.stack(torch._foreach_norm(params)), torch.stack(torch._foreach_norm(grads)),
                                trust_coefficient=group["trust_coefficient"], weight_decay=wd, eps=group["eps"])
            torch._foreach_mul_(updates, trust.unbind(0))
        if lr_inside:
            torch._foreach_mul_(updates, lr)
        # The buffers start at zero, so a first step stores its update: v = m * 0 + update.
        moving = [(self.state[p]["momentum_buffer"], u) for p, u in zip(params, updates, strict=True)
                  if "momentum_buffer" in self.state[p]]
        for p, update in zip(params, updates, strict=True):
            self.state[p].setdefault("momentum_buffer", update)
        if moving:
            buffers, moving_updates = (list(side) for side in zip(*moving, strict=True))
            torch._foreach_mul_(buffers, momentum)
            torch._foreach_add_(buffers, moving_updates)
        buffers = [self.state[p]["momentum_buffer"] for p in params]
        if lr_inside:
            torch._foreach_sub_(params, buffers)
        else:
            torch._foreach_add_(params, buffers, alpha=-lr)


def param_groups_for_lars(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split `model`'s trainable parameters into the MLPerf LARS groups.

    Parameters with ``ndim <= 1`` (BatchNorm weights and biases, layer biases) are excluded from the trust
    ratio and weight decay; the rest (conv and linear weights) get both. Order follows
    `model.named_parameters()` so that optimizer state lines up across runs and resumes.
    """
    adapted: list[Tensor] = []
    excluded: list[Tensor] = []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (excluded if p.ndim <= 1 else adapted).append(p)
    return [
        {"params": adapted, "lars_exclude": False, "weight_decay": weight_decay},
        {"params": excluded, "lars_exclude": True, "weight_decay": 0.0},
    ]
