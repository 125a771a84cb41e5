"""Do a grid's micro-batches fit the profile's GPUs? Warnings for `launch` and `--estimate`.

From the memory calibration of each run's network (conadv_repro/memory_model.py): a run whose step needs more
than the profile's `gpu_mem_gb` at its micro-batch gets a warning naming the largest micro-batch that fits.
A warning, not a refusal: the calibration is a model (a CPU's one is a lower bound), and the user may know
better. No torch import.
"""

from __future__ import annotations

import math
from collections import defaultdict

from conadv_repro import memory_model, throughput_model
from conadv_repro.config import Config
from conadv_repro.errors import UserError
from conadv_repro.launch.plan import PlannedRun
from conadv_repro.launch.profiles import Profile


def step_layout(cfg: Config) -> tuple[str, int, int, int]:
    """(the method whose memory a GPU of this run holds, the trainer's share of the batch, its micro-batch,
    forwards it holds beyond that method's: the official code's third BN branch)."""
    trainers = max(1, cfg.runtime.trainers)
    share = cfg.batch_size // trainers
    micro = min(cfg.runtime.micro_batch or share, share)
    # With attack workers a ConAdv trainer holds its two branches, as DisAdv's does, and no attack.
    method = "disadv" if cfg.method == "conadv" and cfg.conadv.attack_workers else cfg.method
    extra = 1 if cfg.bn.three_way and method != "vanilla" else 0
    return method, share, micro, extra


def capacity_bytes(profile: Profile) -> float:
    """What one of the profile's GPUs holds for a step: `gpu_mem_gb` GiB less the reserve."""
    return max(profile.gpu_mem_gb - memory_model.RESERVE_GIB, 0) * memory_model.GIB


class _Calibrations:
    """The memory calibration of each (network, image size, precision), looked up once; a file that cannot
    be read is reported, not raised: the check is a warning, never a reason to refuse a launch."""

    def __init__(self) -> None:
        self.found: dict[tuple[str, int, str], memory_model.MemoryCalibration | None] = {}
        self.problems: list[str] = []

    def of(self, key: tuple[str, int, str]) -> memory_model.MemoryCalibration | None:
        """The calibration of (model name, image size, autocast), or None."""
        if key not in self.found:
            try:
                self.found[key] = memory_model.find_memory_calibration(*key)
            except UserError as error:
                self.found[key] = None
                self.problems.append(f"warning: memory: not checked ({error})")
        return self.found[key]


def memory_warnings(runs: list[PlannedRun], profile: Profile) -> list[str]:
    """One line per method and micro-batch whose runs would not fit the profile's GPUs, naming the largest
    micro-batch that fits every one of them (whole BN groups dividing each trainer's share)."""
    return _check(runs, profile)[0]


def _check(runs: list[PlannedRun], profile: Profile) -> tuple[list[str], set[str]]:
    """(the warnings, what could not be checked: networks or methods without a calibration)."""
    if profile.gpu_mem_gb <= 0 or profile.gpus_per_node <= 0:
        return [], set()
    capacity = capacity_bytes(profile)
    calibrations = _Calibrations()
    unchecked: set[str] = set()
    # (the run's method, the method its GPU holds, extra forwards, micro-batch, calibration) -> runs' needs
    over: dict[tuple[str, str, int, int, str], list[tuple[float, int, int]]] = defaultdict(list)
    by_path: dict[str, memory_model.MemoryCalibration] = {}
    for run in runs:
        cfg = run.config
        network = (cfg.model.name, throughput_model.network_of_config(cfg.flat()).image_size, cfg.runtime.autocast)
        calibration = calibrations.of(network)
        held, share, micro, extra = step_layout(cfg)
        what = "{} at {} px ({})".format(*network)
        needed = None if calibration is None else calibration.needed(held, micro, extra)
        if needed is None:
            unchecked.add(what if calibration is None else f"{held} on {what}")
            continue
        if needed > capacity:
            by_path[calibration.path] = calibration
            over[(cfg.method, held, extra, micro, calibration.path)].append((needed, share, cfg.bn.group_size))
    lines = list(calibrations.problems)
    usable = f"{profile.gpu_mem_gb} GiB ({memory_model.RESERVE_GIB} GiB of each kept for the CUDA context and NCCL)"
    for (method, held, extra, micro, path), grouped in over.items():
        calibration = by_path[path]
        shares = math.gcd(*(share for _, share, _ in grouped))  # a micro-batch dividing every run's share
        group = math.lcm(*(g for _, _, g in grouped))
        fits = memory_model.largest_fitting_micro(calibration, held, capacity, shares, group, extra)
        runs_text = f"{len(grouped)} {method} run{'s' if len(grouped) != 1 else ''}"
        advice = (f"runtime.micro_batch={fits} fits (--set runtime.micro_batch={fits}; not part of the run ids)"
                  if fits else "no micro-batch fits (the weights and optimizer state alone do not)")
        lines.append(f"warning: memory: {runs_text} need about {memory_model.gib(max(n for n, _, _ in grouped))} per "
                     f"GPU at micro-batch {micro}; profile {profile.name}'s GPUs have {usable}; {advice} "
                     f"({calibration.describe()})")
    return lines, unchecked


def memory_report(runs: list[PlannedRun], profile: Profile) -> list[str]:
    """`--estimate`'s lines on memory: the warnings, what could not be checked, or that everything fits."""
    if profile.gpus_per_node <= 0:
        return ["memory: not checked (the profile has no GPUs)"]
    if profile.gpu_mem_gb <= 0:
        return [f"memory: not checked (profile {profile.name} has no gpu_mem_gb)"]
    lines, unchecked = _check(runs, profile)
    if unchecked:
        lines.append(f"memory: not checked for {', '.join(sorted(unchecked))} (no memory calibration in "
                     f"{memory_model.memory_calibrations_dir()}; measure one with python benchmarks/memory.py "
                     "--save NAME)")
    if not lines:
        lines.append(f"memory: every run's micro-batch fits profile {profile.name}'s {profile.gpu_mem_gb} GiB GPUs")
    return lines
