"""Memory of a training step: bytes saved for backward, and the GPU's peak per method.

Two measurements, one per kind of machine:

- `activation_bytes_per_image`: the bytes one forward saves for backward, per image. Counted with
  `torch.autograd.graph.saved_tensors_hooks` over unique storages at two batch sizes; the slope is per
  image (what grows with the micro-batch), the rest (weights saved by the convolutions, their bf16 copies
  under autocast) is fixed. Runs on any device, so a CPU measures what a GPU would save.
- `peak_bytes` (CUDA only): the allocator's peak over train steps of the engine, on synthetic data, after
  warm-up steps (cuDNN's choices, ConAdv's first snapshots).

Each gives a memory calibration (conadv_repro/memory_model.py) that `launch` and `--estimate` read: a GPU's
measured peaks, or, from a CPU, a model from the saved bytes (a lower bound: no cuDNN workspace, no
allocator fragmentation). `make gpu-check`'s memory section and `python benchmarks/memory.py` use them.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from torch import nn

from conadv_repro.gpu_check.device import release, sync
from conadv_repro.memory_model import FORWARDS_HELD, MemoryCalibration, MethodMemory, line_through

# Weights, gradients and LARS's momentum, in float32.
OPTIMIZER_COPIES = 3


def saved_bytes(model: nn.Module, x: torch.Tensor, *, bf16: bool) -> int:
    """Bytes of the unique storages one forward of `model` on `x` saves for backward."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast:
        model(x)
    return sum(storages.values())


def activation_bytes_per_image(model: nn.Module, make_input: Callable[[int], torch.Tensor], batches: Sequence[int],
                               *, bf16: bool) -> tuple[float, float]:
    """(bytes per image, fixed bytes) saved by one forward: the line through `batches` (two sizes)."""
    small, large = batches
    low, high = (saved_bytes(model, make_input(b), bf16=bf16) for b in (small, large))
    per_image = (high - low) / (large - small)
    return per_image, low - per_image * small


def saved_tensor_calibration(*, model_name: str, image_size: int, autocast: str, params: int, per_image: float,
                             forward_fixed: float, tau: int, machine: str, command: str) -> MemoryCalibration:
    """The CPU's model of each method's step: the forwards it holds, plus the optimizer's and ConAdv's copies."""
    weights = 4.0 * params
    methods = {}
    for method, forwards in FORWARDS_HELD.items():
        snapshots = (tau + 1) * weights if method == "conadv" else 0.0
        methods[method] = MethodMemory(fixed_bytes=OPTIMIZER_COPIES * weights + snapshots + forwards * forward_fixed,
                                       bytes_per_image=forwards * per_image)
    return MemoryCalibration(model=model_name, image_size=image_size, autocast=autocast, source="saved-tensors",
                             machine=machine, date=datetime.date.today().isoformat(), command=command, methods=methods)


def peak_bytes(make_variant: Callable[[], object], warmup_steps: int, steps: int, device: torch.device) -> int:
    """The CUDA allocator's peak over `steps` engine steps after `warmup_steps`, above what was held before."""
    release()
    before = torch.cuda.memory_allocated(device)
    variant = make_variant()
    try:
        for _ in range(warmup_steps):
            variant()  # type: ignore[operator]
        variant.settle()  # type: ignore[attr-defined]
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(steps):
            variant()  # type: ignore[operator]
        variant.settle()  # type: ignore[attr-defined]
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    finally:
        variant.close()  # type: ignore[attr-defined]
        del variant
        release()


def peak_calibration(peaks: dict[str, dict[int, int]], *, model_name: str, image_size: int, autocast: str,
                     machine: str, command: str) -> MemoryCalibration:
    """A GPU's calibration: per method, the line through its peaks at the micro-batches measured."""
    return MemoryCalibration(model=model_name, image_size=image_size, autocast=autocast, source="peak",
                             machine=machine, date=datetime.date.today().isoformat(), command=command,
                             methods={method: line_through(points) for method, points in peaks.items()})
