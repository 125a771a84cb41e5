"""The launcher on this machine (local and debug executors): states, claims, resume, retry, cancel."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conadv_repro.engine.run import run_training
from conadv_repro.engine.trainer import Trainer
from conadv_repro.launch import cli
from conadv_repro.launch.plan import apply_filters, expand
from conadv_repro.lock_state import process_state
from conadv_repro.registry import load_experiments
from tests.helpers import call_main, run_cli

LAUNCH = ["-m", "conadv_repro.launch"]


# The launcher's tests are about launching: 4 steps a run instead of the smoke scale's 40.
SHORT = ["--set", "steps=4"]


def plan(runs_dir: Path, *only: str, names=("table1",), sets: dict[str, str] | None = None):
    return apply_filters(expand(load_experiments(list(names)), scale="smoke", runs_dir=runs_dir, sets=sets or {}),
                         only)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def quiet(_msg: str) -> None:
    pass


def test_list_names_every_experiment_with_its_run_counts(tmp_path, cli_env):
    out = run_cli([*LAUNCH, "--list"], cli_env, tmp_path)
    assert out.returncode == 0, out.stderr
    for name in ("table1", "table2", "table3", "table4", "table5", "figure2", "figure4", "all"):
        assert f"  {name}" in out.stdout
    assert "smoke 28" in out.stdout and "paper 138" in out.stdout


def test_dry_run_shows_each_state_and_a_summary_last(tmp_path, cli_env):
    runs = tmp_path / "runs"
    grid = plan(runs)
    me = {"host": socket.gethostname(), "heartbeat": time.time(), "token": "t"}
    write_json(grid[0].run_dir / "record.json", {"status": "finished", "final": {"test_top1": 50.0}})
    write_json(grid[1].run_dir / "record.json", {"status": "failed", "error": "boom"})
    write_json(grid[2].run_dir / "record.json", {"status": "diverged"})
    write_json(grid[3].run_dir / "lock.json", {**me, "pid": os.getpid()})
    write_json(grid[4].run_dir / "lock.json", {**me, "pid": None, "local_job_pid": os.getpid()})
    grid[5].run_dir.mkdir(parents=True)
    write_json(grid[6].run_dir / "lock.json", {**me, "pid": 2 ** 22 + 7})  # a dead process: stale
    out = run_cli([*LAUNCH, "table1", "--dry-run", "--runs-dir", str(runs), "--cluster", "local"], cli_env, tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "28 runs: 1 finished, 1 failed, 1 diverged, 1 running, 1 queued, 2 unfinished, 21 missing"
    assert "a launch would submit 23 runs in 2 jobs to local" in out.stdout
    assert lines[0].startswith("finished") and "top1=50.00" in lines[0] and grid[0].run_id in lines[0]
    assert "conadv" in out.stdout and "eps=8" in out.stdout and "AA" in out.stdout
    retry = run_cli([*LAUNCH, "table1", "--dry-run", "--retry-failed", "--runs-dir", str(runs), "--cluster", "local"],
                    cli_env, tmp_path)
    assert "would submit 24 runs" in retry.stdout


def test_a_local_launch_trains_what_is_missing_and_then_nothing(tmp_path, cli_env):
    runs = tmp_path / "runs"
    args = [*LAUNCH, "table1", "--only", "paper_batch=32k", *SHORT, "--runs-dir", str(runs), "--cluster", "local"]
    first = run_cli(args, cli_env, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.strip().splitlines()[-1] == "4 runs: 4 finished"
    assert first.stdout.count("top1=") == 4
    for run in plan(runs, "paper_batch=32k", sets={"steps": "4"}):
        record = json.loads((run.run_dir / "record.json").read_text())
        assert record["status"] == "finished" and record["attempts"] == 1
        launch = json.loads((run.run_dir / "launch.json").read_text())
        assert launch["submissions"][0]["cluster"] == "local"
        assert not (run.run_dir / "lock.json").exists()
    assert not (runs / "smoke" / "_jobs" / "%j").exists()  # submitit's folder template, left empty
    second = run_cli(args, cli_env, tmp_path)
    assert "nothing to submit" in second.stdout and second.stdout.strip().endswith("4 runs: 4 finished")


def test_unfinished_runs_resume_and_failed_ones_wait_for_retry(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    stopped, failed = plan(runs, "method=vanilla", "paper_batch=64k,96k", "autoaugment=false")
    original = Trainer.train_step

    def stop_at_20(self, step, micro_batches):
        if step == 20:
            raise KeyboardInterrupt  # like Ctrl-C: the run stays resumable
        return original(self, step, micro_batches)

    def crash_at_5(self, step, micro_batches):
        if step == 5:
            raise RuntimeError("simulated crash")
        return original(self, step, micro_batches)

    monkeypatch.setattr(Trainer, "train_step", stop_at_20)
    with pytest.raises(KeyboardInterrupt):
        run_training(stopped.config, stopped.run_dir, log=quiet)
    monkeypatch.setattr(Trainer, "train_step", crash_at_5)
    with pytest.raises(RuntimeError):
        run_training(failed.config, failed.run_dir, log=quiet)
    monkeypatch.setattr(Trainer, "train_step", original)
    monkeypatch.setattr("pdb.post_mortem", lambda *a, **k: None)

    base = ["table1", "--only", "method=vanilla", "--only", "paper_batch=64k,96k", "--only", "autoaugment=false",
            "--runs-dir", str(runs), "--cluster", "debug"]
    assert cli.main(base) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == "2 runs: 1 finished, 1 failed"
    resumed = json.loads((stopped.run_dir / "record.json").read_text())
    assert resumed["status"] == "finished" and resumed["attempts"] == 2
    assert cli.main([*base, "--retry-failed"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "2 runs: 2 finished"
    assert json.loads((failed.run_dir / "record.json").read_text())["attempts"] == 2


def test_two_launches_at_once_split_the_work(tmp_path, cli_env):
    runs = tmp_path / "runs"
    # One job per launch at most: the claims split the runs, not the job grouping.
    args = [sys.executable, *LAUNCH, "table1", "--only", "paper_batch=64k,96k", *SHORT, "--runs-dir", str(runs),
            "--cluster", "local", "--runs-per-job", "8"]
    procs = [subprocess.Popen(args, env=cli_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=400) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    grid = plan(runs, "paper_batch=64k,96k", sets={"steps": "4"})
    assert len(grid) == 8
    for run in grid:
        record = json.loads((run.run_dir / "record.json").read_text())
        assert record["status"] == "finished" and record["attempts"] == 1, run.run_dir
        assert len(json.loads((run.run_dir / "launch.json").read_text())["submissions"]) == 1
    submitted = [int(line.split()[1]) for out, _ in outs for line in out.splitlines() if line.startswith("submitted")]
    assert sum(submitted) == 8


def launch_status(args: list[str], capsys) -> str:
    """`launch status ARGS` in this process: polled every second, a fresh process each time would cost more."""
    return call_main(cli.main, ["status", *args], capsys)[1]


def test_cancel_stops_running_jobs_and_releases_their_claims(tmp_path, cli_env, capsys):
    runs = tmp_path / "runs"
    args = ["table1", "--only", "method=vanilla", "--only", "paper_batch=32k", "--only", "autoaugment=false",
            "--set", "steps=100000", "--runs-dir", str(runs), "--cluster", "local"]
    out = run_cli([*LAUNCH, *args, "--no-wait"], cli_env, tmp_path)
    assert out.returncode == 0 and "submitted 1 run in 1 job to local" in out.stdout, out.stdout + out.stderr
    assert f"follow them with: python -m conadv_repro.launch status table1 --scale smoke --runs-dir {runs}" in out.stdout
    deadline = time.time() + 120
    status = ""
    while time.time() < deadline:
        status = launch_status(args, capsys)
        if status.startswith("running"):
            break
        time.sleep(1)
    assert status.startswith("running"), status
    assert "log: " in status
    run_dir = plan(runs, "method=vanilla", "paper_batch=32k", "autoaugment=false")[0].run_dir
    lock = json.loads((run_dir.parent / next(p.name for p in run_dir.parent.iterdir()
                                             if (p / "lock.json").exists()) / "lock.json").read_text())
    cancelled = run_cli([*LAUNCH, "cancel", *args], cli_env, tmp_path)
    assert "cancelled 1 run " in cancelled.stdout
    for pid in (lock["pid"], lock["local_job_pid"]):
        assert wait_gone(pid), f"process {pid} still runs after cancel"
    after = launch_status(args, capsys)
    assert after.strip().splitlines()[-1] == "1 run: 1 unfinished"


PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture
def reaps_late():
    """This process adopts the orphans it starts and reaps them only when told: an init that reaps late,
    as some containers' does, made deterministic (elsewhere a killed job is a zombie for a moment or not)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if not sys.platform.startswith("linux") or libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip("needs Linux's child subreaper")
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        for pid in orphans():  # adopted: reaped here, or they would stay zombies until pytest ends
            if process_state(pid) == "Z":
                os.waitpid(pid, os.WNOHANG)


def orphans() -> list[int]:
    """This process's children that are not subprocess.Popen's (which reaps its own)."""
    mine = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == os.getpid():
            mine.append(int(stat.parent.name))
    return mine


def test_a_killed_local_job_relaunched_at_once_resumes(tmp_path, cli_env, reaps_late):
    runs = tmp_path / "runs"
    args = [*LAUNCH, "table1", "--only", "method=vanilla", "--only", "paper_batch=32k", "--only", "autoaugment=false",
            "--set", "steps=6", "--set", "runtime.checkpoint_every=2", "--runs-dir", str(runs), "--cluster", "local"]
    out = run_cli([*args, "--no-wait"], cli_env, tmp_path)
    assert "submitted 1 run in 1 job to local" in out.stdout, out.stdout + out.stderr
    run_dir = plan(runs, "method=vanilla", "paper_batch=32k", "autoaugment=false",
                   sets={"steps": "6", "runtime.checkpoint_every": "2"})[0].run_dir
    deadline = time.time() + 120
    while not list((run_dir / "checkpoints").glob("step-*.pt")) and time.time() < deadline:
        time.sleep(0.05)
    lock = json.loads((run_dir / "lock.json").read_text())
    assert isinstance(lock.get("pid"), int) and isinstance(lock.get("local_job_pid"), int), lock
    for pid in (lock["local_job_pid"], lock["pid"]):  # what `launch cancel` kills, but the claim stays
        os.kill(pid, signal.SIGKILL)
    for pid in (lock["local_job_pid"], lock["pid"]):
        assert wait_gone(pid) and process_state(pid) == "Z", pid  # dead, not yet reaped
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "running" and record["attempts"] == 1
    again = run_cli(args, cli_env, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.strip().splitlines()[-1] == "1 run: 1 finished", again.stdout
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "finished" and record["attempts"] == 2
    assert record["layouts"][-1]["from_step"] >= 2  # resumed from the killed attempt's checkpoint


def wait_gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            return True
        if state == "Z":
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("args, fragment", [
    (["table9"], "unknown experiment 'table9'; allowed: table1, table2, table3, table4, table5, figure2, figure4, "
                 "flatness, sharpness, staleness, all"),
    (["table1", "--only", "colour=red"], "--only key 'colour' is unknown"),
    (["table1", "--only", "method=sgd"], "--only method=sgd matches no run"),
    (["table1", "--profile", "nosuch"], "unknown profile 'nosuch'; allowed: "),
    (["table1", "--profile", "bad"], "unknown field 'gpus'"),
    (["table1", "--scale", "paper"], "--scale paper needs the ImageNet folder: add --data-root DIR"),
    (["table1", "--scale", "huge"], "--scale 'huge' is not allowed; allowed: smoke, proxy, cifar10, paper"),
    (["table1", "--cluster", "slurm"], "--cluster slurm but no Slurm controller answers here"),
    (["table1", "--cluster", "moon"], "--cluster 'moon' is not allowed"),
    (["table1", "--set", "optim.nosuch=1"], "unknown config key 'optim.nosuch'"),
    (["table1", "--set", "method=conadv"], "--set method=... is not allowed"),
    (["table1", "--scale", "paper", "--data-root", "/nonexistent"], "--data-root /nonexistent holds no ImageNet"),
    (["table1", "--dry-run", "--cluster", "moon"], "--cluster 'moon' is not allowed"),
    (["table1", "--dry-run", "--profile", "nosuch"], "unknown profile 'nosuch'"),
    (["table1", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_input_is_one_line_and_submits_nothing(tmp_path, cli_env, args, fragment):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "bad.toml").write_text('partition = "x"\ngpus = 2\n')
    (profiles / "local.toml").write_text('partition = "debug"\n')
    env = {**cli_env, "CONADV_PROFILES": str(profiles)}
    if "slurm" in args:
        env["PATH"] = str(tmp_path)  # no sbatch here
    out = run_cli([*LAUNCH, *args, "--runs-dir", str(tmp_path / "runs")], env, tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], out.stderr
    assert not (tmp_path / "runs").exists()


def test_cancelling_a_queued_run_of_a_shared_job_leaves_the_job_running(tmp_path, cli_env, capsys):
    runs = tmp_path / "runs"
    select = ["--only", "method=vanilla", "--only", "paper_batch=1k,4k", "--only", "autoaugment=false"]
    common = ["table1", *select, "--set", "steps=100000", "--runs-dir", str(runs), "--cluster", "local"]
    out = run_cli([*LAUNCH, *common, "--runs-per-job", "2", "--no-wait"], cli_env, tmp_path)
    assert "submitted 2 runs in 1 job to local" in out.stdout, out.stdout + out.stderr
    status_args = ["table1", *select, "--set", "steps=100000", "--runs-dir", str(runs)]
    deadline = time.time() + 120
    while time.time() < deadline:
        lines = launch_status(status_args, capsys).splitlines()
        if lines and lines[-1] == "2 runs: 1 running, 1 queued":
            break
        time.sleep(1)
    assert lines[-1] == "2 runs: 1 running, 1 queued", lines
    queued_batch = "4k" if lines[0].startswith("running") and " 1k " in lines[0] else "1k"
    cancel = ["cancel", "table1", "--only", "method=vanilla", "--only", f"paper_batch={queued_batch}",
              "--only", "autoaugment=false", "--set", "steps=100000", "--runs-dir", str(runs)]
    first = run_cli([*LAUNCH, *cancel], cli_env, tmp_path)
    assert "1 queued run left the jobs that also hold other runs" in first.stdout, first.stdout
    time.sleep(2)
    lines = launch_status(status_args, capsys).splitlines()
    assert lines[-1] == "2 runs: 1 running, 1 unfinished", lines
    run_cli([*LAUNCH, "cancel", "table1", *select, "--set", "steps=100000", "--runs-dir", str(runs)], cli_env,
            tmp_path)
    time.sleep(2)
    assert launch_status(status_args, capsys).splitlines()[-1] == "2 runs: 2 unfinished"


def test_a_job_asks_for_one_gpu_per_process_of_its_run():
    from conadv_repro.config import config_from_overrides
    from conadv_repro.errors import UserError
    from conadv_repro.launch.profiles import Profile
    from conadv_repro.launch.submit import job_resources
    from conadv_repro.layout import run_processes

    node = Profile(name="big", gpus_per_node=8)
    assert job_resources("slurm", node, 1) == {"tasks_per_node": 1, "nodes": 1, "gpus_per_node": 1}
    assert job_resources("slurm", node, 3) == {"tasks_per_node": 3, "nodes": 1, "gpus_per_node": 3}
    assert job_resources("slurm", node, 16) == {"tasks_per_node": 8, "nodes": 2, "gpus_per_node": 8}
    assert job_resources("slurm", Profile(), 2) == {"tasks_per_node": 2, "nodes": 1}  # a CPU partition
    assert job_resources("local", node, 3, local_gpus=1) == {"tasks_per_node": 3, "gpus_per_node": 1}
    with pytest.raises(UserError, match="does not fill whole nodes of gpus_per_node=8"):
        job_resources("slurm", node, 12)
    with pytest.raises(UserError, match="cannot run in-process"):
        job_resources("debug", node, 2)
    conadv = config_from_overrides(["method=conadv", "conadv.attack_workers=2", "runtime.trainers=4"])
    assert run_processes(conadv) == 6
    assert run_processes(config_from_overrides(["method=vanilla"])) == 1


def test_a_layout_that_cannot_work_is_refused_while_planning(tmp_path, cli_env):
    # Batch 8 in BN groups of 8 cannot split over 2 trainers: one line, exit 2, nothing written.
    runs = tmp_path / "runs"
    for extra in ([], ["--dry-run"], ["--estimate"]):
        layout = ["--set", "runtime.trainers=2"] if extra != ["--dry-run"] else ["--gpus-per-run", "2"]
        out = run_cli(["-m", "conadv_repro.launch", "table1", "--cluster", "local", "--runs-dir", str(runs),
                       "--only", "method=vanilla", "paper_batch=4k", "autoaugment=false", *layout, *extra],
                      cli_env, tmp_path)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "does not split over 2 trainers" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = run_cli(["-m", "conadv_repro.launch", "figure4", "--cluster", "debug", "--runs-dir", str(runs),
                   "--only", "method=conadv", "paper_batch=4k"], cli_env, tmp_path)
    assert out.returncode == 2 and "cannot run in-process" in out.stderr
    assert not runs.exists()


def test_a_timed_run_trains_alone_and_the_others_side_by_side(tmp_path):
    import threading

    from conadv_repro.launch.cli import timed_experiments
    from conadv_repro.launch.submit import machine_lock

    assert timed_experiments() == {"table3", "figure4"}
    lock = str(tmp_path / "_jobs" / "timing.lock")
    spans: dict[str, tuple[float, float]] = {}
    started = threading.Barrier(4)

    def train(name: str, timed: bool, delay: float) -> None:
        started.wait()
        time.sleep(delay)
        with machine_lock(lock, shared=not timed):
            begin = time.monotonic()
            time.sleep(0.4)
            spans[name] = (begin, time.monotonic())

    runs = {"plain1": (False, 0.0), "plain2": (False, 0.0), "timed1": (True, 0.1), "timed2": (True, 0.1)}
    threads = [threading.Thread(target=train, args=(name, *how)) for name, how in runs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    def overlap(a: str, b: str) -> bool:
        return spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]

    assert overlap("plain1", "plain2")  # untimed runs share the machine
    for timed in ("timed1", "timed2"):  # a timed run shares it with nobody
        assert not any(overlap(timed, other) for other in spans if other != timed), spans
    with machine_lock("", shared=False):  # no lock asked for: nothing to wait for
        pass
