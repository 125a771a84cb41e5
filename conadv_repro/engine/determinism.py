"""Deterministic kernels for one process (`runtime.deterministic=true`); docs/gpu-check.md has the caveats.

What it turns on, and why:

- `torch.use_deterministic_algorithms(True, warn_only=True)`: ops that have a deterministic variant use
  it (convolutions' backward on CUDA, index and scatter ops). `warn_only`, because an op without a
  deterministic CUDA kernel should not end a run the user only wanted to make repeatable: torch's list of
  such ops includes `nn.AdaptiveAvgPool2d`'s backward, which our networks use, although at their 1x1
  output ATen computes it as a mean (deterministic, no warning). `python -m conadv_repro.gpu_check` names
  every op that warned in its deterministic section.
- `CUBLAS_WORKSPACE_CONFIG=:4096:8` (`:16:8` is kept if the user set it): without it cuBLAS may pick
  other internal workspaces when several streams are active (ConAdv's side stream), and torch refuses or
  warns. PyTorch sizes its cuBLAS workspaces once, at the process's first cuBLAS call, so the variable
  must be in the environment before that; the Trainer sets it before its first matrix product, and a
  process that used cuBLAS earlier should export it itself.
- `torch.backends.cudnn.benchmark = False` (autotuning picks kernels by timing, which varies) and
  `torch.backends.cudnn.deterministic = True`.

The settings are process-wide and stay on once a deterministic run is built; `deterministic_mode()` is
the scoped form for callers that train other runs afterwards (the GPU check, tests).

A run that is not deterministic on CUDA autotunes instead (`enable_autotuning`: cuDNN times its
convolution algorithms at each new shape once and keeps the fastest); a run's training steps repeat the
same shapes, so the timing is paid in the first steps (and once for evaluation's last, smaller batch). A
deterministic run built later in the same process turns it off again, and `deterministic_mode()` puts
back whatever was set before it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from conadv_repro.errors import UserError

CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"
# The two settings NVIDIA's cuBLAS documentation names for bit-wise reproducibility with several streams.
DETERMINISTIC_CUBLAS = (":4096:8", ":16:8")


@dataclass(frozen=True)
class DeterminismState:
    """The process-wide settings `enable_deterministic` changes, to put them back."""

    algorithms: bool
    warn_only: bool
    cudnn_benchmark: bool
    cudnn_deterministic: bool
    cublas_env: str | None


def current_state() -> DeterminismState:
    return DeterminismState(algorithms=torch.are_deterministic_algorithms_enabled(),
                            warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
                            cudnn_benchmark=torch.backends.cudnn.benchmark,
                            cudnn_deterministic=torch.backends.cudnn.deterministic,
                            cublas_env=os.environ.get(CUBLAS_ENV))


def enable_deterministic() -> None:
    """Turn on deterministic kernels for this process (idempotent)."""
    value = os.environ.get(CUBLAS_ENV)
    if value is not None and value not in DETERMINISTIC_CUBLAS:
        raise UserError(f"runtime.deterministic=true but {CUBLAS_ENV}={value!r} is set, which cuBLAS does not make "
                        f"deterministic; allowed: {' or '.join(DETERMINISTIC_CUBLAS)}, or unset")
    os.environ.setdefault(CUBLAS_ENV, DETERMINISTIC_CUBLAS[0])
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def enable_autotuning() -> None:
    """cuDNN's autotuning for a run whose kernels need not be deterministic (its shapes never change)."""
    torch.backends.cudnn.benchmark = True


def configure_kernels(deterministic: bool, device: torch.device) -> None:
    """Deterministic kernels for a deterministic run, cuDNN's autotuning for any other run on CUDA."""
    if deterministic:
        enable_deterministic()
    elif device.type == "cuda":
        enable_autotuning()


def restore_state(state: DeterminismState) -> None:
    torch.use_deterministic_algorithms(state.algorithms, warn_only=state.warn_only)
    torch.backends.cudnn.benchmark = state.cudnn_benchmark
    torch.backends.cudnn.deterministic = state.cudnn_deterministic
    if state.cublas_env is None:
        os.environ.pop(CUBLAS_ENV, None)
    else:
        os.environ[CUBLAS_ENV] = state.cublas_env


@contextmanager
def deterministic_mode() -> Iterator[None]:
    """Deterministic kernels inside the block, the previous settings after it."""
    before = current_state()
    enable_deterministic()
    try:
        yield
    finally:
        restore_state(before)
