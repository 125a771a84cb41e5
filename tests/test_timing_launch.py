"""Table 3's and Figure 4's grids through the launcher: the dry runs at the smoke and paper scales, the
devices each Figure 4 cell asks for, and `--estimate` (projected wall time and GPU-hours, nothing submitted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conadv_repro.launch.estimate import TRAIN_EXAMPLES, run_steps
from tests.helpers import run_cli
from tests.synthetic_runs import find, planned, write_calibration

LAUNCH = ["-m", "conadv_repro.launch"]


def fake_imagenet(root: Path) -> Path:
    for part in ("train", "val"):
        (root / part / "n01440764").mkdir(parents=True, exist_ok=True)  # the class-folder layout the launcher checks
        (root / part / "n01440764" / "a.JPEG").touch()
    return root


def test_figure4_cells_ask_for_their_devices(tmp_path):
    smoke = planned("figure4", tmp_path)
    assert len(smoke) == 21
    conadv = find(smoke, "figure4", "(a) ConAdv", "32k").config
    assert (conadv.runtime.trainers, conadv.conadv.attack_workers, conadv.batch_size) == (1, 1, 32)
    assert conadv.steps == 60 and conadv.runtime.log_every == 5
    vanilla = find(smoke, "figure4", "(b) ResNet-50", "2k").config
    assert (vanilla.runtime.trainers, vanilla.conadv.attack_workers) == (1, 0)
    paper = planned("figure4", tmp_path, scale="paper")
    a = find(paper, "figure4", "(a) ConAdv", "32k").config
    assert (a.batch_size, a.runtime.trainers, a.conadv.attack_workers, a.runtime.micro_batch) == (32768, 512, 512, 64)
    b = find(paper, "figure4", "(b) DisAdv", "512").config
    assert (b.runtime.trainers, b.conadv.attack_workers, b.bn.group_size) == (128, 0, 4)
    # Short throughput runs: never Table 1's (90 epochs) or Table 3's runs.
    assert not {r.run_id for r in paper} & {r.run_id for r in planned("table3", tmp_path, scale="paper")}


def test_dry_runs_at_the_smoke_and_paper_scales(tmp_path, cli_env):
    runs = tmp_path / "runs"
    table3 = run_cli([*LAUNCH, "table3", "--dry-run", "--runs-dir", str(runs), "--cluster", "local"], cli_env, tmp_path)
    assert table3.returncode == 0, table3.stderr
    assert table3.stdout.strip().splitlines()[-1] == "9 runs: 9 missing"
    assert "conadv   --   64k (batch    64) eps=5" in table3.stdout
    root = fake_imagenet(tmp_path / "imagenet")
    figure4 = run_cli([*LAUNCH, "figure4", "--scale", "paper", "--data-root", str(root), "--dry-run",
                       "--runs-dir", str(runs), "--cluster", "local", "--allow-cpu"], cli_env, tmp_path)
    assert figure4.returncode == 0, figure4.stderr
    assert figure4.stdout.strip().splitlines()[-1] == "21 runs: 21 missing"
    assert "disadv   --   32k (batch   32k)" in figure4.stdout and "vanilla  --   512 (batch   512)" in figure4.stdout
    assert not runs.exists(), "a dry run wrote to the runs folder"


def test_estimate_through_the_cli(tmp_path, cli_env):
    runs = tmp_path / "runs"
    calibration = write_calibration(tmp_path / "cal.json")
    env = {**cli_env, "CONADV_CALIBRATIONS": str(tmp_path / "none")}
    out = run_cli([*LAUNCH, "figure4", "--estimate", "--calibration", str(calibration), "--runs-dir", str(runs),
                   "--only", "row=(a) ConAdv", "--only", "column=32k"], env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "calibration: cal.json: measured on synthetic test fixture, not a measurement" in out.stdout  # cwd-relative
    lines = out.stdout.splitlines()
    (row,) = [line for line in lines if line.startswith("conadv")]
    # Batch 32, 1 trainer + 1 attack worker, 60 steps. The trainer: 32 x 2e-3 s scaled by the MACs of the smoke
    # network (resnet8, width 8, 16 px, 1 channel) over resnet20's; the attacker's share is smaller.
    assert row.split()[:7] == ["conadv", "--", "32k", "32", "1", "+", "1"] and " 60 " in row
    assert lines[-2].startswith("grid: 1 run, ") and "device-hours" in lines[-2]
    assert lines[-1].startswith("note: at the smoke scale these are lower bounds")
    assert any(line.startswith("network: resnet8 width 8 at 16 px") for line in lines)
    assert not runs.exists(), "--estimate wrote to the runs folder"

    # The paper scale on a GPU profile without its calibration: one line naming the flag.
    missing = run_cli([*LAUNCH, "table3", "--scale", "paper", "--profile", "example-gpu", "--estimate"], env, tmp_path)
    lines = missing.stderr.strip().splitlines()
    assert missing.returncode == 2 and len(lines) == 1 and "--calibration PATH" in lines[0], missing.stderr
    assert "profile example-gpu (GPUs, constraint a100)" in lines[0]
    assert "make gpu-check on one of the cluster's GPUs writes one" in lines[0]
    assert "benchmarks/throughput.py --save" in lines[0]

    # The published anchor, by hand: vanilla at 16k on one A100 at 2,470 img/s, 90 x floor(1,278,167 / 16,384)
    # = 7,020 steps of 16,384 / 2,470 s: 12:56:05 and 12.93 GPU-hours.
    paper = run_cli([*LAUNCH, "table3", "--scale", "paper", "--profile", "example-gpu", "--estimate",
                     "--calibration", "published", "--gpus-per-run", "1"], env, tmp_path)
    assert paper.returncode == 0, paper.stderr
    assert "calibration: published, not measured here: NVIDIA A100" in paper.stdout
    (vanilla_16k,) = [line for line in paper.stdout.splitlines() if line.startswith("vanilla  --   16k")]
    assert vanilla_16k.split()[4:11] == ["1", "+", "0", "7,020", "6.633", "12:56:05", "12.93"]
    assert "grid: 9 runs" in paper.stdout and "GPU-hours" in paper.stdout
    assert "note:" not in paper.stdout


@pytest.mark.parametrize("scale, batch, steps", [("paper", "16k", 7020), ("smoke", "32k", 40), ("proxy", "64k", None)])
def test_steps_as_the_engine_counts_them(tmp_path, scale, batch, steps):
    run = find(planned("table3", tmp_path, scale=scale), "table3", "DisAdv", batch)
    expected = steps or round(run.config.epochs * (TRAIN_EXAMPLES[scale] // run.config.batch_size))
    assert run_steps(run.config) == expected


def test_calibration_needs_estimate(tmp_path, cli_env):
    out = run_cli([*LAUNCH, "table3", "--dry-run", "--calibration", "published"], cli_env, tmp_path)
    assert out.returncode == 2 and out.stderr.strip() == "error: --calibration is for --estimate"
