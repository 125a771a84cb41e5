"""Reading a run directory's lock without taking it: is someone training here, and if not, why not.

The lock itself (taking, heartbeat, takeover, claims) is `conadv_repro.engine.lock`, whose docstring has the
rules; this module holds what `status`, the launcher's states and the tables need to read one, so that
they can do so without importing the engine (or torch).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

LOCK_FILE = "lock.json"
HEARTBEAT_INTERVAL_S = 10.0
STALE_AFTER_S = 120.0
TOKEN_ENV = "CONADV_LOCK_TOKEN"


def lock_path(run_dir: Path) -> Path:
    return Path(run_dir) / LOCK_FILE


def read_raw(path: Path) -> tuple[bytes, float] | None:
    """The lock file's bytes and mtime, or None if there is no lock file."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
            mtime = os.fstat(handle.fileno()).st_mtime
    except FileNotFoundError:
        return None
    return data, mtime


def parse_lock(data: bytes) -> dict[str, Any] | None:
    try:
        info = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


def read_lock(run_dir: Path) -> dict[str, Any] | None:
    """The lock's content, or None if there is no lock or it cannot be parsed."""
    raw = read_raw(lock_path(run_dir))
    return None if raw is None else parse_lock(raw[0])


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host and has not ended (a zombie has: it waits to be reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        # PermissionError: it exists but belongs to another user; anything else: assume alive.
        return True
    # A killed job whose parent has not reaped it yet (a launcher gone, an init that reaps late) still
    # answers signal 0; counted alive, its claim would hold the runs it never trains.
    return process_state(pid) != "Z"


def process_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat (R, S, D, Z, ...); None where there is no /proc or no such pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2, in parentheses) may hold spaces and ')': the state follows the last ')'.
    fields = stat.rpartition(")")[2].split()
    return fields[0] if fields else None


def slurm_job_gone(job_id: str) -> bool:
    """True only when Slurm positively says it does not know the job; any doubt counts as alive."""
    squeue = shutil.which("squeue")
    if squeue is None:
        return False
    try:
        result = subprocess.run(
            [squeue, "--noheader", "--jobs", str(job_id), "--format", "%T"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    if result.returncode == 0:
        return result.stdout.strip() == ""
    return "invalid job id" in result.stderr.lower()


def as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def stale_reason(info: dict[str, Any] | None, mtime: float, stale_after: float,
                  job_gone: Any = None) -> str | None:
    """Why the lock described by `info` (None: unreadable) may be taken over, or None if it is live.

    `job_gone(job_id) -> bool` answers whether Slurm no longer knows a job (default: ask squeue)."""
    job_gone = job_gone or slurm_job_gone
    now = time.time()
    if info is None:
        age = now - mtime
        return f"unreadable lock file untouched for {age:.0f}s" if age > stale_after else None
    same_host = info.get("host") == socket.gethostname()
    job_id = info.get("slurm_job_id")
    own_job = job_id and str(job_id) == os.environ.get("SLURM_JOB_ID")
    pid = info.get("pid")
    if pid is None and (job_id or info.get("local_job_pid")):
        # A launcher's claim for a submitted job: live as long as the job is, however long it queues.
        local = info.get("local_job_pid")
        if isinstance(local, int) and same_host:
            return None if pid_alive(local) else f"local job (pid {local}) is gone"
        if job_id and not own_job:
            return f"Slurm job {job_id} is gone" if job_gone(str(job_id)) else None
        return None
    heartbeat = as_float(info.get("heartbeat"))
    if heartbeat is None:
        # A lock with no usable heartbeat falls back to the file's age, like an unreadable one.
        heartbeat = mtime
    if now - heartbeat > stale_after:
        return f"heartbeat {now - heartbeat:.0f}s old"
    if isinstance(pid, int) and same_host:
        if pid_alive(pid):
            return None
        if job_id and not own_job and not job_gone(str(job_id)):
            return None  # its Slurm job is requeued: it will come back for the directory
        return f"pid {pid} on this host is gone"
    if job_id and not own_job and job_gone(str(job_id)):
        return f"Slurm job {job_id} is gone"
    return None


def lock_is_live(run_dir: Path, *, stale_after: float = STALE_AFTER_S) -> bool:
    """Whether someone holds the run directory's lock and it is not stale."""
    raw = read_raw(lock_path(run_dir))
    if raw is None:
        return False
    return stale_reason(parse_lock(raw[0]), raw[1], stale_after) is None
