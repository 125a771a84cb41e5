"""`python -m conadv_repro.launch status|cancel`: what the selected runs are doing, and stopping them.

The selection is the launch's (experiments, --scale, --only, --set, --runs-dir, ...: launch/cli.py plans
it); these commands read run directories and Slurm's queue, and never submit anything.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
from pathlib import Path

from conadv_repro.landscape_state import read_error
from conadv_repro.launch.cli import describe, plan, plural, states_of
from conadv_repro.launch.plan import PlannedRun
from conadv_repro.launch.states import RunState, SlurmJobs, run_state, summary_line


def log_file(state: RunState) -> Path | None:
    submissions = (state.launch or {}).get("submissions") or []
    if not submissions:
        return None
    last = submissions[-1]
    folder = Path(last.get("log_dir", ""))
    candidates = sorted(folder.glob("*_log.out")) if folder.is_dir() else []
    return candidates[-1] if candidates else folder


def cmd_status(args: argparse.Namespace) -> int:
    runs = plan(args, check_data=False)
    jobs = SlurmJobs()
    states = states_of(runs, args, jobs)
    for run, state in zip(runs, states, strict=True):
        line = describe(run, state)
        lock = state.lock or {}
        job = lock.get("slurm_job_id") or lock.get("local_job_pid")
        if job:
            line += f" job {job}"
        print(line)
        if state.state in ("failed", "running", "queued", "unfinished", "unmeasured"):
            log = log_file(state)
            if log is not None:
                print(f"           log: {log}")
        failed_measurement = read_error(run.run_dir) if state.state == "unmeasured" else None
        if failed_measurement:  # written by the job (launch/submit.py); a relaunch measures again
            print(f"           | landscape measurement failed: {failed_measurement.get('error')}")
        if state.state == "failed":
            tail = (state.record or {}).get("traceback") or (state.record or {}).get("error") or ""
            for text in [t for t in str(tail).strip().splitlines() if t.strip()][-3:]:
                print(f"           | {text}")
    print(summary_line([s.state for s in states]))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel the selected runs. A run queued in a job that also holds runs outside the selection only
    loses its claim (the job skips it); a job is cancelled when it holds nothing else, or when a selected
    run is training in it (the other runs of that job are then stopped too, and said so)."""
    from conadv_repro.engine.lock import read_lock, release_claim

    runs = plan(args, check_data=False)
    jobs = SlurmJobs()
    states = states_of(runs, args, jobs)  # a finished run's job that measures it is live too
    live = [(run, state) for run, state in zip(runs, states, strict=True)
            if state.state in ("queued", "running") and state.lock is not None]
    selected = {run.run_dir for run, _ in live}
    by_job: dict[str, list[tuple[PlannedRun, RunState]]] = {}
    for run, state in live:
        by_job.setdefault(job_key(state.lock), []).append((run, state))
    others = other_runs_of_jobs(args.runs_dir / args.scale, set(by_job), selected, read_lock)
    slurm_ids, pids, released, stopped_too = set(), set(), 0, 0
    for key, members in by_job.items():
        training = any(state.state == "running" for _, state in members)
        if others.get(key) and not training:
            for run, _ in members:  # the job trains its other runs and skips these
                released += release_claim(run.run_dir)
            continue
        stopped_too += len(others.get(key, []))
        for _, state in members:
            lock = state.lock or {}
            if lock.get("slurm_job_id"):
                slurm_ids.add(str(lock["slurm_job_id"]))
            # A local job: its controller and its training process. SIGKILL, because submitit's jobs ignore
            # SIGTERM (Slurm sends it before a preemption); the runs resume from their last checkpoints.
            for field in ("local_job_pid", "pid"):
                if isinstance(lock.get(field), int) and lock.get("host") == socket.gethostname():
                    pids.add(int(lock[field]))
    if slurm_ids:
        subprocess.run(["scancel", *sorted(slurm_ids)], check=False)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for run, _ in live:
        release_claim(run.run_dir)
    what = ", ".join(sorted(slurm_ids) + [f"pid {p}" for p in sorted(pids)]) or "no job"
    print(f"cancelled {plural(len(live), 'run')} ({what}); their claims are released")
    if released:
        print(f"{plural(released, 'queued run')} left the jobs that also hold other runs; those jobs go on")
    if stopped_too:
        print(f"also stopped: {plural(stopped_too, 'other run')} of the same jobs (the next launch resumes them)")
    return 0


def job_key(lock: dict | None) -> str:
    lock = lock or {}
    return str(lock.get("slurm_job_id") or lock.get("local_job_pid") or lock.get("pid") or "")


def other_runs_of_jobs(scale_dir: Path, keys: set[str], selected: set[Path], read_lock) -> dict[str, list[Path]]:
    """Run directories outside the selection whose live lock or claim names one of the jobs `keys`."""
    found: dict[str, list[Path]] = {}
    if not scale_dir.is_dir():
        return found
    for run_dir in scale_dir.iterdir():
        if run_dir in selected or not (run_dir / "lock.json").exists():
            continue
        key = job_key(read_lock(run_dir))
        if key in keys and run_state(run_dir).state in ("queued", "running"):
            found.setdefault(key, []).append(run_dir)
    return found
