"""A profile's mem_gb is memory per node (Slurm's --mem), and launch and --estimate warn when a node's tasks
cannot each hold what a rank needs on the host (conadv_repro/launch/host_memory.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from conadv_repro.launch import cli, submit
from conadv_repro.launch import host_memory as hm
from conadv_repro.launch.host_memory import host_memory_report, host_memory_warnings
from conadv_repro.launch.plan import expand
from conadv_repro.launch.profiles import Profile, load_profile
from conadv_repro.registry import load_experiments
from tests.helpers import call_main

MIB, GIB = 2 ** 20, 2 ** 30
EIGHT = Profile(name="small", partition="gpu", gpus_per_node=8, cpus_per_task=10, mem_gb=64)


def paper_runs(tmp_path: Path, gpus: int = 8, **sets: str) -> list:
    return expand(load_experiments(["table1"]), scale="paper", runs_dir=tmp_path, sets=sets, check_data=False,
                  gpus_per_run=gpus)


def fits_gb(runs: list, per_node: int) -> int:
    return max(math.ceil(hm.neediest_node(run.config, cuda=True, tasks_per_node=per_node).total / GIB)
               for run in runs)


def test_the_slurm_job_of_a_multi_task_run_asks_for_the_profiles_mem_gb_per_node(tmp_path):
    executor = submit.make_executor("slurm", tmp_path, EIGHT)
    # What submit_runs does for a run on 16 processes: two nodes of 8 tasks.
    executor.update_parameters(**submit.job_resources("slurm", EIGHT, 16))
    parameters = executor._executor.parameters
    assert (parameters["nodes"], parameters["ntasks_per_node"]) == (2, 8)
    assert parameters["mem"] == "64GB"  # the profile's mem_gb, neither times nor over the tasks
    assert not {key for key in parameters if key.startswith("mem_per")}
    from submitit.slurm.slurm import _make_sbatch_string

    script = _make_sbatch_string(command="true", folder=str(tmp_path), **parameters)
    assert "#SBATCH --mem=64GB\n" in script and "--mem-per-" not in script
    assert submit.job_request("slurm", EIGHT, 16)["mem_gb"] == 64


def test_a_ranks_need_is_its_process_workers_and_pinned_batches():
    assert hm.pinned_bytes(3 * 224 * 224 * 256, True) == 64 * MIB  # CachingHostAllocator: a power of two
    assert hm.pinned_bytes(3 * 224 * 224 * 256, False) == 3 * 224 * 224 * 256
    index = hm.IMAGENET_FILES * hm.INDEX_BYTES_PER_EXAMPLE
    assert hm.dataset_bytes("imagenet") == (index, index) and hm.dataset_bytes("cifar10")[1] == 0
    need = hm.rank_need(workers=8, micro=256, image_size=224, cuda=True, process_data=index, worker_data=index)
    assert need.process == hm.PROCESS_BYTES + hm.CUDA_HOST_BYTES + index
    assert need.workers == 8 * (hm.WORKER_BYTES + index + 256 * 3 * 224 * 224)
    assert need.batches == (2 * 8 + 2) * 64 * MIB and need.evaluation == 0
    # On a CPU: no CUDA context, nothing pinned; float32 batches take four times the bytes.
    cpu = hm.rank_need(workers=8, micro=256, image_size=224, cuda=False, float32=True)
    assert cpu.process == hm.PROCESS_BYTES and cpu.batches == 18 * 4 * 256 * 3 * 224 * 224
    # Evaluation: as many workers again, float32 batches of eval_batch in flight.
    evaluating = hm.rank_need(workers=8, micro=256, image_size=224, cuda=True, eval_batch=1024)
    assert evaluating.evaluation == 8 * (hm.WORKER_BYTES + 1024 * 3 * 224 * 224) + 17 * GIB


def test_rank_0_evaluates_attack_workers_take_float32_and_a_node_sums_its_ranks(tmp_path):
    (run, *_) = [r for r in paper_runs(tmp_path, **{"conadv.attack_workers": "8", "runtime.trainers": "8"})
                 if r.config.method == "conadv" and r.config.batch_size == 4096]
    ranks = hm.run_ranks(run.config, cuda=True)
    assert [r.role for r in ranks] == ["a trainer"] * 8 + ["an attack worker"] * 8
    assert ranks[0].evaluation > 0 and not any(r.evaluation for r in ranks[1:])
    # 4k over 8 trainers: micro-batches of 256, uint8 for a trainer, float32 for an attack worker.
    assert ranks[1].batches == 18 * 64 * MIB and ranks[8].batches == 18 * 256 * MIB
    first, second = (hm.NodeNeed(tuple(ranks[i:i + 8])) for i in (0, 8))
    assert first.total == sum(r.total for r in ranks[:8]) and first.evaluating() is ranks[0]
    assert hm.neediest_node(run.config, cuda=True, tasks_per_node=8) == max(first, second, key=lambda n: n.total)
    assert hm.neediest_node(run.config, cuda=True, tasks_per_node=16).total == sum(r.total for r in ranks)


def test_launch_warns_when_eight_tasks_share_a_small_mem_gb(tmp_path):
    runs = paper_runs(tmp_path)
    fits = fits_gb(runs, 8)
    (line,) = host_memory_warnings(runs, EIGHT)
    assert line.startswith("warning: host memory: profile small's mem_gb=64 is memory per node (Slurm's --mem): "
                           "8.0 GiB for each of a node's 8 tasks; 28 runs need about "), line
    assert "(vanilla at batch 4k: a trainer's process 2.9 GiB with the CUDA context, 8 loader workers 2.5 GiB, " \
           "18 micro-batches in flight 1.1 GiB pinned; rank 0's evaluation 20.3 GiB more (8 more workers, 17 " \
           "float32 batches of 1024 in flight))" in line
    assert line.split("; ")[-1] == (f"mem_gb={fits} fits (or fewer runtime.workers, a smaller runtime.eval_batch: "
                                    "not part of the run ids)")
    assert host_memory_warnings(runs, Profile(name="big", gpus_per_node=8, mem_gb=fits)) == []
    assert len(host_memory_warnings(runs, Profile(name="short", gpus_per_node=8, mem_gb=fits - 1))) == 1
    # The same 64 GB hold a run on one GPU: one task per node.
    assert host_memory_warnings(paper_runs(tmp_path, gpus=1), EIGHT) == []
    # Fewer workers and a smaller evaluation batch need less, and say so in the mem_gb that fits.
    lighter = paper_runs(tmp_path, **{"runtime.workers": "4", "runtime.eval_batch": "256"})
    assert fits_gb(lighter, 8) < fits
    # Only Slurm is given mem_gb; mem_gb = 0 asks Slurm for the whole node.
    assert host_memory_warnings(runs, EIGHT, "local") == []
    assert host_memory_warnings(runs, Profile(name="whole", gpus_per_node=8, mem_gb=0)) == []


def test_the_estimate_says_whether_mem_gb_holds_a_nodes_ranks(tmp_path, capsys):
    args = ["table1", "--scale", "paper", "--profile", "example-gpu", "--estimate", "--calibration", "published",
            "--runs-dir", str(tmp_path / "runs")]
    status, out, err = call_main(cli.main, [*args, "--gpus-per-run", "8"], capsys)
    assert status == 0, err
    (line,) = [line for line in out.splitlines() if "host memory:" in line]
    assert line.startswith("warning: host memory: profile example-gpu's mem_gb=64 is memory per node (Slurm's "
                           "--mem): 8.0 GiB for each of a node's 8 tasks; 28 runs need about "), line
    assert f"mem_gb={fits_gb(paper_runs(tmp_path), 8)} fits" in line
    status, out, err = call_main(cli.main, [*args, "--gpus-per-run", "1"], capsys)
    assert status == 0, err
    (line,) = [line for line in out.splitlines() if "host memory:" in line]
    assert line.startswith("host memory: profile example-gpu's mem_gb=64 is memory per node (Slurm's --mem): "
                           "64.0 GiB for a node's one task; 28 runs need about ") and line.endswith(": enough"), line
    assert host_memory_report(paper_runs(tmp_path), Profile(name="whole", gpus_per_node=8, mem_gb=0)) == [
        "host memory: not checked (profile whole has mem_gb=0: Slurm gives a job all of a node's memory)"]


@pytest.fixture
def imagenet(tmp_path: Path) -> Path:
    for split in ("train", "val"):
        folder = tmp_path / "inet" / split / "n01440764"
        folder.mkdir(parents=True)
        (folder / "a.JPEG").write_bytes(b"")
    return tmp_path / "inet"


def test_the_dry_run_warns_on_stderr_for_slurm_jobs_only(tmp_path, imagenet, monkeypatch, capsys):
    args = ["table1", "--scale", "paper", "--data-root", str(imagenet), "--runs-dir", str(tmp_path / "runs"),
            "--dry-run", "--profile", "example-gpu"]
    monkeypatch.setattr(cli.shutil, "which", lambda name: f"/usr/bin/{name}" if name == "sbatch" else None)
    status, out, err = call_main(cli.main, args, capsys)
    assert status == 0, err
    assert "warning: host memory: profile example-gpu's mem_gb=64 is memory per node" in err
    assert "host memory" not in out and "64 GB of memory per node" in out
    assert load_profile("example-gpu").mem_gb == 64  # the example keeps its value
    status, out, err = call_main(cli.main, [*args, "--cluster", "local", "--allow-cpu"], capsys)
    assert status == 0 and "host memory" not in err, err
