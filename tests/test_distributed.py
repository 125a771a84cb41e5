"""Multi-process training on the CPU with gloo: real processes, no mocks.

(2 trainers + 1 attack worker against one process: tests/test_gpu_check.py, the GPU check's CPU stand-in.)

torchrun starts the local runs, as a user would; the lost-rank test starts the ranks itself with the
environment Slurm tasks get from submitit (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so that
nothing but our own code stands between a killed rank and the survivors' error.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conadv_repro.distributed.attack_link import Transfer, transfer_plan, weight_steps
from conadv_repro.engine.checkpoint import load_latest_checkpoint

SMALL = ["scale=smoke", "runtime.device=cpu", "runtime.wandb=disabled", "runtime.threads=1",
         "runtime.dist_timeout_s=60"]
# Floating-point tolerance against the single-process reference, relative to each tensor's largest
# value: the trainers' gradient all-reduce and the BN statistics' sums add in another order, which
# after a few steps moves the weights by about 1e-6 (measured: 6e-7 after 3 steps).
TOLERANCE = 1e-4


def torchrun(nproc: int, run_dir: Path, overrides: list[str], env: dict[str, str],
             timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
         "-m", "conadv_repro.train", "--run-dir", str(run_dir), *overrides],
        env=env, capture_output=True, text=True, timeout=timeout)


def single(run_dir: Path, overrides: list[str]) -> None:
    """The one-process reference, trained in this process (a fresh one would only add its torch import)."""
    from conadv_repro.config import config_from_overrides
    from conadv_repro.engine.run import run_training

    record = run_training(config_from_overrides(overrides), run_dir, log=lambda _message: None)
    assert record["status"] == "finished", record


def final_model(run_dir: Path) -> dict[str, torch.Tensor]:
    loaded = load_latest_checkpoint(run_dir)
    assert loaded is not None and loaded[1].name == "final.pt", f"no final checkpoint in {run_dir}"
    return loaded[0]["model"]


def assert_close(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> float:
    worst = 0.0
    for name, value in reference.items():
        if value.is_floating_point():
            scale = value.abs().max().item() or 1.0
            worst = max(worst, (value - other[name]).abs().max().item() / scale)
        else:
            assert torch.equal(value, other[name]), name
    assert worst < TOLERANCE, f"largest relative difference {worst:.2e}"
    return worst


def crashed_copy(finished: Path, to: Path) -> tuple[Path, dict]:
    """A copy of a finished run as a crash after its last step checkpoint leaves it: no final checkpoint,
    the record still running. Returns the copy and its record."""
    shutil.copytree(finished, to)
    (to / "checkpoints" / "final.pt").unlink()
    record = json.loads((to / "record.json").read_text())
    record = {**record, "status": "running", "final": None}
    (to / "record.json").write_text(json.dumps(record))
    return to, record


def ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_transfer_plan_covers_every_example_once():
    for batch, trainers, workers in [(48, 2, 3), (64, 4, 2), (24, 3, 3), (16, 1, 2)]:
        plan = transfer_plan(batch, trainers, workers)
        covered = sorted((t.lo, t.hi) for t in plan)
        assert covered[0][0] == 0 and covered[-1][1] == batch
        assert all(a[1] == b[0] for a, b in zip(covered, covered[1:], strict=False))
        for t in plan:  # inside both the worker's and the trainer's range
            assert t.worker * batch // workers <= t.lo < t.hi <= (t.worker + 1) * batch // workers
            assert t.trainer * batch // trainers <= t.lo < t.hi <= (t.trainer + 1) * batch // trainers
    assert transfer_plan(48, 2, 3) == [Transfer(0, 0, 0, 16), Transfer(1, 0, 16, 24), Transfer(1, 1, 24, 32),
                                       Transfer(2, 1, 32, 48)]


def test_weight_steps_are_each_needed_weight_once():
    assert weight_steps(0, 5, 1) == [0, 1, 2, 3]
    assert weight_steps(0, 5, 0) == [0, 1, 2, 3, 4]
    assert weight_steps(6, 9, 2) == [4, 5, 6]


# 2 trainers + 1 attack worker against one process with the sequential executor (the same weights up to
# summation order, and records that say so) is the CPU stand-in of `make gpu-check`'s NCCL section:
# tests/test_gpu_check.py runs it over gloo, so that CI trains that pair once.


def test_data_parallel_disadv_with_accumulation_matches_one_process(tmp_path, cli_env):
    # 2 trainers, each accumulating two micro-batches, against one process on the whole batch: the
    # gradient average, the ghost-BN groups per rank and the BN statistics' reduction.
    common = [*SMALL, "method=disadv", "steps=3"]
    single(tmp_path / "ref", common)
    batch = json.loads((tmp_path / "ref" / "record.json").read_text())["config"]["batch_size"]
    ok(torchrun(2, tmp_path / "ddp", [*common, f"runtime.micro_batch={batch // 4}"], cli_env))
    assert_close(final_model(tmp_path / "ref"), final_model(tmp_path / "ddp"))
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    for mine, theirs in zip(rows, ref_rows, strict=True):  # the logged metrics are the global batch's
        if mine["kind"] == "train":
            assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-4)
            assert mine["train_top1"] == pytest.approx(theirs["train_top1"], abs=1e-6)


def test_a_run_with_attack_workers_resumes_exactly(tmp_path, cli_env):
    # Interrupt after the checkpoint of step 4 (drop what came later, as a crash would), resume with the
    # same layout: the workers get theta_3 and theta_4 from the checkpoint's snapshots (tau = 1).
    common = [*SMALL, "method=conadv", "steps=6", "conadv.attack_workers=1", "runtime.checkpoint_every=2"]
    whole = tmp_path / "whole"
    ok(torchrun(3, whole, common, cli_env))
    resumed, record = crashed_copy(whole, tmp_path / "resumed")
    result = torchrun(3, resumed, common, cli_env)
    ok(result)
    assert "resuming" in result.stdout and "at step 4/6" in result.stdout
    a, b = final_model(whole), final_model(resumed)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_run_started_on_one_trainer_resumes_on_two(tmp_path, cli_env):
    # The device counts are not part of a run id: a relaunch on another number of GPUs resumes the run (from the
    # checkpoint of step 2), and ends with the weights of the uninterrupted one up to summation order.
    from analysis.records import mixed_layout

    common = [*SMALL, "method=disadv", "steps=4", "runtime.checkpoint_every=2"]
    whole = tmp_path / "whole"
    single(whole, common)
    resumed, record = crashed_copy(whole, tmp_path / "resumed")
    result = torchrun(2, resumed, common, cli_env)
    ok(result)
    assert "resuming" in result.stdout and "/4" in result.stdout
    assert_close(final_model(whole), final_model(resumed))
    after = json.loads((resumed / "record.json").read_text())
    assert after["run_id"] == record["run_id"] and after["status"] == "finished"
    assert [(e["trainers"], e["from_step"] > 0) for e in after["layouts"]] == [(1, False), (2, True)]
    assert mixed_layout(after) and not mixed_layout(record)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(args: list[str], world: int, env: dict[str, str]) -> list[subprocess.Popen]:
    """The ranks as Slurm tasks would be: processes with RANK/WORLD_SIZE/MASTER_* set, no agent between them."""
    port = _free_port()
    return [subprocess.Popen(args, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for rank in range(world)]


def wait_for_rows(run_dir: Path, procs: list[subprocess.Popen], rows: int = 2, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    metrics = run_dir / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= rows):
        assert time.time() < deadline, "the run did not start"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.2)


def test_a_killed_rank_ends_the_job_with_an_error_naming_it(tmp_path, cli_env):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "conadv_repro.train", "--run-dir", str(run_dir), *SMALL, "method=conadv",
            "conadv.attack_workers=1", "steps=100000", "runtime.dist_timeout_s=120"]
    procs = start_ranks(args, 3, cli_env)
    try:
        wait_for_rows(run_dir, procs)
        procs[2].send_signal(signal.SIGKILL)  # the attack worker
        started = time.time()
        outputs = [p.communicate(timeout=90) for p in procs[:2]]
        assert time.time() - started < 90
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p in procs[:2]:
        assert p.returncode not in (0, None)
    rank0_err = outputs[0][1].strip().splitlines()
    assert rank0_err, outputs[0]
    assert rank0_err[-1].startswith("error: rank 0 of 3 (trainer): lost contact with rank(s) 2"), rank0_err[-5:]
    assert "Traceback" not in outputs[0][1]
    assert os.path.exists(run_dir / "record.json")


def test_a_stalled_rank_fails_the_run_naming_it_within_the_step_timeout(tmp_path, cli_env):
    # SIGSTOP keeps rank 1's sockets open (a dead rank's close at once): only the steady-state timeout, from
    # the second step on, ends rank 0's wait, and the record names the silent rank.
    step_timeout = 5
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "conadv_repro.train", "--run-dir", str(run_dir), *SMALL, "method=vanilla",
            "steps=100000", "runtime.dist_timeout_s=120", f"runtime.dist_step_timeout_s={step_timeout}"]
    procs = start_ranks(args, 2, cli_env)
    try:
        wait_for_rows(run_dir, procs)
        procs[1].send_signal(signal.SIGSTOP)
        stopped = time.time()
        out, err = procs[0].communicate(timeout=90)
        took = time.time() - stopped
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    # The step timeout, the watch's poll, and lost_ranks' few seconds of grace: well under a minute.
    assert step_timeout <= took < 40, took
    assert procs[0].returncode not in (0, None)
    # Whichever sees it first, gloo's timeout or the stall watch, names rank 1 (on NCCL only the watch can).
    named = r"rank 0 of 2 \(trainer\): (lost contact with rank\(s\) 1: |rank\(s\) 1 silent for 5 s \(stalled or lost\))"
    lines = err.strip().splitlines()
    assert re.match("error: " + named, lines[-1]), lines[-5:]
    assert "Traceback" not in err
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "failed" and re.match(named, record["error"]), record.get("error")


def test_an_early_stop_with_attack_workers_ahead_shuts_down_cleanly(tmp_path, cli_env):
    # tau=2: when the trainers stop (here: a loss that diverges in step 3), the attack worker has attacked and
    # sent steps 3 and 4 already (theta_2 reaches them). The trainers take both in and then send STOP; the
    # worker waits on its last sends before it leaves: nothing pending reaches destroy_process_group
    # (distributed/attack_link.py).
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "conadv_repro.train", "--run-dir", str(run_dir), *SMALL, "method=conadv",
            "conadv.attack_workers=1", "conadv.tau=2", "steps=30", "optim.name=sgd", "optim.lr=1e8",
            "schedule.warmup_epochs=0", "runtime.dist_step_timeout_s=30"]
    procs = start_ranks(args, 2, cli_env)
    try:
        outputs = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "diverged" and record["steps_done"] == 2, record
    (out0, err0), (out1, err1) = outputs
    assert "rank 0 of 2 (trainer): stopped after step 3; drained 2 in-flight adversarial batches" in out0, out0[-2000:]
    assert "rank 1 of 2 (attacker): the trainers stopped; attacked steps 0..4, every send taken in" in out1, \
        out1[-2000:] + err1[-2000:]
    assert not err0.strip() and not err1.strip(), err0[-2000:] + err1[-2000:]
    assert [p.returncode for p in procs] == [1, 1]  # the run did not finish: neither rank says it did
