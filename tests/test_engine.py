"""The training loop: accumulation equals one big batch, records, divergence, failure, config clashes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conadv_repro.config import config_from_overrides
from conadv_repro.engine import run as run_module
from conadv_repro.engine.run import run_training
from conadv_repro.engine.trainer import Trainer
from conadv_repro.errors import UserError

FAST = ["batch_size=64", "bn.group_size=16", "runtime.threads=2", "runtime.device=cpu", "model.width=8"]


def quiet(_msg: str) -> None:
    pass


def test_accumulated_step_equals_one_big_batch_step():
    big = Trainer(config_from_overrides(FAST), log=quiet)
    small = Trainer(config_from_overrides([*FAST, "runtime.micro_batch=16"]), log=quiet)
    assert small.derived.accumulation == 4
    small.model.load_state_dict(big.model.state_dict())
    for trainer in (big, small):
        trainer.open_batches(0)
        for step in range(3):
            trainer.train_step(step, trainer.step_batches(step))
    big_state, small_state = big.model.state_dict(), small.model.state_dict()
    for key in big_state:
        torch.testing.assert_close(small_state[key], big_state[key], rtol=1e-4, atol=1e-5, msg=key)
    moved = [k for k in big_state if "running_mean" in k and big_state[k].abs().sum() > 0]
    assert moved, "the running statistics should have moved"


def test_a_short_run_writes_its_directory_and_is_not_run_twice(tmp_path: Path):
    cfg = config_from_overrides([*FAST, "steps=12", "runtime.log_every=4", "runtime.checkpoint_every=5"])
    lines: list[str] = []
    record = run_training(cfg, tmp_path / "run", log=lines.append)
    assert record["status"] == "finished"
    run_dir = tmp_path / "run"
    stored = json.loads((run_dir / "config.json").read_text())
    assert stored["run_id"] == cfg.run_id() and stored["derived"]["steps_per_epoch"] == 1257 // 64
    assert stored["derived"]["total_steps"] == 12 and stored["derived"]["warmup_steps"] > 0
    final = record["final"]
    for key in ("test_top1", "test_top5", "train_top1", "train_top1_running"):
        assert final[key] is not None and 0 <= final[key] <= 100
    assert record["environment"]["torch"] == torch.__version__
    assert record["environment"]["packages"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [4, 8, 12]
    assert rows[-1]["kind"] == "final"
    assert any("step 8/12" in line for line in lines)  # progress lines
    assert (run_dir / "checkpoints" / "final.pt").exists()
    assert not (run_dir / "lock.json").exists()
    again: list[str] = []
    assert run_training(cfg, run_dir, log=again.append)["status"] == "finished"
    assert any("already finished" in line and "nothing to do" in line for line in again)


def test_a_non_finite_loss_ends_the_run_as_diverged(tmp_path: Path):
    cfg = config_from_overrides([*FAST, "steps=30", "optim.name=sgd", "optim.lr=1e8",
                                 "schedule.warmup_epochs=0"])
    record = run_training(cfg, tmp_path / "run", log=quiet)
    assert record["status"] == "diverged"
    assert "loss is" in record["error"]
    again: list[str] = []
    run_training(cfg, tmp_path / "run", log=again.append)
    assert "already diverged" in again[0]


def test_an_exception_marks_the_run_failed_and_a_restart_resumes(tmp_path: Path, monkeypatch):
    cfg = config_from_overrides([*FAST, "steps=6", "runtime.checkpoint_every=2"])
    original = Trainer.train_step

    def broken(self, step, micro_batches):
        if step == 4:
            raise RuntimeError("simulated crash")
        return original(self, step, micro_batches)

    monkeypatch.setattr(Trainer, "train_step", broken)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(cfg, tmp_path / "run", log=quiet)
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["status"] == "failed" and "simulated crash" in record["error"]
    assert record["steps_done"] == 4
    monkeypatch.setattr(Trainer, "train_step", original)
    lines: list[str] = []
    record = run_training(cfg, tmp_path / "run", log=lines.append)
    assert record["status"] == "finished" and record["attempts"] == 2
    assert any("resuming" in line and "step 4/6" in line for line in lines)


def test_an_error_while_the_job_is_requeued_leaves_the_run_resumable_not_failed(tmp_path: Path, monkeypatch):
    # E.g. submitit's `scontrol requeue` failing inside the preemption handler: the run itself did not fail.
    import subprocess
    import threading

    from conadv_repro.engine import lock

    monkeypatch.setattr(lock, "_REQUEUED", threading.Event())
    cfg = config_from_overrides([*FAST, "steps=6", "runtime.checkpoint_every=2"])
    original = Trainer.train_step

    def preempted(self, step, micro_batches):
        if step == 4:
            lock.mark_requeued()
            raise subprocess.CalledProcessError(1, ["scontrol", "requeue", "7"])
        return original(self, step, micro_batches)

    monkeypatch.setattr(Trainer, "train_step", preempted)
    lines: list[str] = []
    with pytest.raises(subprocess.CalledProcessError):
        run_training(cfg, tmp_path / "run", log=lines.append)
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["status"] == "running" and "error" not in record
    assert any("interrupted while its job was being requeued" in line for line in lines)


def test_a_run_directory_holding_another_config_is_refused_untouched(tmp_path: Path):
    run_dir = tmp_path / "run"
    run_training(config_from_overrides([*FAST, "steps=2"]), run_dir, log=quiet)
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    with pytest.raises(UserError, match="holds a different config") as info:
        run_training(config_from_overrides([*FAST, "steps=2", "seed=5"]), run_dir, log=quiet)
    assert "seed=0 (yours 5)" in str(info.value)
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


def test_the_engine_has_no_method_branches():
    # The loop asks a strategy object; it never tests which method it runs.
    source = Path(run_module.__file__).read_text() + Path(run_module.__file__).with_name("trainer.py").read_text()
    assert "method ==" not in source and "cfg.method ==" not in source


def tiny_net(*, num_classes: int, in_channels: int, image_size: int) -> torch.nn.Module:
    """A user's own network, named by import path (its BatchNorm becomes a split ghost BN)."""
    return torch.nn.Sequential(torch.nn.Conv2d(in_channels, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                               torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(4, num_classes))


def test_a_network_named_by_import_path_trains(tmp_path: Path):
    from conadv_repro.model.split_bn import split_bn_modules

    cfg = config_from_overrides([*FAST, "steps=3", "model.name=tests.test_engine:tiny_net"])
    trainer = Trainer(cfg, log=quiet)
    assert len(list(split_bn_modules(trainer.model))) == 1
    record = run_training(cfg, tmp_path / "run", log=quiet)
    assert record["status"] == "finished"
    with pytest.raises(UserError, match="model.name 'nosuch_pkg:build' cannot be imported"):
        Trainer(config_from_overrides([*FAST, "model.name=nosuch_pkg:build"]), log=quiet)


def test_images_per_second_counts_only_the_steps_of_its_window(monkeypatch):
    # A fake clock: the rate must cover the steps since the last restart, not the checkpoint time before it.
    from types import SimpleNamespace

    from conadv_repro.engine import progress as progress_module

    clock = [0.0]
    monkeypatch.setattr(progress_module, "time", SimpleNamespace(time=lambda: clock[0]))
    printer = progress_module.ProgressPrinter(name="r", total_steps=30, steps_per_epoch=30, batch_size=64,
                                              start_step=0, log=quiet, start_time=0.0)
    clock[0] = 10.0
    assert printer.step_line(10, 1.0, 0.0, 0.1) == pytest.approx(64.0)
    clock[0] = 50.0  # steps 11-12 took 2 s, then a checkpoint took 38 s
    printer.restart_window(12)
    clock[0] = 58.0
    assert printer.step_line(20, 1.0, 0.0, 0.1) == pytest.approx(8 * 64 / 8.0)


def test_the_loop_restarts_the_timing_window_after_each_checkpoint(tmp_path: Path, monkeypatch):
    from conadv_repro.engine.progress import ProgressPrinter

    restarts: list[int] = []
    original = ProgressPrinter.restart_window
    monkeypatch.setattr(ProgressPrinter, "restart_window",
                        lambda self, steps_done: (restarts.append(steps_done), original(self, steps_done))[1])
    cfg = config_from_overrides([*FAST, "steps=10", "runtime.log_every=5", "runtime.checkpoint_every=3"])
    run_training(cfg, tmp_path / "run", log=quiet)
    assert {3, 6, 9} <= set(restarts), restarts


def test_a_live_lock_is_refused_before_the_long_setup(tmp_path: Path, monkeypatch):
    import os
    import socket
    import time as time_module

    from conadv_repro.engine.lock import LockHeldError

    cfg = config_from_overrides([*FAST, "steps=2"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "lock.json").write_text(json.dumps({"token": "someone", "pid": os.getpid(), "host": socket.gethostname(),
                                                   "heartbeat": time_module.time()}))

    def no_setup(*args, **kwargs):
        raise AssertionError("the dataset and network were built before the lock was checked")

    monkeypatch.setattr(Trainer, "__init__", no_setup)
    with pytest.raises(LockHeldError, match="is in use by pid"):
        run_training(cfg, run_dir, log=quiet)
