"""How a run's processes split its batch (no torch import: the launcher checks layouts while planning).

Trainers hold contiguous slices of the global batch, whole BN groups each (global batch = trainers x
micro-batch x accumulation steps); ConAdv's attack workers hold an even split of it, whole groups too.
"""

from __future__ import annotations

import os

from conadv_repro.config import Config
from conadv_repro.errors import UserError


def run_processes(cfg: Config) -> int:
    """Processes the launcher starts for a run: its trainers (runtime.trainers, at least 1) plus ConAdv's
    attack workers."""
    workers = cfg.conadv.attack_workers if cfg.method == "conadv" else 0
    return max(cfg.runtime.trainers, 1) + workers


def env_world_size() -> int:
    """Processes of this run as torchrun (or the launcher's job) announces them: 1 when started alone."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"WORLD_SIZE={raw!r} is not an integer") from None


def with_trainers_named(cfg: Config, world_size: int) -> Config:
    """`cfg` with `runtime.trainers` filled in from the processes started (torchrun's WORLD_SIZE), so that
    the config and record say how the run was laid out, as the launcher's runs do (the count is not part
    of the run id); one trainer stays 0, its default."""
    if cfg.runtime.trainers or world_size <= 1:
        return cfg
    trainers, _ = check_layout(cfg, world_size)
    return cfg.replace({"runtime.trainers": trainers}) if trainers > 1 else cfg


def check_layout(cfg: Config, world_size: int) -> tuple[int, int]:
    """(trainers, attack workers) of `cfg` on `world_size` processes; a one-line error if it does not fit."""
    workers = cfg.conadv.attack_workers if cfg.method == "conadv" else 0
    trainers = world_size - workers
    if trainers < 1:
        raise UserError(f"conadv.attack_workers={workers} leaves no trainer among {world_size} processes; "
                        f"allowed: at most {world_size - 1}")
    if cfg.runtime.trainers and cfg.runtime.trainers != trainers:
        raise UserError(f"runtime.trainers={cfg.runtime.trainers} but {world_size} processes with "
                        f"conadv.attack_workers={workers} give {trainers} trainers; start "
                        f"{cfg.runtime.trainers + workers} processes or set runtime.trainers=0")
    group, batch = cfg.bn.group_size, cfg.batch_size
    if batch % trainers or (batch // trainers) % group:
        raise UserError(f"batch_size={batch} does not split over {trainers} trainers into whole BN groups of "
                        f"bn.group_size={group}; allowed: a trainer count dividing {batch // group}")
    local = batch // trainers
    if cfg.runtime.micro_batch and cfg.runtime.micro_batch < local and local % cfg.runtime.micro_batch:
        raise UserError(f"runtime.micro_batch={cfg.runtime.micro_batch} does not divide the per-trainer batch "
                        f"{local} (batch_size={batch} / {trainers} trainers)")
    if workers and (batch % workers or (batch // workers) % group):
        raise UserError(f"batch_size={batch} does not split over conadv.attack_workers={workers} into whole BN "
                        f"groups of bn.group_size={group}; allowed: a worker count dividing {batch // group}")
    return trainers, workers
