"""A run directory as the landscape reads it: its config, the checkpoint measured, and who it is.

The network measured is the run's final one, `checkpoints/final.pt` of a finished run, verified by its
seal (engine/checkpoint.py). A run that has not finished, or whose final.pt is missing or does not
verify, is refused unless `allow_unfinished`, which takes the newest checkpoint that verifies. The
checkpoint's identity (file name, step, SHA-256 of the whole file) is part of every result's key, so a
later final.pt of the same run is a new measurement, never mistaken for the earlier one's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conadv_repro.engine.rundir import read_run_config as read_config
from conadv_repro.errors import UserError
from conadv_repro.landscape_state import file_sha256


@dataclass(frozen=True)
class CheckpointIdentity:
    file: str
    step: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "step": self.step, "sha256": self.sha256}


@dataclass(frozen=True)
class RunAtCheckpoint:
    """One run directory's config, derived values, record and the checkpoint chosen for measuring."""

    path: Path
    cfg: Any  # conadv_repro.config.Config
    derived: dict[str, Any]
    record: dict[str, Any]
    state: dict[str, Any]
    checkpoint: CheckpointIdentity
    finished: bool

    @property
    def run_id(self) -> str:
        return str(self.cfg.run_id())

    def last_lr(self) -> float | None:
        """The LR of the last update before the checkpoint (the run's final LR for final.pt), from the
        pure schedule and the derived values in config.json; None before the first step."""
        from conadv_repro.optim.schedule import lr_at

        d = self.derived
        if self.checkpoint.step < 1 or not {"peak_lr", "warmup_steps", "total_steps"} <= d.keys():
            return None
        return lr_at(self.checkpoint.step - 1, peak_lr=float(d["peak_lr"]), warmup_steps=int(d["warmup_steps"]),
                     total_steps=int(d["total_steps"]), power=self.cfg.schedule.power,
                     end_lr=self.cfg.schedule.end_lr)


def open_run(run_dir: Path, *, allow_unfinished: bool, data_root: Path | None = None,
             option: str = "RUN_DIR", check_data: bool = True) -> RunAtCheckpoint:
    """The run in `run_dir` at the checkpoint to measure (module docstring), or a one-line UserError."""
    from conadv_repro.atomic import read_json_dict
    from conadv_repro.engine.checkpoint import finished_or_newest
    from conadv_repro.engine.rundir import RunDirectory

    cfg = read_config(run_dir, option=option, data_root=data_root, check_data=check_data)
    rd = RunDirectory(Path(run_dir))
    record = rd.read_record() or {}
    stored = read_json_dict(rd.config_path) or {}
    derived = stored.get("derived") if isinstance(stored.get("derived"), dict) else {}
    state, path, finished = finished_or_newest(rd.path, record, cfg.run_id(), allow_unfinished=allow_unfinished,
                                               verb="measure")
    if not isinstance(state.get("model"), dict):
        raise UserError(f"checkpoint {path} holds no network")
    identity = CheckpointIdentity(file=path.name, step=int(state.get("step", 0)), sha256=file_sha256(path))
    return RunAtCheckpoint(path=rd.path, cfg=cfg, derived=derived, record=record, state=state,
                           checkpoint=identity, finished=finished)


def image_size(cfg: Any) -> int:
    """The side of the images the run's network sees (model.input_size, or the dataset's default)."""
    from conadv_repro.export import DEFAULT_IMAGE_SIZE

    return int(cfg.model.input_size or DEFAULT_IMAGE_SIZE.get(cfg.data, 0))


def check_same_setup(ours: Any, theirs: Any, other: Path) -> None:
    """--between needs one network on one dataset: the configs' data and image size, model name, width
    and stem must agree (the parameters' shapes are compared again once both networks are built)."""
    data_a, data_b = (ours.data, image_size(ours)), (theirs.data, image_size(theirs))
    if data_a != data_b:
        raise UserError(f"--between {other} trained on other data (data={theirs.data} at {data_b[1]} px, this run "
                        f"data={ours.data} at {data_a[1]} px); allowed: a run of the same network on the same data")
    arch_a = (ours.model.name, ours.model.width, ours.model.stem)
    arch_b = (theirs.model.name, theirs.model.width, theirs.model.stem)
    if arch_a != arch_b:
        raise UserError(f"--between {other} is another architecture (model {describe_arch(arch_b)}, this run "
                        f"{describe_arch(arch_a)}); allowed: a run of the same network on the same data")


def describe_arch(arch: tuple[str, int, str]) -> str:
    name, width, stem = arch
    return f"{name} width {width} stem {stem}"


__all__ = ["CheckpointIdentity", "RunAtCheckpoint", "check_same_setup", "image_size", "open_run", "read_config"]
