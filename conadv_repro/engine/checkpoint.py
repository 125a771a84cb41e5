"""Atomic, self-verifying checkpoints of a run directory, safe to open.

A preempted or killed job must never resume from half a checkpoint, and must never lose the last good
one. So every checkpoint is written whole to a temporary file, fsynced and renamed into place
(`atomic_write_bytes`), and seals its own SHA-256: a file that does not verify is treated as
incomplete, reported in one line (`warning: skipping checkpoint P: reason`), and the previous
checkpoint is used instead.

Opening a checkpoint never runs code from it: every read is `torch.load(..., weights_only=True)`, and
a file that holds anything but tensors, numbers, strings and containers is refused like a torn one
(anyone who can write into a shared runs folder could otherwise make the trainer run their code).

File format: a plain `torch.save` zip (so `torch.load(path, weights_only=True)` opens it as is) whose
zip comment is the seal::

    torch.save zip ... | end-of-central-directory record | comment length | b"CONADVC2 sha256=" + 64 hex

The digest covers every byte before the comment-length field, and the comment's length and prefix are
fixed, so a change to any byte of the file (tensor data included, which torch.load itself does not
check) or a cut anywhere is detected. One file and no sidecar, so data and checksum cannot disagree.

Files of earlier releases (`MAGIC | length | sha256 | torch.save payload`, see `_decode_legacy`) still
load; their numpy RNG state goes through an explicit allow-list of numpy's array reconstructors.

Layout inside a run directory::

    checkpoints/step-00000123.pt   periodic checkpoints (the newest `keep` are kept)
    checkpoints/final.pt           the checkpoint written when the run finishes

The name patterns live only here; requeue code asks `latest_checkpoint` rather than globbing itself.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conadv_repro.atomic import atomic_write_bytes, fsync_directory
from conadv_repro.errors import UserError

CHECKPOINT_DIR = "checkpoints"
FINAL_NAME = "final.pt"

# The seal: the zip comment. Hex, not raw bytes, so the comment can never contain the
# end-of-central-directory signature that zip readers search for from the end of the file.
_SEAL_PREFIX = b"CONADVC2 sha256="
_SEAL_SIZE = len(_SEAL_PREFIX) + 64
_EOCD_SIGNATURE = b"PK\x05\x06"
_EOCD_SIZE = 22  # the end-of-central-directory record; its last 2 bytes are the comment's length
_COMMENT_LENGTH = struct.Struct("<H")
# The header format of earlier releases: MAGIC | payload length | sha256(payload) | payload.
_LEGACY_MAGIC = b"CONADVC1"
_LEGACY_HEADER = struct.Struct(">8sQ32s")
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
    data = buffer.getbuffer()
    eocd = data[-_EOCD_SIZE:]
    if len(data) < _EOCD_SIZE or eocd[:4] != _EOCD_SIGNATURE or eocd[-2:] != b"\0\0":
        # Only if a future torch wrote a zip comment itself: fail the save rather than write an unsealed file.
        raise RuntimeError("torch.save did not end its zip with an empty comment; cannot seal the checkpoint")
    sealed = data[: len(data) - _COMMENT_LENGTH.size]
    seal = _SEAL_PREFIX + hashlib.sha256(sealed).hexdigest().encode("ascii")
    # join accepts the memoryview directly, so the (possibly large) payload is copied only once.
    return b"".join((sealed, _COMMENT_LENGTH.pack(len(seal)), seal))


class _CorruptCheckpoint(Exception):
    pass


class NoUsableCheckpoint(UserError):
    """A run directory has checkpoint files and none of them verifies (see `load_latest_checkpoint`)."""


def _decode(data: bytes, map_location: Any) -> dict[str, Any]:
    if data.startswith(_LEGACY_MAGIC):
        return _decode_legacy(data, map_location)
    tail = _EOCD_SIZE + _SEAL_SIZE
    if len(data) < tail:
        raise _CorruptCheckpoint(f"file is {len(data)} bytes, too short to hold a checkpoint and its seal")
    eocd, seal = data[-tail:-_SEAL_SIZE], data[-_SEAL_SIZE:]
    if (eocd[:4] != _EOCD_SIGNATURE or eocd[-2:] != _COMMENT_LENGTH.pack(_SEAL_SIZE)
            or not seal.startswith(_SEAL_PREFIX)):
        raise _CorruptCheckpoint("no checksum seal at its end (cut short, or not written by this suite)")
    sealed = memoryview(data)[: len(data) - _SEAL_SIZE - _COMMENT_LENGTH.size]
    if hashlib.sha256(sealed).hexdigest().encode("ascii") != seal[len(_SEAL_PREFIX) :]:
        raise _CorruptCheckpoint("sha256 mismatch")
    return _safe_load(data, map_location)


def _decode_legacy(data: bytes, map_location: Any) -> dict[str, Any]:
    """A checkpoint of an earlier release: header, then a `torch.save` payload with numpy's RNG tuple."""
    if len(data) < _LEGACY_HEADER.size:
        raise _CorruptCheckpoint(f"file is {len(data)} bytes, shorter than the {_LEGACY_HEADER.size}-byte header")
    _, length, digest = _LEGACY_HEADER.unpack_from(data)
    payload = memoryview(data)[_LEGACY_HEADER.size :]
    if len(payload) != length:
        raise _CorruptCheckpoint(f"payload is {len(payload)} bytes, header says {length}")
    if hashlib.sha256(payload).digest() != digest:
        raise _CorruptCheckpoint("sha256 mismatch")
    # Still weights-only: only numpy's array reconstruction is allowed on top, and only here.
    with torch.serialization.safe_globals(_legacy_numpy_globals()):
        return _safe_load(payload, map_location)


def _legacy_numpy_globals() -> list[Any]:
    """What unpickling `np.random.get_state()` needs: an ndarray of one dtype (uint32), nothing callable
    beyond numpy's own array reconstructor."""
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    # numpy 2 moved numpy.core to numpy._core; a file pickled under either names the one it was written with.
    return [(_reconstruct, "numpy.core.multiarray._reconstruct"),
            (_reconstruct, "numpy._core.multiarray._reconstruct"),
            np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _safe_load(payload: bytes | memoryview, map_location: Any) -> dict[str, Any]:
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise _CorruptCheckpoint(f"refused by the weights-only loader: {_unpickler_reason(error)}") from error
    except Exception as error:  # a verified file that still fails to load is as unusable as a torn one
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
        raise _CorruptCheckpoint(f"torch.load failed: {type(error).__name__}: {first}") from error
    if not isinstance(state, dict):
        raise _CorruptCheckpoint(f"payload is a {type(state).__name__}, not a dict")
    return state


def _unpickler_reason(error: Exception) -> str:
    # torch's message is several paragraphs of advice to load with weights_only=False; keep the cause.
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = next((line for line in lines if "WeightsUnpickler error" in line), lines[-1] if lines else "")
    return cause.replace("WeightsUnpickler error: ", "")


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
    """Load the newest checkpoint that verifies, as `(state, path)`; None if the run has no checkpoint.

    A corrupt, truncated, unverifiable or unsafe file is reported in one line on stderr and skipped in
    favour of the next older one, so a crash during the last save costs one checkpoint interval, not the
    run. When checkpoints exist but none verifies, raises `NoUsableCheckpoint` (a `UserError`): starting
    again from step 0 would silently throw the run's progress away and prune those files, which may still
    be recoverable.
    """
    failures: list[tuple[Path, str]] = []
    for path in _candidates(run_dir):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            # Pruned between listing and reading; not a corruption worth warning about.
            continue
        except OSError as error:
            failures.append((path, f"cannot read: {error}"))
            _warn_corrupt(path, failures[-1][1])
            continue
        try:
            return _decode(data, map_location), path
        except _CorruptCheckpoint as error:
            failures.append((path, str(error)))
            _warn_corrupt(path, str(error))
    if failures:
        newest, reason = failures[0]
        reason = " ".join(reason.split())  # an OS or torch message may span lines; the error is one
        raise NoUsableCheckpoint(
            f"run directory {run_dir} has {len(failures)} checkpoint file(s) and none verifies (newest, "
            f"{newest.name}: {reason}); refusing to start it again from step 0: restore a good checkpoint, "
            f"or move {checkpoint_dir(run_dir)} away to train from scratch")
    return None


def load_checkpoint_file(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load one named checkpoint (the one rank 0 chose, for the other trainers of a run)."""
    try:
        return _decode(Path(path).read_bytes(), map_location)
    except _CorruptCheckpoint as error:
        raise RuntimeError(f"checkpoint {path} does not verify: {error}") from None


def _warn_corrupt(path: Path, reason: str) -> None:
    # One plain line per file: Python's warning format would echo this module's source line after each,
    # and a filter could hide or dedupe a skipped checkpoint the user needs to hear about.
    reason = " ".join(reason.split())  # an OS or torch message may span lines
    print(f"warning: skipping checkpoint {path}: {reason}", file=sys.stderr, flush=True)


def finished_or_newest(run_dir: Path, record: dict[str, Any] | None, run_id: str, *, allow_unfinished: bool,
                       verb: str) -> tuple[dict[str, Any], Path, bool]:
    """(state, path, finished) of the checkpoint a tool reads from a run (export, the landscape): a finished
    run's final.pt, verified; else, with `allow_unfinished`, its newest checkpoint that verifies. Refusals are
    one-line UserErrors naming --allow-unfinished; `verb` says what the caller does with the checkpoint."""
    newest = latest_checkpoint(run_dir)
    record = record or {}
    hint = f"; pass --allow-unfinished to {verb} its newest checkpoint that verifies"
    status = record.get("status", "not started")
    final = checkpoint_dir(run_dir) / FINAL_NAME
    loaded: tuple[dict[str, Any], Path] | None = None
    finished = False
    if status == "finished" and final.is_file():
        try:
            loaded, finished = (load_checkpoint_file(final), final), True
        except RuntimeError as error:  # names the file and why it does not verify
            if not allow_unfinished:
                raise UserError(f"{error}{hint}") from None
    elif not allow_unfinished:
        if status == "finished":
            raise UserError(f"run {run_dir} is recorded finished but {final} is missing{hint}")
        steps = f", {record.get('steps_done')} of {record.get('total_steps')} steps" if record else ""
        raise UserError(f"run {run_dir} has not finished (status {status}{steps}){hint}"
                        + (f" ({newest.name})" if newest is not None else ""))
    if loaded is None:
        loaded = load_latest_checkpoint(run_dir) if newest is not None else None  # reports each file skipped
        if loaded is None:
            raise UserError(f"run directory {run_dir} has no checkpoint to {verb} yet")
    state, path = loaded
    if state.get("run_id") != run_id:
        # Another run's network would be read as this run's, with this run's config and data.
        raise UserError(f"checkpoint {path} belongs to run {state.get('run_id')}, not to this run directory's "
                        f"config ({run_id})")
    return state, path, finished


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint file that exists, without verifying it (cheap; for requeue decisions)."""
    candidates = _candidates(run_dir)
    return candidates[0] if candidates else None


__all__ = [
    "CHECKPOINT_DIR",
    "FINAL_NAME",
    "NoUsableCheckpoint",
    "checkpoint_dir",
    "finished_or_newest",
    "latest_checkpoint",
    "load_checkpoint_file",
    "load_latest_checkpoint",
    "save_checkpoint",
    "step_checkpoint_name",
]
