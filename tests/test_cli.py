"""The command line: --help explains every option; bad input is one line, exit status 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conadv_repro import evaluate, train
from conadv_repro.config import FIELDS
from tests.helpers import call_main, run_cli


def test_help_lists_every_config_key(capsys):
    status, out, _ = call_main(train.main, ["--help"], capsys)
    assert status == 0
    for key in FIELDS:
        assert f"  {key}=" in out, key
    assert "--run-dir" in out


BAD_INPUT = [
    (["method=fgsm"], "method='fgsm' is not allowed"),
    (["data=mnist"], "data='mnist' is not allowed"),
    (["nosuch.key=1"], "unknown config key 'nosuch.key'"),
    (["batch_size=100"], "batch_size=100 is not a whole number of BN groups of bn.group_size=32"),
    (["data=imagenet", "data_root={tmp}/nowhere"], "nowhere"),
    (["data=imagenet", "data_root={tmp}/empty"], "empty"),
    (["data=cifar10", "data_root={tmp}/nowhere"], "nowhere"),
    (["data=imagenet"], "data=imagenet needs data_root=DIR"),
    (["data_root={tmp}/nowhere"], "has no use with data=digits"),
    (["method=disadv", "attack.epsilon=-1"], "attack.epsilon=-1.0 must be >= 0.0"),
    (["method=disadv", "attack.epsilon=300"], "attack.epsilon=300.0 must be <= 255.0"),
    (["scale=proxy", "paper_batch=32k", "batch_size=96"], "does not match paper_batch=32k at scale=proxy"),
    (["method=conadv", "attack.bn_mode=frozen"], "attack.bn_mode='frozen' is not allowed"),
    (["method=conadv", "conadv.tau=-1"], "conadv.tau=-1 must be >= 0"),
    (["attack.epsilon=3"], "attack.epsilon has no use with method=vanilla"),
]


def _assert_one_line_and_nothing_written(status: int, err: str, fragment: str, tmp_path: Path) -> None:
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("overrides, fragment", BAD_INPUT)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, capsys, monkeypatch, overrides, fragment):
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    args = [o.replace("{tmp}", str(tmp_path)) for o in overrides]
    status, _, err = call_main(train.main, ["--run-dir", str(tmp_path / "run"), *args], capsys)
    _assert_one_line_and_nothing_written(status, err, fragment, tmp_path)


def test_bad_input_through_the_real_command(tmp_path: Path, cli_env):
    # The in-process tests above call main(); this one runs `python -m conadv_repro.train` itself.
    overrides, fragment = BAD_INPUT[0]
    out = run_cli(["-m", "conadv_repro.train", "--run-dir", str(tmp_path / "run"), *overrides], cli_env, tmp_path)
    _assert_one_line_and_nothing_written(out.returncode, out.stderr, fragment, tmp_path)


def test_a_run_directory_with_another_config_is_refused(tmp_path: Path, capsys):
    common = ["--run-dir", str(tmp_path / "run"), "steps=2", "model.width=4", "runtime.device=cpu"]
    assert call_main(train.main, common, capsys)[0] == 0
    status, _, err = call_main(train.main, [*common, "seed=9"], capsys)
    assert status == 2
    assert err.count("\n") == 1 and "holds a different config" in err


def test_evaluate_prints_test_and_train_accuracy(tmp_path: Path, capsys):
    run_dir = tmp_path / "run"
    assert call_main(train.main, ["--run-dir", str(run_dir), "steps=3", "model.width=4", "runtime.device=cpu"],
                     capsys)[0] == 0
    status, out, err = call_main(evaluate.main, [str(run_dir)], capsys)
    assert status == 0, err
    assert "test  top-1" in out and "train top-1" in out and "final.pt" in out
    status, _, err = call_main(evaluate.main, [str(tmp_path / "nothing")], capsys)
    assert status == 2 and "no such run directory" in err


def test_the_run_id_under_torchrun_does_not_depend_on_the_trainer_count(capsys, monkeypatch):
    def resolved(world: int, *extra: str) -> dict:
        monkeypatch.setenv("WORLD_SIZE", str(world))
        status, out, err = call_main(train.main, ["--print-config", "method=conadv", "conadv.attack_workers=1",
                                                  "batch_size=64", "bn.group_size=16", *extra], capsys)
        assert status == 0, err
        return json.loads(out)

    one_trainer, two_trainers = resolved(2), resolved(3)
    # The same run on any number of processes (it resumes on another), the trainers filled in from WORLD_SIZE.
    assert one_trainer["run_id"] == two_trainers["run_id"] == resolved(1)["run_id"]
    assert (one_trainer["config"]["runtime.trainers"], two_trainers["config"]["runtime.trainers"]) == (0, 2)
    assert resolved(3, "runtime.trainers=2")["run_id"] == two_trainers["run_id"]
    monkeypatch.setenv("WORLD_SIZE", "two")
    status, _, err = call_main(train.main, ["--print-config"], capsys)
    assert status == 2 and err.strip() == "error: WORLD_SIZE='two' is not an integer"


def test_a_run_directory_taken_over_mid_run_is_one_line(tmp_path: Path, monkeypatch, capsys):
    from conadv_repro import train
    from conadv_repro.engine import run

    def taken_over(*_args, **_kwargs):
        raise run.LockLost("run directory R was taken over by another process; stopping without writing to it")

    monkeypatch.setattr(run, "run_training", taken_over)
    assert train.main(["--run-dir", str(tmp_path / "run")]) == 1
    assert capsys.readouterr().err == ("error: run directory R was taken over by another process; stopping "
                                       "without writing to it\n")
