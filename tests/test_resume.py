"""A run killed with SIGKILL mid-epoch and started again ends bit-identical to one never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conadv_repro import train
from conadv_repro.engine.checkpoint import load_latest_checkpoint
from tests.helpers import call_main

# AutoAugment and accumulation on, so that keyed augmentation and micro-batching are part of the claim.
COMMON = ["batch_size=64", "bn.group_size=16", "runtime.micro_batch=32", "model.width=8",
          "runtime.checkpoint_every=5", "runtime.log_every=3", "runtime.threads=1", "runtime.device=cpu"]
# 19 steps an epoch (1257 // 64): the kill comes at step 10 and the run ends a few steps into the second
# epoch, so the resumed run crosses an epoch end (its evaluation, the look-ahead into the next epoch).
LENGTH = "steps=25"
CONFIGS = {
    "vanilla+aa": [*COMMON, LENGTH, "autoaugment=true"],
    # ConAdv's pending theta snapshot and its concurrent attack thread are part of the checkpoint claim.
    "conadv": [*COMMON, LENGTH, "method=conadv", "conadv.executor=thread", "attack.epsilon=4"],
}
TIMING_FIELDS = {"elapsed_s", "images_per_s"}


def metrics_without_timing(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in rows]


def final_state(run_dir: Path) -> dict:
    state, path = load_latest_checkpoint(run_dir)
    assert path.name == "final.pt"
    return state


def assert_bit_identical(a: dict, b: dict) -> None:
    for part in ("model",):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
    for index, buffers in a["optimizer"]["state"].items():
        for name, value in buffers.items():
            assert torch.equal(value, b["optimizer"]["state"][index][name]), f"optimizer {index}.{name}"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path: Path, cli_env, capsys, name):
    config = CONFIGS[name]
    reference = tmp_path / "reference"
    # The uninterrupted run trains beside the one to be killed (one torch thread each).
    uninterrupted = subprocess.Popen([sys.executable, "-m", "conadv_repro.train", "--run-dir", str(reference),
                                      *config], env=cli_env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "conadv_repro.train", "--run-dir", str(killed), *config],
                               env=cli_env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    second = killed / "checkpoints" / "step-00000010.pt"
    deadline = time.time() + 240
    while not second.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    record = json.loads((killed / "record.json").read_text())
    assert record["status"] == "running" and record["steps_done"] < record["total_steps"]
    assert not (killed / "checkpoints" / "final.pt").exists()

    # A truncated newest checkpoint (as a crash during the write could leave) falls back to the previous.
    newest = max((killed / "checkpoints").glob("step-*.pt"))
    newest.write_bytes(newest.read_bytes()[: 1000])

    # The resumed attempt runs in this process (the train command's own main): a third process would only
    # add its torch import, and the two that were started are what makes the claim.
    status, out, err = call_main(train.main, ["--run-dir", str(killed), *config], capsys)
    assert status == 0, err
    assert f"warning: skipping checkpoint {newest}: no checksum seal at its end (cut short, or not written by " \
           "this suite)" in err.splitlines()
    assert "resuming" in out
    assert json.loads((killed / "record.json").read_text())["attempts"] == 2

    _, stderr = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, stderr
    assert_bit_identical(final_state(reference), final_state(killed))
    assert metrics_without_timing(reference) == metrics_without_timing(killed)
    ref_final = json.loads((reference / "record.json").read_text())["final"]
    assert ref_final == json.loads((killed / "record.json").read_text())["final"]


def test_ctrl_c_is_one_line_and_the_run_resumes(tmp_path: Path, cli_env, capsys):
    config = CONFIGS["vanilla+aa"]
    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "conadv_repro.train", "--run-dir", str(run_dir), *config],
                               env=cli_env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 240
    while not any((run_dir / "checkpoints").glob("step-*.pt")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("interrupted; run the same")
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "interrupted" and not (run_dir / "lock.json").exists()
    status, out, err = call_main(train.main, ["--run-dir", str(run_dir), *config], capsys)
    assert status == 0 and "resuming" in out, err
