"""Learning-rate schedule of the MLPerf ResNet-50 reference: linear warmup, then polynomial decay.

The MLPerf ResNet-50 reference (TF, with LARS) warms the LR up linearly from 0 to the peak and then
decays it with TF's `tf.compat.v1.train.polynomial_decay(power=2, end_learning_rate=1e-4)` over the
remaining steps:

    lr(k) = (peak - end) * (1 - min(k, decay_steps) / decay_steps) ** power + end

with `k` counted from the end of warmup. `torch.optim.lr_scheduler.PolynomialLR` is not a substitute: it
decays to 0, has no end LR and no warmup.

The function is pure (nanoGPT's `get_lr` style) so that it can be recomputed for any step after a resume
and tested without an optimizer. Steps are 0-based and `lr_at(step)` is the LR used by the update at
`step`. Warmup uses `step + 1` rather than `step`: with `step` the first update would run at LR 0 (a
wasted step) and the peak would only be reached after warmup; with `step + 1` the last warmup step
(`warmup_steps - 1`) already runs at the peak, and the decay starts from the peak at `warmup_steps`.
"""

from __future__ import annotations


def lr_at(
    step: int,
    *,
    peak_lr: float,
    warmup_steps: int,
    total_steps: int,
    power: float = 2.0,
    end_lr: float = 1e-4,
) -> float:
    """LR for the (0-based) update `step`: linear warmup to `peak_lr`, then polynomial decay to `end_lr`.

    Steps at or beyond `total_steps` stay at `end_lr`. With `warmup_steps == 0` the schedule starts at the
    peak; with no decay phase (`total_steps <= warmup_steps`) the LR after warmup stays at the peak.
    `end_lr` is expected to be at most `peak_lr` (the caller validates); it is clamped to `peak_lr` so the
    "decay" can never increase the LR.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")

    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps

    decay_steps = total_steps - warmup_steps
    if decay_steps <= 0:
        return peak_lr

    end = min(end_lr, peak_lr)
    k = min(step - warmup_steps, decay_steps)
    return (peak_lr - end) * (1.0 - k / decay_steps) ** power + end
