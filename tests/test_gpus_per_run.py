"""GPUs per run as a launch choice: not part of a run id, shown in the dry run and the estimate, and a paper
launch without GPUs refused. (A run resuming on another layout: tests/test_distributed.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from analysis.records import mixed_layout, trained_layouts
from analysis.table3 import RunTiming, Table3Cell
from conadv_repro.config import build_config, config_from_overrides
from conadv_repro.errors import UserError
from conadv_repro.launch import cli
from conadv_repro.launch.estimate import requeues
from conadv_repro.launch.plan import expand
from conadv_repro.launch.profiles import Profile, gpus_per_run
from conadv_repro.launch.submit import job_request
from conadv_repro.registry import load_experiments
from tests.helpers import call_main


def fake_imagenet(root: Path) -> Path:
    for split in ("train", "val"):
        for wnid in ("n01440764", "n01443537"):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            (folder / f"{split}_{wnid}.JPEG").write_bytes(b"")
    return root


def test_the_device_counts_are_not_part_of_a_run_id_but_a_timed_layout_is():
    base = config_from_overrides(["scale=smoke", "method=conadv"])
    moved = config_from_overrides(["scale=smoke", "method=conadv", "runtime.trainers=2", "conadv.attack_workers=1"])
    assert base.run_id() == moved.run_id()
    pinned = config_from_overrides(["scale=smoke", "method=conadv", "runtime.trainers=2", "conadv.attack_workers=1",
                                    "runtime.timed_layout=2+1"])
    assert pinned.run_id() != moved.run_id()
    with pytest.raises(UserError, match=r"runtime.timed_layout=4\+1 but runtime.trainers=2"):
        build_config({"scale": "smoke", "method": "conadv", "runtime.trainers": "2", "conadv.attack_workers": "1",
                      "runtime.timed_layout": "4+1"})
    with pytest.raises(UserError, match="TRAINERS\\+WORKERS"):
        build_config({"runtime.timed_layout": "eight"})


def test_gpus_per_run_lays_out_free_runs_and_leaves_pinned_ones(tmp_path):
    experiments = load_experiments(["table1", "figure4"])
    one = expand(experiments, scale="proxy", runs_dir=tmp_path, sets={})
    two = expand(experiments, scale="proxy", runs_dir=tmp_path, sets={}, gpus_per_run=2)
    assert [r.run_id for r in one] == [r.run_id for r in two]  # relaunching on 2 GPUs resumes the same runs
    for a, b in zip(one, two, strict=True):
        if any(use[0] == "figure4" for use in a.uses):  # Figure 4 pins what it measures
            assert b.config.runtime.trainers == a.config.runtime.trainers == 1
            assert b.config.runtime.timed_layout
        else:
            assert (a.config.runtime.trainers, b.config.runtime.trainers) == (0, 2)
    # --set pins a layout too: the user's choice wins over --gpus-per-run.
    pinned = expand(load_experiments(["table1"]), scale="proxy", runs_dir=tmp_path,
                    sets={"runtime.trainers": "4"}, gpus_per_run=2)
    assert {r.config.runtime.trainers for r in pinned} == {4}
    # Attack workers count among the GPUs: 3 per ConAdv run is 2 trainers + 1 worker.
    workers = expand(load_experiments(["table1"]), scale="proxy", runs_dir=tmp_path,
                     sets={"conadv.attack_workers": "1"}, gpus_per_run=3)
    conadv = [r.config for r in workers if r.config.method == "conadv"]
    assert conadv and {(c.runtime.trainers, c.conadv.attack_workers) for c in conadv} == {(2, 1)}


def test_the_default_gpus_per_run_is_eight_at_the_paper_scale_on_a_gpu_profile():
    gpu = Profile(name="g", gpus_per_node=8)
    assert gpus_per_run(gpu, "paper") == 8
    assert gpus_per_run(Profile(name="g4", gpus_per_node=4), "paper") == 4
    assert gpus_per_run(gpu, "proxy") == 0  # as each run declares it
    assert gpus_per_run(Profile(name="g", gpus_per_node=8, gpus_per_run=16), "paper") == 16
    assert gpus_per_run(gpu, "paper", requested=2) == 2
    assert gpus_per_run(Profile(), "paper") == 0


def test_a_job_request_names_nodes_tasks_gpus_cpus_memory_and_time():
    profile = Profile(name="g", gpus_per_node=8, cpus_per_task=10, mem_gb=64, time_min=1440)
    assert job_request("slurm", profile, 16) == {"nodes": 2, "tasks": 16, "gpus": 16, "cpus_per_task": 10,
                                                 "mem_gb": 64, "time_min": 1440}
    assert job_request("slurm", profile, 1)["gpus"] == 1
    assert requeues(30 * 3600, 1440) == 1 and requeues(20 * 3600, 1440) == 0 and requeues(49 * 3600, 1440) == 2


@pytest.fixture
def paper_args(tmp_path, monkeypatch):
    monkeypatch.setattr(cli.shutil, "which", lambda name: f"/usr/bin/{name}" if name == "sbatch" else None)
    data = fake_imagenet(tmp_path / "inet")
    return ["table1", "--scale", "paper", "--data-root", str(data), "--runs-dir", str(tmp_path / "runs"),
            "--dry-run"]


def test_a_paper_launch_without_gpus_is_refused_unless_allowed(paper_args, capsys):
    status, out, err = call_main(cli.main, paper_args, capsys)
    assert status == 2 and "--scale paper would train on CPUs only (no --profile was given)" in err
    assert "slurm/profiles/example-gpu.toml" in err and "--allow-cpu" in err and not out
    status, out, _ = call_main(cli.main, [*paper_args, "--allow-cpu"], capsys)
    assert status == 0 and "28 jobs each ask for: 1 node, 1 task, no GPU," in out and "1 GPU" not in out
    assert "each job (as each run declares it without a GPU profile: one trainer, plus ConAdv's attack workers " \
           "where set):" in out


def test_the_dry_run_shows_the_jobs_gpus_and_another_count_keeps_the_run_ids(paper_args, capsys):
    status, eight, err = call_main(cli.main, [*paper_args, "--profile", "example-gpu"], capsys)
    assert status == 0, err
    assert "28 jobs each ask for: 1 node, 8 tasks, 8 GPUs, 10 CPUs per task, 64 GB of memory per node, " \
           "time limit 24:00:00 (profile example-gpu)" in eight
    status, one, err = call_main(cli.main, [*paper_args, "--profile", "example-gpu", "--gpus-per-run", "1"], capsys)
    assert status == 0, err
    assert "28 jobs each ask for: 1 node, 1 task, 1 GPU," in one

    def ids(text: str) -> list[str]:
        return re.findall(r" ([0-9a-f]{12})$", text, flags=re.M)
    assert len(ids(eight)) == 28 and ids(eight) == ids(one)
    # status takes the selection launch takes, and refuses what only acts on a launch (cancel --dry-run cancelled)
    for layout in (["--gpus-per-run", "2"], ["--set", "runtime.trainers=2"]):
        status, out, err = call_main(cli.main, ["status", *paper_args[:-1], "--profile", "example-gpu", *layout],
                                     capsys)
        assert status == 0 and out.strip().splitlines()[-1] == "28 runs: 28 missing", err
    status, _, err = call_main(cli.main, ["cancel", *paper_args], capsys)
    assert status == 2 and err.strip() == ("error: --dry-run has no use with cancel; allowed there: the selection "
                                           "(experiments, --scale, --only, --set, --runs-dir, --profile, "
                                           "--gpus-per-run, --data-root)")
    status, _, err = call_main(cli.main, [*paper_args, "--gpus-per-run", "2", "--set", "runtime.trainers=2"], capsys)
    assert status == 2 and "--gpus-per-run 2 and --set runtime.trainers=... both lay out the runs" in err


def test_the_estimate_names_runs_past_the_time_limit_and_their_requeues(paper_args, capsys):
    args = [*paper_args[:-1], "--estimate", "--calibration", "published", "--profile", "example-gpu"]
    status, out, err = call_main(cli.main, [*args, "--gpus-per-run", "1"], capsys)
    assert status == 0, err
    assert "would outlast profile example-gpu's time_min (24:00:00)" in out
    assert re.search(r"disadv at 96k \([0-9a-f]{12}\): \d+:\d\d:\d\d, 1 requeue$", out, flags=re.M)
    assert "28 jobs each ask for: 1 node, 1 task, 1 GPU" in out
    status, out, err = call_main(cli.main, [*args, "--gpus-per-run", "8"], capsys)
    assert status == 0 and "outlast" not in out and "8 GPUs" in out, err


def test_a_run_resumed_on_another_layout_is_flagged_not_timed():
    one = {"attempt": 1, "from_step": 0, "world_size": 1, "trainers": 1, "attack_workers": 0, "device": "cuda"}
    two = {**one, "attempt": 2, "from_step": 100, "world_size": 2, "trainers": 2}
    assert not mixed_layout({"layouts": [one]}) and not mixed_layout({"distributed": {"trainers": 1}})
    assert mixed_layout({"layouts": [one, two]})
    assert trained_layouts({"layouts": [one, two]}) == ["1 trainer, cuda", "2 trainers, cuda"]
    # an attempt that kept no step (the next resumed where it started) trained nothing of the run
    assert not mixed_layout({"layouts": [one, {**two, "from_step": 0}]})
    timed = RunTiming("a", "finished", 100.0, 120.0, 80.0)
    mixed = RunTiming("b", "finished", 50.0, 60.0, 80.0, layouts=("1 trainer, cuda", "2 trainers, cuda"))
    cell = Table3Cell("DisAdv", "32k", 1191.0, False, ["a", "b"], ["finished", "finished"], [timed, mixed])
    assert cell.values("time_to_target_s") == [100.0]
    assert cell.text("time_to_target_s").endswith("(1 run resumed on another layout, not timed)")
    only_mixed = Table3Cell("DisAdv", "32k", 1191.0, False, ["b"], ["finished"], [mixed])
    assert only_mixed.text("time_to_target_s").startswith("not timed / ")
    json.dumps(one)  # the record's entries are plain JSON
