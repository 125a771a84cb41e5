"""Run directories travel: data_root is stored absolute, a moved run finds its data with --data-root
(evaluate and export), evaluate's --checkpoint and --batch-size, data_root's refusals, and Ctrl-C's
`interrupted` record (still resumable)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conadv_repro import evaluate, export, train
from conadv_repro.config import config_from_overrides
from conadv_repro.engine.run import run_training
from conadv_repro.engine.trainer import Trainer
from conadv_repro.errors import UserError
from conadv_repro.launch.states import run_state
from tests.helpers import call_main
from tests.test_export import CLASSES, _tiny_imagenet

# A 2-step ImageNet-layout run with a checkpoint after each step: a second or two on a CPU.
TINY_IMAGENET = ["data=imagenet", "model.name=resnet8", "model.width=4", "model.input_size=16", "batch_size=8",
                 "bn.group_size=4", "steps=2", "runtime.checkpoint_every=1", "runtime.threads=2",
                 "runtime.device=cpu"]


def _one_line_error(status: int, err: str) -> str:
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _evaluate(args: list[str], capsys) -> dict:
    status, out, err = call_main(evaluate.main, [*args, "--json", "--splits", "test,val"], capsys)
    assert status == 0, err
    return json.loads(out)


def _accuracies(result: dict) -> dict:
    return {split: (result[split]["top1"], result[split]["top5"], result[split]["count"]) for split in ("test", "val")}


def test_a_moved_run_evaluates_and_exports_with_data_root(tmp_path: Path, monkeypatch, capsys):
    origin = tmp_path / "origin"
    _tiny_imagenet(origin / "inet")
    monkeypatch.chdir(origin)
    # Both relative, as typed at a shell: the config must not keep "inet".
    assert call_main(train.main, ["--run-dir", "run", "data_root=inet", *TINY_IMAGENET], capsys)[0] == 0
    stored = json.loads((origin / "run" / "config.json").read_text())["config"]
    assert stored["data_root"] == str(origin / "inet")
    before = _evaluate(["run"], capsys)
    assert before["checkpoint"] == "final.pt" and before["step"] == 2

    # The run and its data move apart, the data under another name; evaluate from a third folder.
    moved, data = tmp_path / "elsewhere" / "moved-run", tmp_path / "datasets" / "imagenet-2012"
    moved.parent.mkdir()
    data.parent.mkdir()
    shutil.move(origin / "run", moved)
    shutil.move(origin / "inet", data)
    shutil.rmtree(origin)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")

    status, _, err = call_main(evaluate.main, [str(moved)], capsys)
    message = _one_line_error(status, err)
    assert str(origin / "inet") in message and "--data-root DIR" in message  # the stored folder, gone now

    after = _evaluate([str(moved), "--data-root", "../datasets/imagenet-2012", "--batch-size", "3"], capsys)
    assert _accuracies(after) == _accuracies(before)
    for split in ("test", "val"):
        assert after[split]["loss"] == pytest.approx(before[split]["loss"], rel=1e-5)

    # --checkpoint picks that file, not the run's final one.
    first = _evaluate([str(moved), "--data-root", str(data), "--checkpoint",
                       str(moved / "checkpoints" / "step-00000001.pt")], capsys)
    assert (first["checkpoint"], first["step"]) == ("step-00000001.pt", 1)
    relative = _evaluate([str(moved), "--data-root", str(data), "--checkpoint", "checkpoints/step-00000001.pt"],
                         capsys)  # as the run directory lists it
    assert relative == first

    # Export writes the class names, which it reads from the data folder, instead of label indices.
    status, _, err = call_main(export.main, [str(moved), "indices.pt"], capsys)
    assert status == 0 and "--data-root" in err
    assert json.loads(Path("indices.json").read_text())["classes"] == ["0", "1", "2", "3"]
    status, _, err = call_main(export.main, [str(moved), "named.pt", "--data-root", str(data)], capsys)
    assert status == 0, err
    assert json.loads(Path("named.json").read_text())["classes"] == CLASSES

    # The options' bad input: one line, exit status 2.
    for argv, fragment in (
        ([str(moved), "--data-root", "nowhere"], "--data-root nowhere does not exist"),
        ([str(moved), "--data-root", str(moved / "config.json")], "is a file, not a folder"),
        ([str(moved), "--batch-size", "0"], "argument --batch-size: 0 is not allowed; it must be at least 1"),
        ([str(moved), "--batch-size", "many"], "argument --batch-size: 'many' is not an integer"),
        ([str(moved), "--data-root", str(data), "--checkpoint", "missing.pt"], "--checkpoint missing.pt does not exist"),
        ([str(moved), "--data-root", str(data), "--checkpoint", str(moved / "config.json")], "does not verify"),
    ):
        status, _, err = call_main(evaluate.main, argv, capsys)
        assert fragment in _one_line_error(status, err), argv
    status, _, err = call_main(export.main, [str(moved), "x.pt", "--data-root", "nowhere"], capsys)
    assert "--data-root nowhere does not exist" in _one_line_error(status, err)
    assert not Path("x.pt").exists()


def test_data_root_is_absolute_unhashed_and_only_for_datasets_that_read_one(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config_from_overrides(["data=imagenet", "data_root=inet"])
    assert cfg.data_root == str(tmp_path / "inet")
    assert cfg.run_id() == config_from_overrides(["data=imagenet"]).run_id()
    assert config_from_overrides(["data=cifar10"]).data_root == ""  # empty stays empty, not the cwd
    assert config_from_overrides(["data=imagenet", "data_root=/x/../data"]).data_root == "/data"
    with pytest.raises(UserError) as refused:
        config_from_overrides(["data_root=/x"])
    message = str(refused.value)
    assert "data_root=/x" in message and "data=digits" in message and "cifar10, imagenet" in message


def test_imagenet_without_data_root_says_so_without_a_placeholder(tmp_path: Path, capsys):
    status, _, err = call_main(train.main, ["--run-dir", str(tmp_path / "run"), "data=imagenet"], capsys)
    line = _one_line_error(status, err)
    assert "data=imagenet needs data_root=DIR" in line and "ROOT" not in line
    assert not (tmp_path / "run").exists()


def test_ctrl_c_records_interrupted_and_the_run_resumes(tmp_path: Path, monkeypatch):
    cfg = config_from_overrides(["batch_size=64", "bn.group_size=16", "model.width=4", "steps=4",
                                 "runtime.checkpoint_every=1", "runtime.threads=2", "runtime.device=cpu"])
    original = Trainer.train_step

    def ctrl_c_at_step_2(self, step, micro_batches):
        if step == 2:
            raise KeyboardInterrupt
        return original(self, step, micro_batches)

    monkeypatch.setattr(Trainer, "train_step", ctrl_c_at_step_2)
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, run_dir, log=lambda _msg: None)
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "interrupted" and record["steps_done"] == 2 and record["final"] is None
    assert not (run_dir / "lock.json").exists()
    assert run_state(run_dir).state == "unfinished"  # what launch status says, and resumes

    from analysis.records import run_row  # the analysis reads it as the launcher does

    assert run_row(run_dir)["status"] == "unfinished"
    monkeypatch.setattr(Trainer, "train_step", original)
    lines: list[str] = []
    resumed = run_training(cfg, run_dir, log=lines.append)
    assert resumed["status"] == "finished" and resumed["attempts"] == 2
    assert any("resuming" in line and "at step 2/4" in line for line in lines)


def test_a_stored_digits_config_with_a_data_root_still_loads():
    from conadv_repro.config import Config, config_from_dict

    stored = {**Config().to_dict(), "data_root": "/was/ignored"}  # as written before the refusal
    assert config_from_dict(stored) == Config()
