"""LARS's step as the previous release wrote it: a loop over the parameters, one tensor at a time.

Kept in the tests as the reference the foreach step of `conadv_repro/optim/lars.py` is held to, bit for bit
on the CPU (tests/test_lars.py).
"""

from __future__ import annotations

from typing import Any

import torch

from conadv_repro.optim.lars import LARS, trust_ratio


class PerTensorLARS(LARS):
    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            lr = group["lr"]
            momentum = group["momentum"]
            exclude = group["lars_exclude"]
            lr_inside = group["momentum_form"] == "lr_inside"
            # Excluded params (BN, biases) ignore the group's weight_decay, as in MLPerf.
            wd = 0.0 if exclude else group["weight_decay"]

            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad

                if exclude:
                    # Copy: the buffer must not alias p.grad, which zero_grad may clear in place.
                    update = grad.clone()
                elif not group["adapt"]:
                    # Plain momentum SGD with weight decay (optim.name=sgd): no trust ratio.
                    update = grad.add(p, alpha=wd) if wd != 0.0 else grad.clone()
                else:
                    trust = trust_ratio(
                        torch.linalg.vector_norm(p),
                        torch.linalg.vector_norm(grad),
                        trust_coefficient=group["trust_coefficient"],
                        weight_decay=wd,
                        eps=group["eps"],
                    )
                    update = grad.add(p, alpha=wd) if wd != 0.0 else grad.clone()
                    update.mul_(trust)

                if lr_inside:
                    update.mul_(lr)

                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    # v = m * 0 + update
                    buf = state["momentum_buffer"] = update
                else:
                    buf.mul_(momentum).add_(update)

                if lr_inside:
                    p.sub_(buf)
                else:
                    p.add_(buf, alpha=-lr)

        return loss
