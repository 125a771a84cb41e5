"""The run directory: `config.json`, `metrics.jsonl`, `record.json` and `checkpoints/`.

Every write is atomic (see conadv_repro/atomic.py). The record is the run's source of truth for the
launcher and the analysis: its `status` is `running`, `interrupted` (Ctrl-C; resumable, as a `running`
record whose process died), `finished`, `failed` or `diverged`.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import conadv_repro
from conadv_repro.atomic import atomic_write_json, atomic_write_jsonl, read_json, read_jsonl
from conadv_repro.config import FIELDS, SCHEMA_VERSION, Config, config_from_dict
from conadv_repro.errors import UserError, existing_folder
from conadv_repro.machine import cpu_name
from conadv_repro.runfiles import CONFIG_FILE, LAUNCHER_FILES, METRICS_FILE, RECORD_FILE

RECORD_SCHEMA = 1
STATUSES = ("running", "interrupted", "finished", "failed", "diverged")


@dataclass
class RunDirectory:
    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def record_path(self) -> Path:
        return self.path / RECORD_FILE

    def stored_config(self) -> Config | None:
        if not self.config_path.exists():
            return None
        try:
            payload = read_json(self.config_path)
            return config_from_dict(payload["config"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UserError(f"run directory {self.path} has an unreadable {CONFIG_FILE} ({error}); "
                            "move it away or pick another --run-dir") from None

    def check_compatible(self, cfg: Config) -> None:
        """A run directory holds one run: a different config (another run id) is a user error."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--run-dir {self.path} is a file, not a directory; pick another --run-dir")
        stored = self.stored_config()
        if stored is None:
            leftovers = sorted(p.name for p in self.path.iterdir() if not _launcher_file(p.name)) \
                if self.path.exists() else []
            if leftovers:
                raise UserError(f"run directory {self.path} is not empty and holds no {CONFIG_FILE} "
                                f"(found {', '.join(leftovers[:3])}); pick an empty or new --run-dir")
            return
        if stored.run_id() != cfg.run_id():
            ours, theirs = cfg.flat(), stored.flat()
            diff = [k for k in ours if ours[k] != theirs[k] and FIELDS[k].metadata.get("hashed", True)]
            shown = ", ".join(f"{k}={theirs[k]!r} (yours {ours[k]!r})" for k in diff[:3])
            raise UserError(f"run directory {self.path} holds a different config (run id {stored.run_id()}, "
                            f"yours {cfg.run_id()}): {shown}; pick another --run-dir")

    def write_config(self, cfg: Config, derived: dict[str, Any]) -> None:
        atomic_write_json(self.config_path, {"schema": SCHEMA_VERSION, "run_id": cfg.run_id(),
                                             "config": cfg.to_dict(), "derived": derived})

    def read_record(self) -> dict[str, Any] | None:
        try:
            return read_json(self.record_path)
        except FileNotFoundError:
            return None
        except ValueError:
            return None

    def write_record(self, record: dict[str, Any]) -> None:
        record = {**record, "schema": RECORD_SCHEMA, "updated": time.time()}
        atomic_write_json(self.record_path, record)

    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path)

    def truncate_metrics(self, steps_done: int) -> None:
        """Drop rows written after the checkpoint we resume from (and a final row: the end of the run
        writes it again), so that the resumed run writes them once, identically."""
        rows = self.metrics()
        kept = [row for row in rows if row.get("step", 0) <= steps_done and row.get("kind") != "final"]
        if len(kept) != len(rows) or self.metrics_path.exists():
            atomic_write_jsonl(self.metrics_path, kept)


def _launcher_file(name: str) -> bool:
    return name in LAUNCHER_FILES or name.startswith((".lock.json.", "lock.stale.", f".{LAUNCHER_FILES[1]}."))


def _git(*args: str) -> str | None:
    root = Path(conadv_repro.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.cache
def _process_provenance() -> tuple[tuple[str, ...], str, bool | None]:
    """(installed packages, git commit, dirty), once per process: its code and packages are those it
    imported at the start, and reading every package's metadata takes about 0.3 s, once per run otherwise
    (a job trains many runs)."""
    # A set: an editable install can be listed twice (its .egg-info and its .dist-info).
    packages = tuple(sorted({f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()
                             if d.metadata["Name"]}))
    status = _git("status", "--porcelain", "--untracked-files=no")
    return packages, _git("rev-parse", "HEAD") or "unknown", None if status is None else bool(status)


def environment_info(device: torch.device) -> dict[str, Any]:
    """What produced a run: versions of the package, torch, CUDA, cuDNN and every installed package."""
    packages, commit, dirty = _process_provenance()
    info: dict[str, Any] = {
        "package_version": conadv_repro.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "host": socket.gethostname(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "packages": list(packages),
    }
    return info


def read_run_config(run_dir: Path, *, option: str = "RUN_DIR", data_root: Path | None = None,
                check_data: bool = True) -> Config:
    """The stored config of the run in `run_dir` (its data_root replaced by `data_root` if given), or a
    one-line UserError. `check_data=False` for a run whose dataset is not read (the other end of --between)."""
    rd = RunDirectory(Path(run_dir))
    if not rd.path.exists():
        raise UserError(f"{option} {rd.path}: no such run directory")
    if not rd.path.is_dir():
        raise UserError(f"{option} {rd.path} is a file, not a run directory")
    cfg = rd.stored_config()
    if cfg is None:
        raise UserError(f"{option} {rd.path} is not a run directory (no config.json)")
    if data_root is not None:
        folder = existing_folder(Path(data_root), "--data-root", "the folder holding the run's dataset")
        cfg = cfg.replace({"data_root": str(folder)})  # not part of the run id: its checkpoints still match
    elif check_data and cfg.data_root and not Path(cfg.data_root).is_dir():
        raise UserError(f"the run's data_root {cfg.data_root} is not a folder here (moved, or another machine); "
                        "point the run at its data with --data-root DIR")
    return cfg
