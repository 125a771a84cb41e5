"""Cluster profiles: `slurm/profiles/NAME.toml` at the repository root, one per cluster (CONADV_PROFILES
names another folder), or any .toml file given by its path (`--profile path/to/mine.toml`, named `mine`).

    partition = "gpu"          # Slurm partition
    gpus_per_node = 8          # GPUs per node; a job asks for one per process of its run
    gpus_per_run = 0           # GPUs (processes) per run; 0: 8 at the paper scale (at most a node), else 1
    cpus_per_task = 10
    mem_gb = 64                # memory per node in GB (Slurm's --mem), shared by the node's tasks (ranks)
    gpu_mem_gb = 80            # memory of one GPU in GiB; 0: not known (launch and --estimate check no memory)
    time_min = 1440            # time limit of a job, minutes
    account = ""               # optional
    qos = ""                   # optional
    constraint = ""            # optional, e.g. "a100"
    array_parallelism = 64     # at most this many array tasks at once
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from conadv_repro.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class Profile:
    name: str = "default"
    partition: str = ""
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    mem_gb: int = 8
    gpu_mem_gb: int = 0
    gpus_per_run: int = 0
    time_min: int = 1440
    account: str = ""
    qos: str = ""
    constraint: str = ""
    array_parallelism: int = 64


PROFILES_ENV = "CONADV_PROFILES"
PAPER_GPUS_PER_RUN = 8  # one node of most GPU clusters: the paper scale's DisAdv and ConAdv fit a day on it


def gpus_per_run(profile: Profile, scale: str, requested: int = 0) -> int:
    """Processes (one GPU each) a run gets unless its experiment pins its layout: `--gpus-per-run`, else
    the profile's `gpus_per_run`, else PAPER_GPUS_PER_RUN at the paper scale (at most one node of the
    profile's GPUs); 0 at the others: as the run declares it (one trainer, plus ConAdv's attack workers)."""
    if requested:
        return requested
    if profile.gpus_per_run:
        return profile.gpus_per_run
    if scale == "paper" and profile.gpus_per_node:
        return min(PAPER_GPUS_PER_RUN, profile.gpus_per_node)
    return 0


def gpus_line(args: Any, profile: Profile) -> str:
    """Where a launch's GPUs per run come from, in words."""
    count = gpus_per_run(profile, args.scale, args.gpus_per_run)
    if not count:
        where = "without a GPU profile" if args.scale == "paper" else f"at the {args.scale} scale"
        return f"as each run declares it {where}: one trainer, plus ConAdv's attack workers where set"
    if args.gpus_per_run:
        why = "--gpus-per-run"
    elif profile.gpus_per_run:
        why = f"profile {profile.name}'s gpus_per_run"
    elif args.scale == "paper" and profile.gpus_per_node:
        why = f"the paper scale's default on profile {profile.name}"
    else:
        why = "the default"
    unit = "GPU" if profile.gpus_per_node else "process"  # a CPU partition gives processes, not GPUs
    plural = "es" if unit == "process" else "s"
    return f"{count} {unit}{plural if count != 1 else ''} per run unless an experiment pins its layout: {why}"


def profiles_dir() -> Path:
    """`slurm/profiles/` at the root of the clone; CONADV_PROFILES overrides it."""
    override = os.environ.get(PROFILES_ENV)
    return Path(override) if override else Path(__file__).resolve().parents[2] / "slurm" / "profiles"


def available_profiles() -> list[str]:
    folder = profiles_dir()
    return sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []


def is_profile_path(name: str) -> bool:
    """Whether `--profile` names a file (`x.toml`, `dir/x`) rather than a profile of the profiles folder."""
    return name.endswith(".toml") or "/" in name or os.sep in name


def load_profile(name: str | None) -> Profile:
    """`--profile NAME` (NAME.toml in `profiles_dir()`) or `--profile PATH` (a .toml file, named after its
    stem); None is the default profile."""
    if name is None:
        return Profile()
    if is_profile_path(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise UserError(f"--profile {name}: no such file ({path.absolute()}); allowed: a profile's .toml file, "
                            "or the NAME of one in the profiles folder")
        name = path.stem
    else:
        path = profiles_dir() / f"{name}.toml"
        if not path.is_file():
            folder = profiles_dir() if os.environ.get(PROFILES_ENV) else "slurm/profiles/"
            raise UserError(f"unknown profile {name!r}; allowed: {', '.join(available_profiles()) or 'none'} "
                            f"(files in {folder}), or the path of a .toml file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise UserError(f"profile {path} is not valid TOML ({error})") from None
    known = {f.name: f for f in fields(Profile) if f.name != "name"}
    values: dict[str, object] = {}
    for key, value in data.items():
        if key not in known:
            raise UserError(f"profile {path}: unknown field {key!r}; allowed: {', '.join(known)}")
        kind = known[key].type
        ok = isinstance(value, str) if kind == "str" else (isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise UserError(f"profile {path}: {key}={value!r} is not {'a string' if kind == 'str' else 'an integer'}")
        if kind == "int" and value < 0:  # type: ignore[operator]
            raise UserError(f"profile {path}: {key}={value!r} must be >= 0")
        values[key] = value
    return Profile(name=name, **values)  # type: ignore[arg-type]
