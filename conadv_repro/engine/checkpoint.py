"""Atomic, self-verifying checkpoints of a run directory.

A preempted or killed job must never resume from half a checkpoint, and must never lose the last good
one. So every checkpoint is written whole to a temporary file, fsynced and renamed into place
(`atomic_write_bytes`), and carries its own SHA-256 in a small header: a file whose length or digest
does not match is treated as incomplete, warned about, and the previous checkpoint is used instead.

File format (one file, no sidecar, so there is no window where data and checksum disagree)::

    MAGIC (8 bytes) | payload length (8 bytes, big-endian) | sha256(payload) (32 bytes) | payload

where the payload is the `torch.save` serialisation of the state dict.

Layout inside a run directory::

    checkpoints/step-00000123.pt   periodic checkpoints (the newest `keep` are kept)
    checkpoints/final.pt           the checkpoint written when the run finishes

The name patterns live only here; requeue code asks `latest_checkpoint` rather than globbing itself.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import warnings
from pathlib import Path
from typing import Any

import torch

from conadv_repro.atomic import atomic_write_bytes, fsync_directory

CHECKPOINT_DIR = "checkpoints"
FINAL_NAME = "final.pt"

_MAGIC = b"CONADVC1"
_HEADER = struct.Struct(">8sQ32s")
_STEP_RE = re.compile(r"^step-(\d+)\.pt$")
# `atomic_write_bytes` names its temporaries ".<target name>.<random>.tmp"; only those of our own
# checkpoint names are ever cleaned up, so nothing else a user put in the directory is touched.
_TMP_RE = re.compile(r"^\.(?:step-\d+\.pt|final\.pt)\..*\.tmp$")


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def step_checkpoint_name(step: int) -> str:
    # Zero-padded so a directory listing sorts chronologically; larger steps simply get more digits.
    return f"step-{step:08d}.pt"


def _step_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """Step checkpoints in `directory`, newest (highest step) first."""
    found: list[tuple[int, Path]] = []
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return found
    for entry in entries:
        match = _STEP_RE.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    found.sort(key=lambda item: item[0], reverse=True)
    return found


def _candidates(run_dir: Path) -> list[Path]:
    """Existing checkpoint files, newest first: final, then step checkpoints by descending step."""
    directory = checkpoint_dir(run_dir)
    candidates: list[Path] = []
    final = directory / FINAL_NAME
    if final.is_file():
        candidates.append(final)
    candidates.extend(path for _, path in _step_checkpoints(directory))
    return candidates


def _encode(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    header = _HEADER.pack(_MAGIC, len(payload), hashlib.sha256(payload).digest())
    # join accepts the memoryview directly, so the (possibly large) payload is copied only once.
    return b"".join((header, payload))


class _CorruptCheckpoint(Exception):
    pass


def _decode(data: bytes, map_location: Any) -> dict[str, Any]:
    if len(data) < _HEADER.size:
        raise _CorruptCheckpoint(f"file is {len(data)} bytes, shorter than the {_HEADER.size}-byte header")
    magic, length, digest = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise _CorruptCheckpoint("missing checkpoint header")
    payload = memoryview(data)[_HEADER.size :]
    if len(payload) != length:
        raise _CorruptCheckpoint(f"payload is {len(payload)} bytes, header says {length}")
    if hashlib.sha256(payload).digest() != digest:
        raise _CorruptCheckpoint("sha256 mismatch")
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)
    except Exception as error:  # a verified file that still fails to load is as unusable as a torn one
        raise _CorruptCheckpoint(f"torch.load failed: {type(error).__name__}: {error}") from error
    if not isinstance(state, dict):
        raise _CorruptCheckpoint(f"payload is a {type(state).__name__}, not a dict")
    return state


def save_checkpoint(
    run_dir: Path, step: int, state: dict[str, Any], *, final: bool = False, keep: int = 2
) -> Path:
    """Write `state` atomically as the checkpoint for `step` (or as `final.pt`) and return its path.

    After the write has succeeded, prunes older step checkpoints so that the newest `keep` of them
    remain (the one just written always remains), plus `final.pt`, and removes temporaries left by an
    earlier crash mid-save. Pruning happens only after the new file is durable, so a crash at any
    point leaves at least one complete checkpoint behind.
    """
    if not isinstance(state, dict):
        raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"checkpoint step must be a non-negative int, got {step!r}")
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    directory = checkpoint_dir(run_dir)
    path = directory / (FINAL_NAME if final else step_checkpoint_name(step))
    atomic_write_bytes(path, _encode(state))
    _prune(directory, keep=keep, written=path)
    return path


def _prune(directory: Path, *, keep: int, written: Path) -> None:
    removed = False
    for index, (_, path) in enumerate(_step_checkpoints(directory)):
        if index < keep or path == written:
            continue
        path.unlink(missing_ok=True)
        removed = True
    # The run lock guarantees a single writer, so any temporary still here is from a crashed save.
    for entry in directory.iterdir():
        if _TMP_RE.match(entry.name):
            entry.unlink(missing_ok=True)
            removed = True
    if removed:
        fsync_directory(directory)


def load_latest_checkpoint(run_dir: Path, map_location: Any = "cpu") -> tuple[dict[str, Any], Path] | None:
    """Load the newest checkpoint that verifies, as `(state, path)`; None if there is none.

    A corrupt, truncated or unverifiable file is reported with a RuntimeWarning and skipped in favour
    of the next older one, so a crash during the last save costs one checkpoint interval, not the run.
    """
    for path in _candidates(run_dir):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            # Pruned between listing and reading; not a corruption worth warning about.
            continue
        except OSError as error:
            _warn_corrupt(path, f"cannot read: {error}")
            continue
        try:
            return _decode(data, map_location), path
        except _CorruptCheckpoint as error:
            _warn_corrupt(path, str(error))
    return None


def load_checkpoint_file(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load one named checkpoint (the one rank 0 chose, for the other trainers of a run)."""
    try:
        return _decode(Path(path).read_bytes(), map_location)
    except _CorruptCheckpoint as error:
        raise RuntimeError(f"checkpoint {path} does not verify: {error}") from None


def _warn_corrupt(path: Path, reason: str) -> None:
    warnings.warn(
        f"checkpoint {path} is corrupt or incomplete ({reason}); falling back to the previous one",
        RuntimeWarning,
        stacklevel=3,
    )


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint file that exists, without verifying it (cheap; for requeue decisions)."""
    candidates = _candidates(run_dir)
    return candidates[0] if candidates else None


__all__ = [
    "CHECKPOINT_DIR",
    "FINAL_NAME",
    "checkpoint_dir",
    "latest_checkpoint",
    "load_latest_checkpoint",
    "save_checkpoint",
    "step_checkpoint_name",
]
