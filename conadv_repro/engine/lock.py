"""One owner per run directory: a lock file with a heartbeat.

Two processes training into the same run directory would interleave checkpoints and metrics and
silently corrupt the run (a double submission, a requeued job starting while the old one still
drains). So whoever runs a run directory holds `<run_dir>/lock.json`::

    {"token": ..., "pid": ..., "host": ..., "slurm_job_id": ..., "created": ..., "heartbeat": ...}

The file is created with `os.link` from a fully written temporary file, which fails if the lock
already exists, so two processes can never both create it and a reader never sees half of it.

The holder refreshes `heartbeat` (unix time) every `HEARTBEAT_INTERVAL_S` = 10 s. A lock is *stale*,
and may be taken over by someone else, when

* its heartbeat is older than `STALE_AFTER_S` = 120 s (the holder hung, was suspended, or its node
  died; 120 s is many missed beats, so a slow file system does not cause a false takeover), or
* it was taken on this same host and its pid no longer exists, or
* it names a Slurm job (and was taken on another host) that Slurm no longer knows, or
* it is unreadable and was last modified more than `STALE_AFTER_S` ago.

A lock carrying the same token as ours is adopted rather than refused: a launcher can take the lock at
submission and hand its token to the job through the environment variable `CONADV_LOCK_TOKEN`.
A lock without a pid (such a launcher's lock for a queued job) is judged by its heartbeat alone.

Taking over renames the stale file aside (only one racer's rename can succeed) and then links a new
lock in its place.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from conadv_repro.atomic import atomic_write_json, fsync_directory
from conadv_repro.errors import UserError
from conadv_repro.lock_state import (
    HEARTBEAT_INTERVAL_S,
    LOCK_FILE,
    STALE_AFTER_S,
    TOKEN_ENV,
    lock_is_live,
    read_lock,
)
from conadv_repro.lock_state import as_float as _as_float
from conadv_repro.lock_state import lock_path as _lock_path
from conadv_repro.lock_state import parse_lock as _parse
from conadv_repro.lock_state import read_raw as _read_raw
from conadv_repro.lock_state import stale_reason as _stale_reason


class LockHeldError(UserError):
    """The run directory is in use by a live process; its message is one line naming the holder."""

    def __init__(self, message: str, holder: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.holder = holder


def _held_message(run_dir: Path, info: dict[str, Any] | None, mtime: float) -> str:
    now = time.time()
    if info is None:
        return (
            f"run directory {run_dir} has an unreadable lock file {LOCK_FILE} "
            f"(modified {now - mtime:.0f}s ago); wait for it or remove it if no run is using the directory"
        )
    heartbeat = _as_float(info.get("heartbeat"))
    beat = f"heartbeat {now - heartbeat:.0f}s ago" if heartbeat is not None else "no heartbeat"
    job = f"Slurm job {info['slurm_job_id']}, " if info.get("slurm_job_id") else ""
    return (
        f"run directory {run_dir} is in use by pid {info.get('pid')} on host {info.get('host')} "
        f"({job}{beat}); wait for it or stop it"
    )


def check_not_held(run_dir: Path, token: str | None = None) -> None:
    """Raise LockHeldError now if a live holder other than `token` has the directory: a cheap check
    before a long setup (loading a dataset), so a second process fails in a second, not a minute.
    The real guarantee is still `RunLock.acquire`."""
    raw = _read_raw(_lock_path(run_dir))
    if raw is None:
        return
    info = _parse(raw[0])
    token = token or os.environ.get(TOKEN_ENV)
    if info is not None and token and info.get("token") == token:
        return
    if _stale_reason(info, raw[1], STALE_AFTER_S) is None:
        raise LockHeldError(_held_message(Path(run_dir), info, raw[1]), info)


class RunLock:
    """The lock on one run directory. Use as a context manager, or `acquire`/`start_heartbeat`/`release`."""

    def __init__(
        self,
        run_dir: Path,
        *,
        token: str | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL_S,
        stale_after: float = STALE_AFTER_S,
        claim_for: str | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        # A launcher's claim (for the cluster named) holds the directory with no process of its own.
        self.claim_for = claim_for
        self.path = _lock_path(self.run_dir)
        self.token = token or os.environ.get(TOKEN_ENV) or uuid.uuid4().hex
        self.heartbeat_interval = heartbeat_interval
        self.stale_after = stale_after
        self.held = False
        # Set by the heartbeat thread when the lock file no longer holds our token and pid, i.e. someone
        # judged us stale and took over; the training loop should stop writing into the directory.
        self.lost = False
        self._created = 0.0
        self._job: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _payload(self) -> dict[str, Any]:
        if self.claim_for is not None:
            return _claim_payload(self.token, cluster=self.claim_for)
        return {
            **self._job,
            "token": self.token,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID") or None,
            "created": self._created,
            "heartbeat": time.time(),
        }

    def _is_ours(self, info: dict[str, Any] | None) -> bool:
        return info is not None and info.get("token") == self.token and info.get("pid") == os.getpid()

    def _try_create(self) -> bool:
        """Create the lock file from a complete temporary file; False if a lock file already exists."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        data = (json.dumps(self._payload(), indent=2, sort_keys=True) + "\n").encode("utf-8")
        fd, tmp_name = tempfile.mkstemp(prefix=f".{LOCK_FILE}.", suffix=".tmp", dir=self.run_dir)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp_name, self.path)
            except FileExistsError:
                return False
            except OSError as error:
                if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                # No hard links on this file system: O_EXCL is still exclusive, but a reader may see
                # the file empty for a moment, which counts as a young unreadable lock, i.e. held.
                return self._try_create_exclusive(data)
        finally:
            try:
                os.unlink(tmp_name)
            except FileNotFoundError:
                pass
        fsync_directory(self.run_dir)
        return True

    def _try_create_exclusive(self, data: bytes) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return True

    def acquire(self) -> None:
        """Take the lock, adopting it if it carries our token or taking it over if it is stale.

        Raises LockHeldError if a live holder has it.
        """
        self._created = time.time()
        # A few rounds only: each round either succeeds, raises, or lost a race to another taker,
        # whose lock the next round then sees as live.
        for _ in range(3):
            if self._try_create():
                self._mark_held()
                return
            raw = _read_raw(self.path)
            if raw is None:
                # Released between our link and our read; just try again.
                continue
            data, mtime = raw
            info = _parse(data)
            if info is not None and info.get("token") == self.token:
                # Adopting the launcher's claim: keep which job runs us, for status and cancel.
                self._job = {k: info[k] for k in ("cluster", "local_job_pid") if info.get(k) is not None}
                atomic_write_json(self.path, self._payload())
                self._mark_held()
                return
            if _stale_reason(info, mtime, self.stale_after) is None:
                raise LockHeldError(_held_message(self.run_dir, info, mtime), info)
            if self._take_over(data):
                self._mark_held()
                return
        raw = _read_raw(self.path)
        info = _parse(raw[0]) if raw else None
        raise LockHeldError(_held_message(self.run_dir, info, raw[1] if raw else time.time()), info)

    def _take_over(self, stale_data: bytes) -> bool:
        """Replace the stale lock whose bytes were `stale_data`; False if another process got there first."""
        aside = self.path.with_name(f"lock.stale.{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            # Another racer moved it first; it may or may not have linked its own lock yet.
            return self._try_create()
        try:
            moved = aside.read_bytes()
        except FileNotFoundError:
            moved = b""
        if moved != stale_data:
            # Between our read and our rename someone replaced the stale lock with a fresh one, and we
            # just moved *that* aside: put it back (link fails only if yet another lock appeared).
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return False
        try:
            created = self._try_create()
        finally:
            aside.unlink(missing_ok=True)
        return created

    def _mark_held(self) -> None:
        self.held = True
        self.lost = False

    def _beat(self) -> bool:
        """Refresh the heartbeat; False (and `lost` set) if the lock is no longer ours."""
        try:
            raw = _read_raw(self.path)
        except OSError:
            # A transient read failure (e.g. on a network file system) is no evidence of a takeover.
            return True
        if raw is None or not self._is_ours(_parse(raw[0])):
            self.lost = True
            self.held = False
            return False
        # Between the check above and this rename another process could in principle take over and be
        # overwritten; that needs our heartbeat to be `stale_after` old already, i.e. we were frozen.
        try:
            atomic_write_json(self.path, self._payload())
        except OSError:
            # A transient file-system hiccup; the next beat retries, and only many misses make us stale.
            pass
        return True

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            if not self._beat():
                return

    def start_heartbeat(self) -> None:
        """Refresh the heartbeat every `heartbeat_interval` seconds from a daemon thread."""
        if not self.held:
            raise RuntimeError("start_heartbeat() needs the lock; call acquire() first")
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._heartbeat_loop, name=f"runlock-{self.run_dir.name}", daemon=True
        )
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still ours; when the job is being
        requeued (`mark_requeued`), turn it back into a claim of the job instead, so that nobody
        starts the run while the requeued job waits in the queue."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.held:
            raw = _read_raw(self.path)
            if raw is not None and self._is_ours(_parse(raw[0])):
                job_id = os.environ.get("SLURM_JOB_ID")
                if _REQUEUED.is_set() and job_id:
                    atomic_write_json(self.path, _claim_payload(self.token, slurm_job_id=job_id))
                else:
                    self.path.unlink(missing_ok=True)
                    fsync_directory(self.run_dir)
        self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        try:
            self.start_heartbeat()
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


_REQUEUED = threading.Event()


def mark_requeued() -> None:
    """Called from a job's checkpoint() on preemption or timeout: locks released from now on are
    handed back to the job as claims (see `RunLock.release`)."""
    _REQUEUED.set()


def requeue_requested() -> bool:
    """Whether this process's job is being checkpointed for a requeue (`mark_requeued` was called)."""
    return _REQUEUED.is_set()


def _claim_payload(token: str, *, slurm_job_id: str | None = None, local_job_pid: int | None = None,
                   cluster: str = "") -> dict[str, Any]:
    now = time.time()
    return {"token": token, "pid": None, "host": socket.gethostname(), "cluster": cluster,
            "slurm_job_id": slurm_job_id, "local_job_pid": local_job_pid, "created": now, "heartbeat": now}


def claim(run_dir: Path, token: str, *, cluster: str) -> bool:
    """Claim a run directory for a job about to be submitted: True if we got it (creating the
    directory), False if a live process or job holds it. A claim without a job yet is judged by
    its heartbeat; `attach_job` names the job once it is submitted."""
    lock = RunLock(run_dir, token=token, claim_for=cluster)
    try:
        lock.acquire()
    except LockHeldError:
        return False
    return True


def attach_job(run_dir: Path, token: str, *, cluster: str, job_id: str) -> bool:
    """Record the submitted job in our claim (False if the claim is no longer ours)."""
    info = read_lock(run_dir)
    if info is None or info.get("token") != token:
        return False
    if cluster == "slurm":
        payload = _claim_payload(token, slurm_job_id=job_id, cluster=cluster)
    elif cluster == "local" and job_id.isdigit():
        payload = _claim_payload(token, local_job_pid=int(job_id), cluster=cluster)
    else:
        payload = _claim_payload(token, cluster=cluster)
    payload["created"] = info.get("created", payload["created"])
    atomic_write_json(_lock_path(run_dir), payload)
    return True


def release_claim(run_dir: Path, token: str | None = None) -> bool:
    """Remove the claim (ours when `token` is given, any claim without a live process otherwise)."""
    info = read_lock(run_dir)
    if info is None or (token is not None and info.get("token") != token):
        return False
    _lock_path(run_dir).unlink(missing_ok=True)
    return True


__all__ = [
    "attach_job",
    "claim",
    "mark_requeued",
    "requeue_requested",
    "release_claim",
    "HEARTBEAT_INTERVAL_S",
    "LOCK_FILE",
    "STALE_AFTER_S",
    "TOKEN_ENV",
    "LockHeldError",
    "RunLock",
    "lock_is_live",
    "read_lock",
]
