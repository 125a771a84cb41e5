"""LARS: the trust ratio, the two momentum forms, exclusions, against an independent float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conadv_repro.optim.lars import LARS, param_groups_for_lars, trust_ratio

F64 = torch.float64


# ---------------------------------------------------------------------------------------------- trust_ratio


def test_trust_ratio_formula() -> None:
    w, g = torch.tensor(3.0, dtype=F64), torch.tensor(2.0, dtype=F64)
    got = trust_ratio(w, g, trust_coefficient=0.01, weight_decay=0.1, eps=1e-3)
    assert got.item() == pytest.approx(0.01 * 3.0 / (2.0 + 0.1 * 3.0 + 1e-3), rel=1e-14)
    assert got.dtype == F64


@pytest.mark.parametrize("w, g", [(0.0, 2.0), (3.0, 0.0), (0.0, 0.0)])
def test_trust_ratio_is_one_where_a_norm_is_zero(w: float, g: float) -> None:
    # eps = 0 and wd = 0 make the raw formula inf or NaN here; the ratio must still be exactly 1.
    got = trust_ratio(torch.tensor(w), torch.tensor(g), trust_coefficient=0.001, weight_decay=0.0, eps=0.0)
    assert got.item() == 1.0


def test_trust_ratio_is_elementwise() -> None:
    w = torch.tensor([0.0, 4.0, 4.0])
    g = torch.tensor([1.0, 0.0, 2.0])
    got = trust_ratio(w, g, trust_coefficient=0.5, weight_decay=0.0, eps=0.0)
    assert got.tolist() == pytest.approx([1.0, 1.0, 1.0])
    got = trust_ratio(w, g, trust_coefficient=0.25, weight_decay=0.0, eps=0.0)
    assert got.tolist() == pytest.approx([1.0, 1.0, 0.5])


# ------------------------------------------------------------------------------ independent numpy reference


class NumpyLars:
    """timm's `Lars` (timm/optim/lars.py) in float64 numpy, written independently of our optimizer.

    The trust ratio and weight decay apply only where the parameter's weight decay is non-zero (timm's
    rule without always_adapt), which is how MLPerf excludes BatchNorm parameters and biases.
    """

    def __init__(
        self,
        params: list[np.ndarray],
        wds: list[float],
        lr: float,
        momentum: float,
        trust_coeff: float,
        eps: float,
    ) -> None:
        self.params = [p.copy() for p in params]
        self.wds = wds
        self.lr, self.momentum, self.trust_coeff, self.eps = lr, momentum, trust_coeff, eps
        self.bufs: list[np.ndarray | None] = [None] * len(params)

    def step(self, grads: list[np.ndarray]) -> None:
        for i, (p, g, wd) in enumerate(zip(self.params, grads, self.wds, strict=True)):
            grad = g.copy()
            if wd != 0:
                w_norm = np.sqrt(np.sum(p * p))
                g_norm = np.sqrt(np.sum(g * g))
                trust = (
                    self.trust_coeff * w_norm / (g_norm + w_norm * wd + self.eps)
                    if (w_norm > 0 and g_norm > 0)
                    else 1.0
                )
                grad = (grad + wd * p) * trust
            if self.bufs[i] is None:
                self.bufs[i] = grad.copy()
            else:
                self.bufs[i] = self.momentum * self.bufs[i] + grad
            self.params[i] = p - self.lr * self.bufs[i]


def small_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).to(F64)


@pytest.mark.parametrize("momentum_form", ["lr_inside", "lr_outside"])
def test_matches_numpy_reference_at_constant_lr(momentum_form: str) -> None:
    # A large trust coefficient so the parameters really move and the comparison is not vacuous.
    lr, momentum, wd, tc, eps = 0.5, 0.9, 1e-2, 0.05, 1e-9
    model = small_model()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 6, generator=gen, dtype=F64)
    y = torch.randint(0, 3, (16,), generator=gen)

    params = list(model.parameters())
    init = [p.detach().numpy().copy() for p in params]
    groups = param_groups_for_lars(model, weight_decay=wd)
    opt = LARS(groups, lr=lr, momentum=momentum, trust_coefficient=tc, eps=eps, momentum_form=momentum_form)
    ref = NumpyLars(init, [0.0 if p.ndim <= 1 else wd for p in params], lr, momentum, tc, eps)

    for _ in range(10):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        grads = [p.grad.detach().numpy().copy() for p in params]
        opt.step()
        ref.step(grads)
        for p, r, p0 in zip(params, ref.params, init, strict=True):
            # Compare displacements from the start: far stricter than comparing the parameters.
            np.testing.assert_allclose(p.detach().numpy() - p0, r - p0, rtol=1e-10, atol=1e-15)

    # The first Linear's bias is skipped: BatchNorm right after it cancels its gradient.
    moved = [
        np.abs(p.detach().numpy() - p0).max()
        for p, p0 in zip(params, init, strict=True)
        if p is not model[0].bias
    ]
    assert min(moved) > 1e-2


# ------------------------------------------------------------------------------ momentum forms under a schedule


GRADS = (torch.tensor([0.3, 0.1, -0.2], dtype=F64), torch.tensor([-0.1, 0.4, 0.2], dtype=F64))


def _two_steps(momentum_form: str, lrs: tuple[float, float]) -> torch.Tensor:
    """Two LARS steps on one parameter with fixed gradients, setting the group LR before each step."""
    w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=F64))
    opt = LARS(
        [w],
        lr=lrs[0],
        momentum=0.9,
        weight_decay=0.1,
        trust_coefficient=0.3,
        eps=0.0,
        momentum_form=momentum_form,
    )
    for lr, g in zip(lrs, GRADS, strict=True):
        for group in opt.param_groups:
            group["lr"] = lr
        w.grad = g.clone()
        opt.step()
    return w.detach().clone()


def _hand_trust(w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    wn, gn = w.norm(), g.norm()
    return 0.3 * wn / (gn + 0.1 * wn)


def test_momentum_forms_differ_under_changing_lr_and_lr_inside_matches_hand_update() -> None:
    lrs = (1.0, 0.25)
    w_in = _two_steps("lr_inside", lrs)
    w_out = _two_steps("lr_outside", lrs)
    assert not torch.allclose(w_in, w_out, rtol=1e-6, atol=0.0)

    # lr_inside by hand: v = m v + lr * trust * (g + wd w); w -= v
    w = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    v = torch.zeros(3, dtype=F64)
    for lr, g in zip(lrs, GRADS, strict=True):
        v = 0.9 * v + lr * _hand_trust(w, g) * (g + 0.1 * w)
        w = w - v
    torch.testing.assert_close(w_in, w, rtol=1e-14, atol=0.0)

    # lr_outside by hand: v = m v + trust * (g + wd w); w -= lr v
    w = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    v = torch.zeros(3, dtype=F64)
    for lr, g in zip(lrs, GRADS, strict=True):
        v = 0.9 * v + _hand_trust(w, g) * (g + 0.1 * w)
        w = w - lr * v
    torch.testing.assert_close(w_out, w, rtol=1e-14, atol=0.0)


def test_momentum_forms_agree_at_constant_lr() -> None:
    w_in = _two_steps("lr_inside", (0.7, 0.7))
    w_out = _two_steps("lr_outside", (0.7, 0.7))
    torch.testing.assert_close(w_in, w_out, rtol=1e-13, atol=0.0)


# ---------------------------------------------------------------------------------------------- exclusions


def test_excluded_params_get_no_weight_decay() -> None:
    excluded = nn.Parameter(torch.tensor([1.0, 2.0]))
    adapted = nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    # The excluded group even asks for weight decay: lars_exclude must win.
    opt = LARS(
        [
            {"params": [excluded], "lars_exclude": True, "weight_decay": 0.1},
            {"params": [adapted], "lars_exclude": False, "weight_decay": 0.1},
        ],
        lr=0.5,
    )
    before_ex, before_ad = excluded.detach().clone(), adapted.detach().clone()
    excluded.grad = torch.zeros_like(excluded)
    adapted.grad = torch.zeros_like(adapted)
    opt.step()
    assert torch.equal(excluded, before_ex)
    # Zero grad -> trust 1, so the step is pure decay: w -= lr * wd * w.
    torch.testing.assert_close(adapted.detach(), before_ad * (1 - 0.5 * 0.1))


def test_excluded_params_are_plain_momentum_sgd() -> None:
    p = nn.Parameter(torch.tensor([1.0, -1.0], dtype=F64))
    g = torch.tensor([0.2, 0.4], dtype=F64)
    for form in ("lr_inside", "lr_outside"):
        with torch.no_grad():
            p.copy_(torch.tensor([1.0, -1.0], dtype=F64))
        opt = LARS([{"params": [p], "lars_exclude": True}], lr=0.1, momentum=0.5, momentum_form=form)
        for _ in range(2):
            p.grad = g.clone()
            opt.step()
        # v1 = g, v2 = 1.5 g; w = w0 - lr * 2.5 g (no trust ratio, no decay)
        torch.testing.assert_close(p.detach(), torch.tensor([1.0, -1.0], dtype=F64) - 0.1 * 2.5 * g)


def test_param_groups_for_lars() -> None:
    model = small_model()
    model[0].bias.requires_grad_(False)
    groups = param_groups_for_lars(model, weight_decay=5e-5)
    adapted, excluded = groups
    assert adapted["lars_exclude"] is False and adapted["weight_decay"] == 5e-5
    assert excluded["lars_exclude"] is True and excluded["weight_decay"] == 0.0
    assert [id(p) for p in adapted["params"]] == [id(model[0].weight), id(model[3].weight)]
    assert [id(p) for p in excluded["params"]] == [id(model[1].weight), id(model[1].bias), id(model[3].bias)]


# ---------------------------------------------------------------------------------------------- misc


def test_unknown_momentum_form_raises() -> None:
    p = nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="nesterov.*lr_inside.*lr_outside"):
        LARS([p], lr=0.1, momentum_form="nesterov")
    with pytest.raises(ValueError, match="bogus"):
        LARS([{"params": [p], "momentum_form": "bogus"}], lr=0.1)


def test_skips_params_without_grad_and_returns_closure_loss() -> None:
    a, b = nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.ones(2, 2))
    opt = LARS([a, b], lr=0.1)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (a * 3).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == 12.0
    assert not torch.equal(a, torch.ones(2, 2))
    assert torch.equal(b, torch.ones(2, 2)) and b not in opt.state


def test_step_does_not_sync_with_host(monkeypatch: pytest.MonkeyPatch) -> None:
    model = small_model()
    opt = LARS(param_groups_for_lars(model, 1e-3), lr=0.1, trust_coefficient=0.01)
    model(torch.randn(4, 6, dtype=F64)).sum().backward()

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("host sync in LARS.step")

    for name in ("item", "__bool__", "__float__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    opt.step()
    opt.step()


def test_sgd_mode_keeps_weight_decay_without_a_trust_ratio() -> None:
    w = torch.nn.Parameter(torch.ones(3, 2))
    b = torch.nn.Parameter(torch.ones(3))
    opt = LARS([{"params": [w], "lars_exclude": False, "weight_decay": 0.5, "adapt": False},
                {"params": [b], "lars_exclude": True, "weight_decay": 0.0, "adapt": False}],
               lr=0.1, momentum=0.0)
    w.grad = torch.zeros_like(w)
    b.grad = torch.full_like(b, 2.0)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((3, 2), 1 - 0.1 * 0.5))
    torch.testing.assert_close(b.detach(), torch.full((3,), 1 - 0.1 * 2.0))


@pytest.mark.parametrize("momentum_form", ["lr_inside", "lr_outside"])
@pytest.mark.parametrize("optimizer", ["lars", "sgd"])
def test_the_foreach_step_is_bit_identical_to_the_per_tensor_step(momentum_form: str, optimizer: str) -> None:
    from tests.reference_lars import PerTensorLARS

    def build(cls: type[LARS]) -> tuple[nn.Module, LARS]:
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 5),
                              nn.Linear(5, 5))
        torch.manual_seed(0)
        for p in model.parameters():
            nn.init.normal_(p, std=0.3)
        groups = param_groups_for_lars(model, weight_decay=5e-3)
        if optimizer == "sgd":
            for group in groups:
                group["adapt"] = False
        return model, cls(groups, lr=0.3, momentum=0.9, weight_decay=5e-3, trust_coefficient=0.02, eps=1e-9,
                          momentum_form=momentum_form)

    (ours, opt), (theirs, ref) = build(LARS), build(PerTensorLARS)
    start = [p.detach().clone() for p in ours.parameters()]
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    for step in range(4):
        for model, optim in ((ours, opt), (theirs, ref)):
            for group in optim.param_groups:
                group["lr"] = 0.03 / (step + 1)  # a schedule: the two momentum forms differ under it
            optim.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            if step == 1:
                model[5].weight.grad = None  # a parameter without a gradient this step is skipped
            optim.step()
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b), name
        assert torch.equal(opt.state[a]["momentum_buffer"], ref.state[b]["momentum_buffer"]), name
    assert all(torch.isfinite(p).all() and not torch.equal(p, p0) for p, p0 in zip(ours.parameters(), start, strict=True))
