"""How much GPU memory a run needs: memory calibrations, and the micro-batch that fits a GPU.

Pure functions, no torch: `--estimate` and `launch` read them to warn when a profile's GPUs
(`gpu_mem_gb`) cannot hold a run's micro-batch; `benchmarks/memory.py --save NAME` and `make gpu-check`
write them.

A memory calibration (benchmarks/calibrations/memory/NAME.json) describes one network at one image size
and precision. Per method, the memory of one training step on one device is a line in the micro-batch:

    bytes(method, micro) = fixed_bytes + bytes_per_image * micro

    {"schema": 1, "kind": "memory", "model": "resnet50", "image_size": 224, "autocast": "bf16",
     "source": "peak" | "saved-tensors",
     "machine": "NVIDIA H100 80GB HBM3" or "AMD EPYC ..., CPU", "date": "2026-12-02", "command": "...",
     "methods": {"vanilla": {"fixed_bytes": ..., "bytes_per_image": ...}, "disadv": {...}, "conadv": {...}}}

`source: peak` is measured on a GPU: the allocator's peak over train steps at two micro-batches, the line
through both. `source: saved-tensors` is a model from a CPU: the activations one forward saves for backward
(counted over unique storages) times the forwards whose activations a method holds at once (vanilla 1,
DisAdv 2, ConAdv on one GPU 3: its two training branches and the attack on the side stream), plus the
weights, gradients and LARS momentum (and ConAdv's weight snapshots). It leaves out cuDNN's workspaces and
the allocator's fragmentation, so it is a lower bound. The noise control and AutoAugment's vanilla
are read as DisAdv and vanilla; the official code's third BN branch (`bn.three_way`) holds one forward
more, counted as one of the method's own. A GPU of `gpu_mem_gb` GiB is taken to hold RESERVE_GIB less
for a step (the CUDA context, NCCL's buffers, the allocator's slack are not in a measured peak).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conadv_repro.calibration_files import (
    calibrations_dir,
    check_header,
    number,
    read_calibration,
    texts,
)
from conadv_repro.errors import UserError

SCHEMA = 1
FOLDER = "memory"
METHODS = ("vanilla", "disadv", "conadv")
# The forwards whose saved activations a step of each method holds at its peak: DisAdv's attack ends before
# its two training branches; ConAdv's attack on the side stream runs beside them.
FORWARDS_HELD = {"vanilla": 1, "disadv": 2, "conadv": 3}
# What a GPU holds beyond a step's measured peak: the CUDA context, NCCL's buffers, the allocator's slack.
RESERVE_GIB = 2
SOURCES = ("peak", "saved-tensors")
# The methods whose step holds the same activations as a calibrated one.
READ_AS = {"vanilla": "vanilla", "train_only": "vanilla", "disadv": "disadv", "noise": "disadv", "conadv": "conadv"}
GIB = 2 ** 30


def memory_calibrations_dir() -> Path:
    """`benchmarks/calibrations/memory/` at the root of the clone (under CONADV_CALIBRATIONS when set)."""
    return calibrations_dir(FOLDER)


@dataclass(frozen=True)
class MethodMemory:
    fixed_bytes: float
    bytes_per_image: float

    def bytes_at(self, micro: float) -> float:
        return self.fixed_bytes + self.bytes_per_image * micro


@dataclass(frozen=True)
class MemoryCalibration:
    model: str
    image_size: int
    autocast: str
    source: str
    machine: str
    date: str
    command: str
    methods: Mapping[str, MethodMemory]
    path: str = ""

    def describe(self) -> str:
        how = "measured peak" if self.source == "peak" else "model from saved tensors, a lower bound"
        return f"memory calibration {self.path or '(unsaved)'}: {how}, {self.machine}, {self.date}"

    def needed(self, method: str, micro: int, extra_forwards: int = 0) -> float | None:
        """Bytes of one training step of `method` at `micro` examples per forward, or None if not calibrated.
        `extra_forwards`: forwards held beyond the calibrated method's (the official code's third BN branch),
        each counted as one of the method's own."""
        name = READ_AS.get(method, method)
        memory = self.methods.get(name)
        if memory is None:
            return None
        # Each extra forward holds what one of the method's own does: as many more images' activations.
        return memory.bytes_at(micro * (1.0 + extra_forwards / FORWARDS_HELD[name]))

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "kind": "memory", "model": self.model, "image_size": self.image_size,
                "autocast": self.autocast, "source": self.source, "machine": self.machine, "date": self.date,
                "command": self.command,
                "methods": {name: {"fixed_bytes": round(m.fixed_bytes), "bytes_per_image": round(m.bytes_per_image)}
                            for name, m in self.methods.items()}}


def line_through(points: Mapping[int, float]) -> MethodMemory:
    """The line through the peaks at two or more micro-batches (least squares); one point: all per image."""
    if len(points) == 1:
        ((micro, peak),) = points.items()
        return MethodMemory(0.0, peak / micro)
    xs, ys = list(points), list(points.values())
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return MethodMemory(max(my - slope * mx, 0.0), max(slope, 0.0))


def parse_memory_calibration(data: Any, where: str) -> MemoryCalibration:
    """A memory calibration from its JSON object; every problem is one line naming `where`."""
    data = check_header(data, "memory", SCHEMA, where, "python benchmarks/memory.py --save NAME")
    fields = texts(data, ("model", "autocast", "machine", "date", "command"), where)
    if data.get("source") not in SOURCES:
        raise UserError(f"{where}: source={data.get('source')!r} is not allowed; allowed: {', '.join(SOURCES)}")
    size = data.get("image_size")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise UserError(f"{where}: image_size={size!r} is not allowed; allowed: an integer > 0")
    methods = data.get("methods")
    if not isinstance(methods, dict) or not methods or any(name not in METHODS for name in methods):
        raise UserError(f"{where}: methods={methods!r} is not allowed; allowed: an object with some of "
                        f"{', '.join(METHODS)}")
    parsed = {}
    for name, values in methods.items():
        if not isinstance(values, dict):
            raise UserError(f"{where}: methods.{name}={values!r} is not allowed; allowed: an object with "
                            "fixed_bytes and bytes_per_image")
        parsed[name] = MethodMemory(number(values, "fixed_bytes", f"{where}: methods.{name}."),
                                    number(values, "bytes_per_image", f"{where}: methods.{name}."))
    return MemoryCalibration(image_size=size, source=data["source"], methods=parsed, path=where, **fields)


def load_memory_calibration(path: Path) -> MemoryCalibration:
    return parse_memory_calibration(read_calibration(path, "memory calibration"), f"{FOLDER}/{path.name}")


def find_memory_calibration(model: str, image_size: int, autocast: str,
                            folder: Path | None = None) -> MemoryCalibration | None:
    """The calibration of this network and precision: a measured peak before a model, then the newest."""
    folder = memory_calibrations_dir() if folder is None else folder
    found = [load_memory_calibration(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    found = [c for c in found if (c.model, c.image_size, c.autocast) == (model, image_size, autocast)]
    return max(found, key=lambda c: (c.source == "peak", c.date, c.path)) if found else None


def largest_fitting_micro(calibration: MemoryCalibration, method: str, capacity_bytes: float, share: int,
                          group: int, extra_forwards: int = 0) -> int | None:
    """The largest micro-batch (whole BN groups, dividing the trainer's `share`) whose step fits, or None."""
    fitting = [m for m in range(group, share + 1, group) if share % m == 0 and
               (calibration.needed(method, m, extra_forwards) or 0.0) <= capacity_bytes]
    return max(fitting) if fitting else None


def gib(nbytes: float) -> str:
    return f"{nbytes / GIB:,.1f} GiB"
