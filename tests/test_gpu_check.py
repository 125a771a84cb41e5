"""`python -m conadv_repro.gpu_check`: its CPU smoke runs every section in-process (the same code the GPU
runs, shrunk), without CUDA it says so in one line, its calibration loads through the throughput model,
and it needs neither submitit nor wandb."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conadv_repro import throughput_model as tm
from conadv_repro.config import config_from_overrides
from conadv_repro.gpu_check.calibration import calibration_data
from conadv_repro.gpu_check.cli import main
from conadv_repro.gpu_check.plan import GPU
from conadv_repro.gpu_check.report import CheckFailed, Report
from conadv_repro.gpu_check.speed import SpeedResult
from tests.conftest import REPO

BLOCKED = ("submitit", "wandb")


@pytest.fixture
def isolated(monkeypatch):
    """The check sets process-wide state (environment, torch threads): put it back afterwards, and make
    any import of submitit or wandb fail while it runs."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    for name in BLOCKED:
        monkeypatch.setitem(sys.modules, name, None)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_the_cpu_smoke_runs_every_section_and_writes_a_calibration_the_model_loads(tmp_path, capsys, isolated):
    out_file = tmp_path / "smoke.json"
    status = main(["--cpu-smoke", "--calibration-out", str(out_file)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "  FAIL  " not in out, out
    for expected in ("ConAdv on the thread executor = the sequential executor: bit-identical",
                     "ConAdv with tau=0 = DisAdv: bit-identical",
                     "= the uninterrupted run: stopped after step 2, resumed from step 1",
                     "ops that have no deterministic kernel and warned: none",
                     *(f"PASS  {m} trains with bf16 autocast" for m in ("vanilla", "disadv", "conadv", "noise")),
                     "SKIP  runtime.compile=true", "PASS  a loader with runtime.workers=2",
                     "PASS  micro-batch 16: every variant steps", "plain PyTorch + torchvision",
                     "goal  not judged", "PASS  saved activations per image: our split ghost BN against",
                     *(f"PASS  {m} steps at every micro-batch" for m in ("vanilla", "disadv", "conadv")),
                     "PASS  the calibration file is written", "SKIP  NCCL among ranks",
                     "gpu-check: 14 PASS, 0 FAIL, 2 SKIP"):
        assert expected in out, (expected, out)

    calibration = tm.load_calibration(out_file)
    assert calibration.device == "cpu" and calibration.network == tm.Network("resnet8", 16, 4, 3, 1000)
    assert calibration.broadcast_s is None and calibration.transfer_s_per_example is None
    assert all(v > 0 for v in calibration.per_example_s.values())
    assert json.loads(out_file.read_text())["command"].endswith(f"--cpu-smoke --calibration-out {out_file}")


def test_a_one_gpu_calibration_is_marked_not_measured_wherever_the_model_uses_it(tmp_path):
    # The GPU plan's calibration, from made-up timings: ResNet-50 at 224 px, what `--estimate` will read.
    cfg = config_from_overrides(["data=imagenet", *GPU.speed[:2], "batch_size=256", "bn.group_size=64"])
    medians = {"vanilla": 0.08, "disadv": 0.22, "conadv": 0.21, "train_only": 0.16, "attack": 0.06,
               "plain_ours": 0.08, "plain_torchvision": 0.075}
    result = SpeedResult(median_s={256: medians}, cfg=cfg, executor="stream", params=25_610_152,
                         weights_bytes=4 * 25_663_400, device_name="NVIDIA H200")
    path = tmp_path / "nvidia-h200-gpu-check.json"
    path.write_text(json.dumps(calibration_data(GPU, result, ["--only", "calibration"])))
    calibration = tm.load_calibration(path)
    assert calibration.network == tm.PAPER_NETWORK and calibration.device_name == "NVIDIA H200"
    assert calibration.per_example_s["conadv_concurrent"] == pytest.approx(0.21 / 256)
    costs = tm.costs_for(calibration)
    assert set(costs.not_measured) == {"broadcast", "transfer", "allreduce"}
    text = " ".join(tm.assumptions_text(costs, calibration))
    assert text.count("(not measured)") == 3 and "link per GPU assumed" in text
    # The model still projects every layout, on the assumed link where it needs one.
    workers = tm.step_time("conadv", 4096, 8, 8, costs)
    assert workers.attacker_s > 0 and workers.allreduce_s > 0
    assert tm.find_calibration(match=("h200",), device="cuda", folder=tmp_path).path.endswith(path.name)


def test_without_cuda_it_says_so_in_one_line_and_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stopped:
        main([])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: no CUDA device is visible") and "--cpu-smoke" in err


@pytest.mark.parametrize("args, fragment", [
    (["--only", "warp-speed"], "--only 'warp-speed' is not a section; allowed: deterministic, fast, speed"),
    (["--cpu-smoke", "--rounds", "0"], "0 is not allowed; it must be at least 1"),
])
def test_bad_arguments_are_one_line(args, fragment, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and fragment in err, err


def test_a_calibration_path_that_cannot_be_written_fails_before_measuring(tmp_path, capsys, isolated):
    with pytest.raises(SystemExit) as stopped:
        main(["--cpu-smoke", "--only", "calibration", "--calibration-out", str(tmp_path / "no" / "such.json")])
    assert stopped.value.code == 2
    captured = capsys.readouterr()
    assert "the folder" in captured.err and "does not exist" in captured.err and captured.out == ""


def test_a_check_that_raises_is_a_fail_and_the_next_checks_still_run(capsys):
    report = Report()

    def broken() -> str:
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore detail")

    def wrong() -> str:
        raise CheckFailed("3 of 62 tensors differ")

    assert not report.check("a crash", broken)
    assert not report.check("a claim", wrong)
    assert report.check("a pass", lambda: "fine")
    report.goal(False, "fast enough")
    report.summary(300)
    out = capsys.readouterr().out
    assert "FAIL  a crash: RuntimeError: CUDA error: an illegal memory access was encountered  (" in out
    assert "more detail" not in out and "at " in out  # the innermost frames, not the whole message
    assert "FAIL  a claim: 3 of 62 tensors differ" in out and "PASS  a pass: fine" in out
    assert "gpu-check: 1 PASS, 2 FAIL, 0 SKIP; goals 0 met, 1 missed" in out


def test_its_modules_import_neither_submitit_nor_wandb():
    # A fresh process: in this one, earlier tests may have imported them already. (Nor pandas or
    # matplotlib: a GPU machine may have only torch, torchvision, numpy and scikit-learn.)
    modules = ["conadv_repro.gpu_check.cli", "conadv_repro.gpu_check.correctness", "conadv_repro.gpu_check.speed",
               "conadv_repro.gpu_check.calibration", "conadv_repro.gpu_check.multi_gpu", "conadv_repro.train",
               "conadv_repro.engine.run", "conadv_repro.tracking"]
    code = ("import importlib, sys\n"
            f"for name in {(*BLOCKED, 'pandas', 'matplotlib')!r}: sys.modules[name] = None\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('submitit', 'wandb', 'pandas', 'matplotlib') "
            "and sys.modules[m]))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_the_multi_gpu_section_runs_its_exactness_runs_over_gloo_on_the_cpu(capsys, isolated):
    # Section 4's code path where CI has no GPUs: the same torchrun runs on gloo with CPU processes.
    status = main(["--cpu-smoke", "--only", "multi-gpu"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "SKIP  2 trainers (DDP)" in out
    assert "PASS  2 trainers + 1 attack worker over gloo = one process" in out


def test_the_multi_gpu_check_fails_on_a_record_of_another_layout(tmp_path):
    # A run that silently fell back to one process would still agree with the reference: its record must not.
    from conadv_repro.gpu_check.multi_gpu import _check_layout

    (tmp_path / "record.json").write_text(json.dumps({"status": "finished", "executor": "sequential",
                                                      "distributed": {"world_size": 1}}))
    with pytest.raises(CheckFailed, match="executor='sequential', expected 'workers'"):
        _check_layout(tmp_path, {"executor": "workers"}, "3-rank")
    assert _check_layout(tmp_path, {"executor": "sequential"}, "one-process")["distributed"]["world_size"] == 1
    (tmp_path / "record.json").write_text(json.dumps({"status": "failed"}))
    with pytest.raises(CheckFailed, match="says 'failed'"):
        _check_layout(tmp_path, {}, "3-rank")


def test_make_gpu_check_runs_the_module_with_the_given_python():
    # Under `make test` this make is a sub-make: without its parent's variables it prints only the command.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    dry = subprocess.run(["make", "--no-print-directory", "-n", "gpu-check", "PYTHON=python9",
                          "GPU_CHECK_ARGS=--only speed"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip().splitlines() == ["python9 -m conadv_repro.gpu_check --only speed"]
    assert Path(REPO, "docs", "gpu-check.md").is_file()
