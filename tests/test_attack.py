"""The attack as pure functions: keyed noise, the epsilon ball, input-only gradients, directions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from conadv_repro.attack import (
    AttackGeometry,
    attack_noise,
    hash32,
    keyed_uniform,
    pgd_one_step,
    random_wrong_labels,
)
from conadv_repro.config import AttackConfig


def lowbias32_reference(x: int) -> int:
    """Wellons' lowbias32 in plain Python integers, the independent check of the tensor version."""
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x ^= x >> 16
    return x


def test_hash_matches_a_plain_python_reference_without_overflow():
    values = [0, 1, 2, 12345, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xDEADBEEF]
    got = hash32(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [lowbias32_reference(v) for v in values]


def test_keyed_noise_depends_only_on_each_key():
    keys = [11, 22, 33, 44]
    whole = keyed_uniform(keys, (3, 4, 4), "cpu")
    assert whole.shape == (4, 3, 4, 4)
    assert whole.min() >= -1 and whole.max() < 1 and abs(whole.mean()) < 0.2
    torch.testing.assert_close(keyed_uniform([33, 11], (3, 4, 4), "cpu"), whole[[2, 0]], rtol=0, atol=0)
    assert not torch.equal(whole[0], whole[1])


def test_attack_noise_is_keyed_by_seed_step_and_index():
    cfg = AttackConfig()
    idx = torch.tensor([5, 9, 100, 7])
    full = attack_noise(cfg, seed=1, step=3, indices=idx, shape=(1, 4, 4), device="cpu")
    halves = torch.cat([attack_noise(cfg, 1, 3, idx[:2], (1, 4, 4), "cpu"),
                        attack_noise(cfg, 1, 3, idx[2:], (1, 4, 4), "cpu")])
    assert torch.equal(full, halves)
    assert not torch.equal(full, attack_noise(cfg, 1, 4, idx, (1, 4, 4), "cpu"))
    assert not torch.equal(full, attack_noise(cfg, 2, 3, idx, (1, 4, 4), "cpu"))
    assert attack_noise(AttackConfig(random_init=False), 1, 3, idx, (1, 4, 4), "cpu") is None
    some_clean = attack_noise(AttackConfig(clean_start_prob=0.5), 1, 3, torch.arange(200), (1, 2, 2), "cpu")
    zero_rows = int((some_clean.flatten(1).abs().sum(1) == 0).sum())
    assert 60 < zero_rows < 140


def test_geometry_in_pixel_units_and_the_official_codes_units():
    mean, std = (0.5, 0.25), (0.5, 0.25)
    pixel = AttackGeometry.build(AttackConfig(epsilon=8, step_size=0.5), mean, std, "cpu")
    torch.testing.assert_close(pixel.epsilon.flatten(), torch.tensor([8 / 255 / 0.5, 8 / 255 / 0.25]))
    torch.testing.assert_close(pixel.step.flatten(), pixel.epsilon.flatten() / 2)
    torch.testing.assert_close(pixel.low.flatten(), torch.tensor([-1.0, -1.0]))
    torch.testing.assert_close(pixel.high.flatten(), torch.tensor([1.0, 3.0]))
    official = AttackGeometry.build(AttackConfig(epsilon=9, units="tf_official"), mean, std, "cpu")
    torch.testing.assert_close(official.epsilon.flatten(), torch.full((2,), 9 * 2 / 255))


class SumLogit(nn.Module):
    """logits = [sum(x), 0]: the loss of label 1 grows with sum(x), so sign(grad) is +1 everywhere."""

    def forward(self, x):
        s = x.flatten(1).sum(1, keepdim=True)
        return torch.cat([s, torch.zeros_like(s)], dim=1)


def geometry(eps: float = 4.0, step: float = 1.0) -> AttackGeometry:
    return AttackGeometry.build(AttackConfig(epsilon=eps, step_size=step), (0.5,), (0.5,), "cpu")


def test_one_sign_step_goes_to_the_edge_of_the_ball_and_stays_valid():
    g = geometry()
    x = torch.rand(3, 1, 4, 4) * 1.6 - 0.8
    y = torch.ones(3, dtype=torch.long)
    adv = pgd_one_step(SumLogit(), x, y, g, noise=None)
    # CE(label 1) = log(1 + e^sum(x)): ascending it raises every pixel by epsilon.
    torch.testing.assert_close(adv, torch.clamp(x + g.epsilon, g.low, g.high))
    noisy = pgd_one_step(SumLogit(), x, y, g, noise=torch.rand_like(x) * 2 - 1)
    assert (noisy - x).abs().max() <= g.epsilon.max() + 1e-6
    assert noisy.min() >= -1 and noisy.max() <= 1
    target = pgd_one_step(SumLogit(), x, y, g, noise=None, target=torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(target, torch.clamp(x + g.epsilon, g.low, g.high))  # toward class 0 too


def test_zero_epsilon_without_noise_returns_the_input_exactly():
    x = torch.rand(4, 1, 3, 3) * 2 - 1
    adv = pgd_one_step(SumLogit(), x, torch.zeros(4, dtype=torch.long), geometry(eps=0.0), noise=None)
    assert torch.equal(adv, x)


def test_only_input_gradients_are_taken():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    x, y = torch.randn(6, 1, 4, 4).clamp(-1, 1), torch.randint(0, 5, (6,))
    F.cross_entropy(net(x), y).backward()
    before = [p.grad.clone() for p in net.parameters()]
    adv = pgd_one_step(net, x, y, geometry(), noise=torch.rand_like(x) * 2 - 1, gradient="raw")
    assert not adv.requires_grad
    for p, g in zip(net.parameters(), before, strict=True):
        assert torch.equal(p.grad, g)
    assert F.cross_entropy(net(adv), y) > F.cross_entropy(net(x), y)


def test_random_wrong_labels_are_wrong_and_keyed():
    labels = torch.randint(0, 10, (500,))
    idx = torch.arange(500)
    wrong = random_wrong_labels(0, 3, idx, labels, 10)
    assert (wrong != labels).all() and wrong.min() >= 0 and wrong.max() <= 9
    assert len(set(wrong.tolist())) == 10
    assert torch.equal(wrong[:7], random_wrong_labels(0, 3, idx[:7], labels[:7], 10))
