"""The state of a run, from its directory alone (no torch), decided in this order:

1. the record's `finished`, `failed` or `diverged`; a finished run that a launched experiment declares a
   landscape measurement for (conadv_repro/landscape_state.py) and whose landscape.json lacks its entry is
   `unmeasured`, or `queued`/`running` while a live claim (a job that measures it) holds it;
2. `running` (a live lock held by a training process) or `queued` (a live claim: submitted, not
   started);
3. `unfinished` (a run directory and no live lock: its process died or was interrupted, with or without
   a checkpoint);
4. `missing`.

Liveness follows conadv_repro/engine/lock.py (read through conadv_repro/lock_state.py); Slurm is asked once per call for every live job
(`squeue`), not once per run.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conadv_repro.atomic import read_json_dict
from conadv_repro.landscape_state import is_measured
from conadv_repro.lock_state import LOCK_FILE, STALE_AFTER_S, parse_lock, read_raw, stale_reason
from conadv_repro.runfiles import FINAL_STATES, LAUNCH_FILE, RECORD_FILE

STATES = ("finished", "unmeasured", "failed", "diverged", "running", "queued", "unfinished", "missing")


@dataclass
class RunState:
    state: str
    record: dict[str, Any] | None
    lock: dict[str, Any] | None
    launch: dict[str, Any] | None


class SlurmJobs:
    """The set of job ids Slurm knows now, asked once (lazily); None when Slurm cannot be asked."""

    def __init__(self) -> None:
        self._ids: set[str] | None = None
        self._asked = False

    def ids(self) -> set[str] | None:
        if not self._asked:
            self._asked = True
            squeue = shutil.which("squeue")
            if squeue is not None:
                try:
                    out = subprocess.run([squeue, "--noheader", "--array", "--format", "%i %A"],
                                         capture_output=True, text=True, timeout=20, check=False)
                except (OSError, subprocess.SubprocessError):
                    out = None
                if out is not None and out.returncode == 0:
                    self._ids = set(out.stdout.split())  # both forms: 123_4 and the raw id
        return self._ids

    def gone(self, job_id: str) -> bool:
        ids = self.ids()
        return ids is not None and job_id not in ids


def run_state(run_dir: Path, jobs: SlurmJobs | None = None, landscape: dict[str, Any] | None = None,
              data: str = "") -> RunState:
    """`landscape`: the measurement declared for the run (landscape_state.declared_for; None: none), on
    dataset `data` (its default sample size)."""
    record = read_json_dict(run_dir / RECORD_FILE)
    launch = read_json_dict(run_dir / LAUNCH_FILE)
    unmeasured = False
    if record is not None and record.get("status") in FINAL_STATES:
        unmeasured = record["status"] == "finished" and landscape is not None and \
            not is_measured(run_dir, landscape, data)
        if not unmeasured:
            return RunState(record["status"], record, None, launch)
    raw = read_raw(run_dir / LOCK_FILE)
    info = parse_lock(raw[0]) if raw else None
    if raw is not None:
        gone: Callable[[str], bool] = (jobs or SlurmJobs()).gone
        if stale_reason(info, raw[1], STALE_AFTER_S, job_gone=gone) is None:
            running = info is not None and info.get("pid") is not None
            return RunState("running" if running else "queued", record, info, launch)
    if unmeasured:  # no live claim: nothing measures it now
        return RunState("unmeasured", record, info, launch)
    if run_dir.exists():
        return RunState("unfinished", record, info, launch)
    return RunState("missing", None, None, None)


def summary_line(states: list[str]) -> str:
    """`28 runs: 20 finished, 3 unfinished, 5 missing` (states in the order above, zeros left out)."""
    counts = {s: states.count(s) for s in STATES if states.count(s)}
    parts = ", ".join(f"{n} {s}" for s, n in counts.items())
    return f"{len(states)} run{'s' if len(states) != 1 else ''}: {parts or 'none'}"
