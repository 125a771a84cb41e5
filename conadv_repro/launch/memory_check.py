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
from conadv_repro.launch.plan import PlannedRun
from conadv_repro.launch.profiles import Profile


def step_layout(cfg: Config) -> tuple[str, int, int]:
    """(the method whose memory a GPU of this run holds, the trainer's share of the batch, its micro-batch)."""
    trainers = max(1, cfg.runtime.trainers)
    share = cfg.batch_size // trainers
    micro = min(cfg.runtime.micro_batch or share, share)
    # With attack workers a ConAdv trainer holds its two branches, as DisAdv's does, and no attack.
    method = "disadv" if cfg.method == "conadv" and cfg.conadv.attack_workers else cfg.method
    return method, share, micro


def memory_warnings(runs: list[PlannedRun], profile: Profile) -> list[str]:
    """One line per method and micro-batch whose runs would not fit the profile's GPUs, naming the largest
    micro-batch that fits every one of them (whole BN groups dividing each trainer's share)."""
    if profile.gpu_mem_gb <= 0 or profile.gpus_per_node <= 0:
        return []
    capacity = profile.gpu_mem_gb * memory_model.GIB
    found: dict[tuple[str, int, str], memory_model.MemoryCalibration | None] = {}
    # (the run's method, the method whose memory its GPU holds, micro-batch, calibration) -> (bytes, share, group)
    over: dict[tuple[str, str, int, str], list[tuple[float, int, int]]] = defaultdict(list)
    calibrations: dict[str, memory_model.MemoryCalibration] = {}
    for run in runs:
        cfg = run.config
        size = throughput_model.network_of_config(cfg.flat()).image_size
        key = (cfg.model.name, size, cfg.runtime.autocast)
        if key not in found:
            found[key] = memory_model.find_memory_calibration(*key)
        calibration = found[key]
        if calibration is None:
            continue
        held, share, micro = step_layout(cfg)
        needed = calibration.needed(held, micro)
        if needed is not None and needed > capacity:
            calibrations[calibration.path] = calibration
            over[(cfg.method, held, micro, calibration.path)].append((needed, share, cfg.bn.group_size))
    lines = []
    for (method, held, micro, path), grouped in over.items():
        calibration = calibrations[path]
        shares = math.gcd(*(share for _, share, _ in grouped))  # a micro-batch dividing every run's share
        group = math.lcm(*(g for _, _, g in grouped))
        fits = memory_model.largest_fitting_micro(calibration, held, capacity, shares, group)
        runs_text = f"{len(grouped)} {method} run{'s' if len(grouped) != 1 else ''}"
        advice = (f"runtime.micro_batch={fits} fits (--set runtime.micro_batch={fits}; not part of the run ids)"
                  if fits else "no micro-batch fits (the weights and optimizer state alone do not)")
        lines.append(f"warning: memory: {runs_text} need about {memory_model.gib(max(n for n, _, _ in grouped))} per "
                     f"GPU at micro-batch {micro}; profile {profile.name}'s GPUs have {profile.gpu_mem_gb} GiB; "
                     f"{advice} ({calibration.describe()})")
    return lines


def memory_report(runs: list[PlannedRun], profile: Profile) -> list[str]:
    """`--estimate`'s lines on memory: the warnings, what could not be checked, or that everything fits."""
    if profile.gpus_per_node <= 0:
        return ["memory: not checked (the profile has no GPUs)"]
    if profile.gpu_mem_gb <= 0:
        return [f"memory: not checked (profile {profile.name} has no gpu_mem_gb)"]
    lines = memory_warnings(runs, profile)
    networks = {(r.config.model.name, throughput_model.network_of_config(r.config.flat()).image_size,
                 r.config.runtime.autocast) for r in runs}
    missing = sorted(f"{name} at {size} px ({autocast})" for name, size, autocast in networks
                     if memory_model.find_memory_calibration(name, size, autocast) is None)
    if missing:
        lines.append(f"memory: not checked for {', '.join(missing)} (no memory calibration in "
                     f"{memory_model.memory_calibrations_dir()}; measure one with python benchmarks/memory.py "
                     "--save NAME)")
    if not lines:
        lines.append(f"memory: every run's micro-batch fits profile {profile.name}'s {profile.gpu_mem_gb} GiB GPUs")
    return lines
