"""Section: memory. Per method, the peak GPU memory of a training step at the plan's micro-batches (bf16,
channels_last, ResNet-50 at 224 px on a GPU), and the activations our network saves for backward against
torchvision's. On a GPU it writes the memory calibration `launch` and `--estimate` read
(benchmarks/calibrations/memory/<gpu>-gpu-check-memory.json); the CPU smoke runs the same steps and reports the
saved bytes (a CPU has no allocator peak to read)."""

from __future__ import annotations

from pathlib import Path

import torch

from conadv_repro.atomic import atomic_write_json
from conadv_repro.gpu_check.calibration import FOLDER, slug
from conadv_repro.gpu_check.memory import (
    activation_bytes_per_image,
    peak_bytes,
    peak_calibration,
)
from conadv_repro.gpu_check.plan import Plan
from conadv_repro.gpu_check.report import Report
from conadv_repro.gpu_check.speed import EngineVariant, precision, speed_config, torchvision_loop
from conadv_repro.memory_model import FOLDER as MEMORY_FOLDER
from conadv_repro.memory_model import FORWARDS_HELD, GIB, MemoryCalibration

MIB = 2 ** 20
PEAK_STEPS = 2


def default_memory_path(device_name: str) -> Path:
    """benchmarks/calibrations/memory/<gpu>-gpu-check-memory.json from a clone's root, else in the working
    directory (named apart from the speed calibration, which falls back to the same folder)."""
    folder = FOLDER / MEMORY_FOLDER
    return (folder if folder.is_dir() else Path(".")) / f"{slug(device_name)}-gpu-check-memory.json"


def memory_section(plan: Plan, report: Report, argv: list[str], path: Path | None = None,
                   command: str = "python -m conadv_repro.gpu_check", write: bool = True) -> MemoryCalibration | None:
    """The section; on a GPU it writes the calibration to `path` (default: `default_memory_path`) if `write`."""
    cfg = speed_config(plan, plan.memory_micro_batches[0], "vanilla")
    report.section(f"memory: {cfg.model.name} at {cfg.model.input_size} px, {precision(cfg)}, one step per method "
                   f"at micro-batches {', '.join(map(str, plan.memory_micro_batches))}")
    report.check("saved activations per image: our split ghost BN against torchvision's BatchNorm",
                 lambda: _saved_ratio(plan))
    if plan.device != "cuda":
        for method in FORWARDS_HELD:
            report.check(f"{method} steps at every micro-batch (CPU: no allocator peak)",
                         lambda m=method: _steps(plan, m))
        return None
    peaks: dict[str, dict[int, int]] = {}
    for method in FORWARDS_HELD:
        report.check(f"{method}: peak memory of a step", lambda m=method: _peaks(plan, m, peaks))
    if set(peaks) != set(FORWARDS_HELD):
        report.skip("memory calibration", "a method's peak was not measured")
        return None
    name = torch.cuda.get_device_name(0)
    calibration = peak_calibration(peaks, model_name=cfg.model.name, image_size=cfg.model.input_size,
                                   autocast=cfg.runtime.autocast, machine=name,
                                   command=" ".join([command, *argv]))
    path = path or default_memory_path(name)
    if not write:
        return calibration

    def write_file() -> str:
        atomic_write_json(path, calibration.to_dict())
        return f"wrote {path}"

    report.check("the memory calibration is written", write_file)
    return calibration


def _saved_ratio(plan: Plan) -> str:
    variant = EngineVariant(speed_config(plan, plan.memory_micro_batches[0], "vanilla"))
    try:
        source = variant.trainer
        plain = torchvision_loop(plan.plain_model, source)
        size, device = source.cfg.model.input_size, source.device
        bf16 = source.cfg.runtime.autocast == "bf16"
        fmt = torch.channels_last if source.channels_last else torch.contiguous_format

        def make(batch: int) -> torch.Tensor:
            return torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)

        batches = (source.cfg.bn.group_size, 2 * source.cfg.bn.group_size)  # whole BN groups
        ours, _ = activation_bytes_per_image(source.model, make, batches, bf16=bf16)
        theirs, _ = activation_bytes_per_image(plain.model, make, batches, bf16=bf16)
    finally:
        variant.close()
    return (f"{ours / MIB:.2f} MiB against {theirs / MIB:.2f} MiB (torchvision {plan.plain_model}), "
            f"ratio {ours / theirs:.3f}")


def _steps(plan: Plan, method: str) -> str:
    for micro in plan.memory_micro_batches:
        variant = EngineVariant(speed_config(plan, micro, method))
        try:
            variant()
            variant.settle()
        finally:
            variant.close()
    return f"micro-batches {', '.join(map(str, plan.memory_micro_batches))}"


def _peaks(plan: Plan, method: str, peaks: dict[str, dict[int, int]]) -> str:
    points = {micro: peak_bytes(lambda m=micro: EngineVariant(speed_config(plan, m, method)),
                                plan.warmup_steps, PEAK_STEPS, torch.device("cuda"))
              for micro in plan.memory_micro_batches}
    peaks[method] = points
    return ", ".join(f"{peak / GIB:.1f} GiB at {micro}" for micro, peak in points.items())
