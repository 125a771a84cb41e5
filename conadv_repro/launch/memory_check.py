"""Do a grid's micro-batches fit the profile's GPUs? Warnings for `launch` and `--estimate`.

From the memory calibration of each run's network (conadv_repro/memory_model.py): a run whose step needs more
than the profile's `gpu_mem_gb` at its micro-batch gets a warning naming the largest micro-batch that fits.
A warning, not a refusal: the calibration is a model (a CPU's one is a lower bound), and the user may know
better. No torch import.
"""

from __future__ import annotations

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
    """One line per method and micro-batch whose runs would not fit the profile's GPUs."""
    if profile.gpu_mem_gb <= 0 or profile.gpus_per_node <= 0:
        return []
    capacity = profile.gpu_mem_gb * memory_model.GIB
    over: dict[tuple[str, int, str], list[PlannedRun]] = defaultdict(list)
    found: dict[tuple[str, int, str], memory_model.MemoryCalibration | None] = {}
    needs: dict[tuple[str, int, str], tuple[float, int | None]] = {}
    for run in runs:
        cfg = run.config
        size = throughput_model.network_of_config(cfg.flat()).image_size
        key = (cfg.model.name, size, cfg.runtime.autocast)
        if key not in found:
            found[key] = memory_model.find_memory_calibration(*key)
        calibration = found[key]
        method, share, micro = step_layout(cfg)
        needed = None if calibration is None else calibration.needed(method, micro)
        if needed is None or needed <= capacity:
            continue
        fits = memory_model.largest_fitting_micro(calibration, method, capacity, share, cfg.bn.group_size)
        line = (cfg.method, micro, calibration.describe())
        over[line].append(run)
        needs[line] = (max(needed, needs.get(line, (0.0, None))[0]), fits)
    lines = []
    for (method, micro, source), grouped in over.items():
        needed, fits = needs[(method, micro, source)]
        runs_text = f"{len(grouped)} {method} run{'s' if len(grouped) != 1 else ''}"
        advice = (f"runtime.micro_batch={fits} fits (--set runtime.micro_batch={fits}; not part of the run ids)"
                  if fits else "no micro-batch fits (the weights and optimizer state alone do not)")
        lines.append(f"warning: memory: {runs_text} need about {memory_model.gib(needed)} per GPU at micro-batch "
                     f"{micro}; profile {profile.name}'s GPUs have {profile.gpu_mem_gb} GiB; {advice} ({source})")
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
