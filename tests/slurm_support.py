"""Helpers for tests that need a real Slurm cluster (the local one from `make slurm-up`).

`slurm_available()` says whether one answers; the `slurm_partition` fixture (in conftest.py) skips
the test when none does, or fails it when CONADV_REQUIRE_SLURM=1 (CI starts the cluster and sets it).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

USABLE_NODE_STATES = ("idle", "mixed", "allocated")
# sacct states after which a job will not change any more (the first word of State).
_NOT_FINAL = ("UNKNOWN", "PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "SUSPENDED")


def default_partition() -> str:
    return os.environ.get("LOCAL_SLURM_PARTITION", "debug")


def _run(cmd: list[str], timeout: float = 10) -> tuple[bool, str]:
    """Run a Slurm client command; (ok, stdout) or (False, one-line reason)."""
    if shutil.which(cmd[0]) is None:
        return False, f"`{cmd[0]}` not found"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"`{' '.join(cmd)}` did not answer within {timeout:.0f} s"
    if proc.returncode != 0:
        err = " ".join((proc.stderr or proc.stdout).split())[:200]
        return False, f"`{' '.join(cmd)}` exited {proc.returncode}: {err}"
    return True, proc.stdout


def _controller_refuses() -> str | None:
    """A reason if slurm.conf names controllers and every one refuses TCP connections (fast: the
    client commands retry for ~10 s before giving up); None if unsure, so sinfo decides."""
    try:
        conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")).read_text()
    except OSError:
        return None
    hosts = re.findall(r"^\s*SlurmctldHost\s*=\s*([^\s#]+)", conf, re.M | re.I)
    port_m = re.search(r"^\s*SlurmctldPort\s*=\s*(\d+)\s*$", conf, re.M | re.I)
    port = int(port_m.group(1)) if port_m else 6817
    if not hosts:
        return None
    addrs = []
    for host in hosts:  # "name" or "name(address)"
        m = re.fullmatch(r"([^(]+)(?:\(([^)]+)\))?", host)
        addrs.append((m.group(2) or m.group(1)) if m else host)
    for addr in addrs:
        try:
            socket.create_connection((addr, port), timeout=2).close()
            return None
        except ConnectionRefusedError:
            continue
        except OSError:
            return None
    return f"slurmctld not running (connection refused at {', '.join(f'{a}:{port}' for a in addrs)})"


def slurm_available(partition: str | None = None) -> tuple[bool, str]:
    """(True, summary) if `sinfo` answers with a node idle/mixed/allocated (in `partition` when
    given) and `sacct` answers; else (False, a one-line reason)."""
    if shutil.which("sinfo") and (refused := _controller_refuses()):
        return False, refused
    cmd = ["sinfo", "-h", "-o", "%T"] + (["-p", partition] if partition else [])
    ok, out = _run(cmd)
    if not ok:
        return False, out
    # %T appends a flag to some states ("idle*" = not responding, "idle~" = powered down): not usable.
    states = [s.strip() for s in out.split() if s.strip()]
    usable = [s for s in states if s in USABLE_NODE_STATES]
    where = f" in partition '{partition}'" if partition else ""
    if not usable:
        return False, f"no idle/mixed/allocated node{where} (node states: {', '.join(states) or 'none'})"
    ok, out = _run(["sacct", "-n", "-X", "-S", "now"])
    if not ok:
        return False, f"accounting does not answer: {out}"
    return True, f"{len(usable)} usable node(s){where}, sacct answers"


def require_slurm_partition() -> str:
    """Body of the `slurm_partition` fixture: the partition name, else skip (or fail in CI)."""
    partition = default_partition()
    ok, reason = slurm_available(partition)
    if ok:
        return partition
    if os.environ.get("CONADV_REQUIRE_SLURM") == "1":
        pytest.fail(f"CONADV_REQUIRE_SLURM=1 but no usable local Slurm cluster ({reason})", pytrace=False)
    pytest.skip(f"no local Slurm cluster ({reason}); start one with `make slurm-up` (root, Debian)")


def sacct_state(job, want: str | None = None, timeout: float = 60) -> str:
    """Poll sacct (a forced refresh) until the job's state (first word) is `want`, or any final
    state when `want` is None; returns the last state seen once `timeout` seconds have passed."""
    t0 = time.time()
    while True:
        st = (job.get_info(mode="force").get("State") or "UNKNOWN").split()[0]
        if (want and st == want) or (not want and st not in _NOT_FINAL):
            return st
        if time.time() - t0 > timeout:
            return st
        time.sleep(0.5)


def wait_done(job, timeout: float = 120) -> None:
    """Wait until submitit sees the job done; cancel it and fail the test after `timeout` s
    (so a stuck job never hangs the suite the way `job.result()` would)."""
    t0 = time.time()
    while not job.done(force_check=True):
        if time.time() - t0 > timeout:
            job.cancel(check=False)
            pytest.fail(f"Slurm job {job.job_id} not done after {timeout:.0f} s (state {job.state})")
        time.sleep(0.5)
