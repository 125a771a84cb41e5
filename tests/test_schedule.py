"""lr_at: linear warmup (step + 1) then MLPerf/TF polynomial decay to end_lr."""

from __future__ import annotations

import math

import pytest

from conadv_repro.optim.schedule import lr_at

PEAK = 2.0
WARMUP = 5
TOTAL = 25


def lr(step: int, **kw: float) -> float:
    args = dict(peak_lr=PEAK, warmup_steps=WARMUP, total_steps=TOTAL)
    args.update(kw)
    return lr_at(step, **args)


def test_warmup_is_linear_and_reaches_peak() -> None:
    values = [lr(s) for s in range(WARMUP)]
    assert values == pytest.approx([PEAK * (s + 1) / WARMUP for s in range(WARMUP)])
    # The first update is not at LR 0, and equal increments all the way up.
    assert values[0] > 0
    diffs = [b - a for a, b in zip(values, values[1:], strict=False)]
    assert diffs == pytest.approx([PEAK / WARMUP] * (WARMUP - 1))
    assert lr(WARMUP - 1) == pytest.approx(PEAK)
    assert lr(WARMUP) == pytest.approx(PEAK)


def test_decay_hits_end_lr_at_total_and_stays() -> None:
    assert lr(TOTAL) == pytest.approx(1e-4)
    assert lr(TOTAL + 100) == pytest.approx(1e-4)
    assert lr(TOTAL, end_lr=0.0) == 0.0


def test_monotone_decreasing_after_warmup() -> None:
    values = [lr(s) for s in range(WARMUP, TOTAL + 1)]
    assert all(b < a for a, b in zip(values, values[1:], strict=False))


def test_power_one_is_linear() -> None:
    values = [lr(s, power=1.0, end_lr=0.0) for s in range(WARMUP, TOTAL + 1)]
    decay = TOTAL - WARMUP
    assert values == pytest.approx([PEAK * (1 - k / decay) for k in range(decay + 1)])


def test_hand_computed_points() -> None:
    # decay_steps = 20; k = step - 5.
    # step 15: k = 10 -> (2 - 1e-4) * 0.5**2 + 1e-4
    assert lr(15) == pytest.approx((2.0 - 1e-4) * 0.25 + 1e-4, rel=1e-12)
    # step 10: k = 5 -> (2 - 1e-4) * 0.75**2 + 1e-4
    assert lr(10) == pytest.approx((2.0 - 1e-4) * 0.5625 + 1e-4, rel=1e-12)
    # step 24: k = 19 -> (2 - 1e-4) * 0.05**2 + 1e-4
    assert lr(24) == pytest.approx((2.0 - 1e-4) * 0.0025 + 1e-4, rel=1e-12)
    # warmup step 2: 2 * 3 / 5
    assert lr(2) == pytest.approx(1.2, rel=1e-12)


def test_zero_warmup_starts_at_peak() -> None:
    assert lr(0, warmup_steps=0) == pytest.approx(PEAK)
    assert lr(TOTAL, warmup_steps=0) == pytest.approx(1e-4)
    assert lr(TOTAL // 2, warmup_steps=0, power=1.0, end_lr=0.0) == pytest.approx(
        PEAK * (1 - (TOTAL // 2) / TOTAL)
    )


def test_no_decay_phase_stays_at_peak() -> None:
    for step in (WARMUP, WARMUP + 3, 1000):
        value = lr(step, total_steps=WARMUP)
        assert value == PEAK and math.isfinite(value)
    assert lr(0, warmup_steps=0, total_steps=0) == PEAK


def test_end_lr_above_peak_never_increases() -> None:
    values = [lr(s, peak_lr=1e-5) for s in range(WARMUP, TOTAL + 1)]
    assert all(v <= 1e-5 * (1 + 1e-12) for v in values)


def test_negative_step_rejected() -> None:
    with pytest.raises(ValueError):
        lr(-1)
