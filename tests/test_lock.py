"""The run lock lets exactly one live process own a run directory, and recovers from dead owners."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from conadv_repro.engine.lock import (
    LOCK_FILE,
    TOKEN_ENV,
    LockHeldError,
    RunLock,
    lock_is_live,
    read_lock,
)
from conadv_repro.errors import UserError
from conadv_repro.lock_state import pid_alive, process_state


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A token or job id inherited from the environment would change adoption and staleness decisions.
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)


def _write_lock(run_dir: Path, **fields: object) -> None:
    now = time.time()
    info = {
        "token": "someone-else",
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "slurm_job_id": None,
        "created": now,
        "heartbeat": now,
    }
    info.update(fields)
    (run_dir / LOCK_FILE).write_text(json.dumps(info))


def _no_leftovers(run_dir: Path) -> bool:
    return not [p for p in run_dir.iterdir() if p.name.startswith(("lock.stale.", ".lock.json."))]


def test_acquire_and_release(tmp_path: Path) -> None:
    lock = RunLock(tmp_path)
    lock.acquire()
    info = read_lock(tmp_path)
    assert info is not None
    assert info["token"] == lock.token
    assert info["pid"] == os.getpid()
    assert info["host"] == socket.gethostname()
    assert info["slurm_job_id"] is None
    assert lock_is_live(tmp_path)
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()
    assert read_lock(tmp_path) is None
    assert not lock_is_live(tmp_path)
    assert _no_leftovers(tmp_path)


def test_context_manager(tmp_path: Path) -> None:
    with RunLock(tmp_path, heartbeat_interval=0.05) as lock:
        assert lock.held
        assert (tmp_path / LOCK_FILE).exists()
    assert not (tmp_path / LOCK_FILE).exists()


def test_second_holder_is_refused(tmp_path: Path) -> None:
    first = RunLock(tmp_path)
    first.acquire()
    try:
        with pytest.raises(LockHeldError, match=rf"in use by pid {os.getpid()} on host") as excinfo:
            RunLock(tmp_path).acquire()
        message = str(excinfo.value)
        assert "\n" not in message
        assert str(tmp_path) in message
        assert read_lock(tmp_path)["token"] == first.token  # type: ignore[index]
    finally:
        first.release()


def test_lock_held_error_is_user_error() -> None:
    assert issubclass(LockHeldError, UserError)


def test_same_token_adopts(tmp_path: Path) -> None:
    _write_lock(tmp_path, token="launcher-token", pid=None, host="login-node")
    lock = RunLock(tmp_path, token="launcher-token")
    lock.acquire()
    info = read_lock(tmp_path)
    assert info is not None
    assert info["token"] == "launcher-token"
    assert info["pid"] == os.getpid()
    assert info["host"] == socket.gethostname()
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()


def test_token_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_lock(tmp_path, token="handed-over")
    monkeypatch.setenv(TOKEN_ENV, "handed-over")
    lock = RunLock(tmp_path)
    assert lock.token == "handed-over"
    lock.acquire()
    lock.release()


def test_random_tokens_differ(tmp_path: Path) -> None:
    assert RunLock(tmp_path).token != RunLock(tmp_path).token


def test_stale_heartbeat_is_taken_over(tmp_path: Path) -> None:
    _write_lock(tmp_path, host="other-host", pid=1, heartbeat=time.time() - 1000)
    assert not lock_is_live(tmp_path)
    lock = RunLock(tmp_path)
    lock.acquire()
    assert read_lock(tmp_path)["token"] == lock.token  # type: ignore[index]
    assert _no_leftovers(tmp_path)
    lock.release()


def test_fresh_heartbeat_on_other_host_is_live(tmp_path: Path) -> None:
    _write_lock(tmp_path, host="other-host", pid=1)
    assert lock_is_live(tmp_path)
    with pytest.raises(LockHeldError, match="on host other-host"):
        RunLock(tmp_path).acquire()


def test_dead_pid_on_this_host_is_taken_over(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    _write_lock(tmp_path, pid=child.pid)
    assert not lock_is_live(tmp_path)
    lock = RunLock(tmp_path)
    lock.acquire()
    assert read_lock(tmp_path)["pid"] == os.getpid()  # type: ignore[index]
    lock.release()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_process_that_ended_but_is_not_reaped_is_dead(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded, fork() may deadlock": it only exits
        pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        deadline = time.time() + 10
        while process_state(pid) != "Z" and time.time() < deadline:
            time.sleep(0.01)
        assert process_state(pid) == "Z"
        os.kill(pid, 0)  # ended, and not reaped: it still answers signal 0
        assert not pid_alive(pid)
        _write_lock(tmp_path, pid=pid)
        assert not lock_is_live(tmp_path)
    finally:
        os.waitpid(pid, 0)
    assert process_state(pid) is None and not pid_alive(pid)
    assert pid_alive(os.getpid()) and process_state(os.getpid()) in ("R", "S")


def test_corrupt_lock_file(tmp_path: Path) -> None:
    path = tmp_path / LOCK_FILE
    path.write_text("{not json")
    # Young: someone may be mid-way through an unusual write, so it still counts as held.
    with pytest.raises(LockHeldError, match="unreadable lock file"):
        RunLock(tmp_path).acquire()
    old = time.time() - 1000
    os.utime(path, (old, old))
    lock = RunLock(tmp_path)
    lock.acquire()
    assert read_lock(tmp_path)["token"] == lock.token  # type: ignore[index]
    lock.release()


def test_heartbeat_refreshes(tmp_path: Path) -> None:
    with RunLock(tmp_path, heartbeat_interval=0.05) as lock:
        first = read_lock(tmp_path)["heartbeat"]  # type: ignore[index]
        deadline = time.time() + 2.0
        while time.time() < deadline:
            time.sleep(0.05)
            if read_lock(tmp_path)["heartbeat"] > first:  # type: ignore[index]
                break
        assert read_lock(tmp_path)["heartbeat"] > first  # type: ignore[index]
        assert not lock.lost


def test_heartbeat_notices_takeover(tmp_path: Path) -> None:
    lock = RunLock(tmp_path, heartbeat_interval=0.05)
    lock.acquire()
    lock.start_heartbeat()
    deadline = time.time() + 2.0
    while not lock.lost and time.time() < deadline:
        # Rewritten each round: a beat that had already checked ownership may overwrite it once.
        _write_lock(tmp_path, token="usurper")
        time.sleep(0.02)
    assert lock.lost
    # Neither the heartbeat nor release may overwrite or remove the new owner's lock.
    time.sleep(0.15)
    assert read_lock(tmp_path)["token"] == "usurper"  # type: ignore[index]
    lock.release()
    assert read_lock(tmp_path)["token"] == "usurper"  # type: ignore[index]


def test_lock_held_by_another_process(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from conadv_repro.engine.lock import RunLock\n"
        "lock = RunLock(Path(sys.argv[1]), heartbeat_interval=0.1)\n"
        "lock.acquire()\n"
        "lock.start_heartbeat()\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in (TOKEN_ENV, "SLURM_JOB_ID")}
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        assert lock_is_live(tmp_path)
        with pytest.raises(LockHeldError, match=rf"pid {child.pid} "):
            RunLock(tmp_path).acquire()
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert not lock_is_live(tmp_path)
    lock = RunLock(tmp_path)
    lock.acquire()
    assert read_lock(tmp_path)["pid"] == os.getpid()  # type: ignore[index]
    lock.release()
    assert _no_leftovers(tmp_path)
