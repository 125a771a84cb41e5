"""The launcher against the real local Slurm cluster (`make slurm-up`): a grid as a job array, a failing
job shown as failed with its log tail, and a preempted job that requeues, resumes and ends bit-identical."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytest
import torch

from conadv_repro.engine.checkpoint import load_latest_checkpoint
from conadv_repro.engine.run import run_training
from conadv_repro.launch import cli
from conadv_repro.launch.plan import apply_filters, expand, parse_sets
from conadv_repro.launch.profiles import load_profile
from conadv_repro.registry import load_experiments
from tests.helpers import run_cli
from tests.slurm_support import sacct_state, wait_done

pytestmark = pytest.mark.slurm
LAUNCH = ["-m", "conadv_repro.launch"]
ONE_RUN = ["--only", "method=vanilla", "--only", "paper_batch=32k", "--only", "autoaugment=false"]
# What Slurm runs is the point here, not the training: 4 steps a run instead of the smoke scale's 40.
SHORT = ["--set", "steps=4"]


def test_a_grid_runs_as_a_slurm_job_array(tmp_path, cli_env, slurm_partition):
    runs = tmp_path / "runs"
    args = [*LAUNCH, "table1", "--only", "paper_batch=64k", *SHORT, "--runs-dir", str(runs), "--cluster", "slurm",
            "--profile", "local", "--runs-per-job", "2", "--wait"]
    out = run_cli(args, cli_env, tmp_path, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().splitlines()[-1] == "4 runs: 4 finished"
    job_ids = set()
    for launch in runs.glob("smoke/*/launch.json"):
        entry = json.loads(launch.read_text())["submissions"][-1]
        assert entry["cluster"] == "slurm" and "_" in entry["job_id"]  # array tasks
        # what the attempt's job asked for, beside the run's layout (the local profile: a CPU partition)
        assert entry["layout"] == {"processes": 1, "trainers": 1, "attack_workers": 0, "nodes": 1, "tasks": 1,
                                   "gpus": 0, "cpus_per_task": entry["layout"]["cpus_per_task"],
                                   "mem_gb": entry["layout"]["mem_gb"], "time_min": entry["layout"]["time_min"]}
        job_ids.add(entry["job_id"])
    assert len(job_ids) == 2
    again = run_cli([*LAUNCH, "table1", "--only", "paper_batch=64k", *SHORT, "--runs-dir", str(runs),
                     "--cluster", "slurm", "--profile", "local"], cli_env, tmp_path)
    assert "nothing to submit" in again.stdout


def test_a_failing_job_is_shown_failed_with_its_log_tail(tmp_path, cli_env, slurm_partition):
    runs = tmp_path / "runs"
    common = ["table1", *ONE_RUN, "--set", "model.name=nosuch_module:build", "--runs-dir", str(runs)]
    out = run_cli([*LAUNCH, *common, "--cluster", "slurm", "--profile", "local", "--wait"], cli_env, tmp_path,
                  timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "failed" in out.stdout
    status = run_cli([*LAUNCH, "status", *common], cli_env, tmp_path)
    lines = status.stdout.splitlines()
    assert lines[0].startswith("failed")
    assert any(line.strip().startswith("log: ") and line.strip().endswith("_log.out") for line in lines)
    assert any("nosuch_module" in line and line.strip().startswith("|") for line in lines), status.stdout
    assert lines[-1] == "1 run: 1 failed"


def test_a_preempted_job_requeues_resumes_and_ends_bit_identical(tmp_path, slurm_partition):
    runs = tmp_path / "runs"
    # 300 steps (about 12 s at 40 ms a step on one thread): the preemption, sent as soon as the checkpoint of
    # step 10 appears, lands mid-run; a run that finished first would show attempts == 1 below and fail.
    sets = parse_sets(["steps=300", "runtime.threads=1", "runtime.checkpoint_every=10"])
    (run,) = apply_filters(expand(load_experiments(["table1"]), scale="smoke", runs_dir=runs, sets=sets),
                           ["method=vanilla", "paper_batch=32k", "autoaugment=false"])
    args = argparse.Namespace(runs_dir=runs, scale="smoke", runs_per_job=0)
    ((job, _),) = cli.submit_runs([run], "slurm", load_profile("local"), args)
    assert sacct_state(job, "RUNNING", timeout=120) == "RUNNING"
    checkpoints = run.run_dir / "checkpoints"
    deadline = time.time() + 120
    while not any(checkpoints.glob("step-*.pt")) and time.time() < deadline:
        time.sleep(0.2)
    job._interrupt()  # what a preemption looks like: the job checkpoints and requeues itself
    wait_done(job, timeout=400)
    record = json.loads((run.run_dir / "record.json").read_text())
    log = (Path(json.loads((run.run_dir / "launch.json").read_text())["submissions"][-1]["log_dir"]))
    job_log = "".join(p.read_text() for p in sorted(log.glob("*_log.*")))
    assert record["status"] == "finished" and record["attempts"] == 2, (
        f"status {record['status']}, attempts {record['attempts']}, error {record.get('error')}\n"
        f"{record.get('traceback', '')}\njob log:\n{job_log[-6000:]}")
    assert "resuming" in job_log

    reference = tmp_path / "reference"
    run_training(run.config, reference, log=lambda _m: None)
    ours, theirs = load_latest_checkpoint(run.run_dir)[0], load_latest_checkpoint(reference)[0]
    for key, value in theirs["model"].items():
        assert torch.equal(ours["model"][key], value), key


def test_a_run_on_several_processes_runs_as_one_multi_task_slurm_job(tmp_path, cli_env, slurm_partition):
    # ConAdv with one attack worker: two tasks of one job (trainer + attacker), torch.distributed set up
    # from submitit's TorchDistributedEnvironment, gloo on the CPU.
    runs = tmp_path / "runs"
    args = [*LAUNCH, "table1", "--only", "method=conadv", "--only", "paper_batch=32k", *SHORT, "--set",
            "conadv.attack_workers=1", "--runs-dir", str(runs), "--cluster", "slurm", "--profile", "local", "--wait"]
    out = run_cli(args, cli_env, tmp_path, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().splitlines()[-1] == "1 run: 1 finished"
    (record_path,) = runs.glob("smoke/*/record.json")
    record = json.loads(record_path.read_text())
    assert record["distributed"] == {"world_size": 2, "trainers": 1, "attack_workers": 1, "backend": "gloo"}
    assert record["executor"] == "workers"
    job_id = json.loads((record_path.parent / "launch.json").read_text())["submissions"][-1]["job_id"]
    logs = sorted((runs / "smoke" / "_jobs" / job_id).glob("*_log.out"))
    assert [p.name for p in logs] == [f"{job_id}_0_log.out", f"{job_id}_1_log.out"]  # one per rank
