"""The command line: --help explains every option; bad input is one line, exit status 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conadv_repro.config import FIELDS
from tests.helpers import run_cli


def test_help_lists_every_config_key(tmp_path: Path, cli_env):
    out = run_cli(["-m", "conadv_repro.train", "--help"], cli_env, tmp_path)
    assert out.returncode == 0
    for key in FIELDS:
        assert f"  {key}=" in out.stdout, key
    assert "--run-dir" in out.stdout


@pytest.mark.parametrize("overrides, fragment", [
    (["method=fgsm"], "method='fgsm' is not allowed"),
    (["data=mnist"], "data='mnist' is not allowed"),
    (["nosuch.key=1"], "unknown config key 'nosuch.key'"),
    (["batch_size=100"], "batch_size=100 is not a whole number of BN groups of bn.group_size=32"),
    (["data=imagenet", "data_root={tmp}/nowhere"], "nowhere"),
    (["data=imagenet", "data_root={tmp}/empty"], "empty"),
    (["data=cifar10", "data_root={tmp}/nowhere"], "nowhere"),
    (["method=disadv", "attack.epsilon=-1"], "attack.epsilon=-1.0 must be >= 0.0"),
    (["method=conadv", "attack.bn_mode=frozen"], "attack.bn_mode='frozen' is not allowed"),
    (["method=conadv", "conadv.tau=-1"], "conadv.tau=-1 must be >= 0"),
    (["attack.epsilon=3"], "attack.epsilon has no use with method=vanilla"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, cli_env, overrides, fragment):
    (tmp_path / "empty").mkdir()
    run_dir = tmp_path / "run"
    args = [o.replace("{tmp}", str(tmp_path)) for o in overrides]
    out = run_cli(["-m", "conadv_repro.train", "--run-dir", str(run_dir), *args], cli_env, tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert fragment in lines[0]
    assert "Traceback" not in out.stderr
    assert not run_dir.exists()
    assert not (tmp_path / "runs").exists()


def test_a_run_directory_with_another_config_is_refused(tmp_path: Path, cli_env):
    run_dir = tmp_path / "run"
    common = ["--run-dir", str(run_dir), "steps=2", "model.width=4", "runtime.device=cpu"]
    assert run_cli(["-m", "conadv_repro.train", *common], cli_env, tmp_path).returncode == 0
    out = run_cli(["-m", "conadv_repro.train", *common, "seed=9"], cli_env, tmp_path)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "holds a different config" in out.stderr


def test_evaluate_prints_test_and_train_accuracy(tmp_path: Path, cli_env):
    run_dir = tmp_path / "run"
    assert run_cli(["-m", "conadv_repro.train", "--run-dir", str(run_dir), "steps=3", "model.width=4",
                    "runtime.device=cpu"], cli_env, tmp_path).returncode == 0
    out = run_cli(["-m", "conadv_repro.evaluate", str(run_dir)], cli_env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "test  top-1" in out.stdout and "train top-1" in out.stdout and "final.pt" in out.stdout
    missing = run_cli(["-m", "conadv_repro.evaluate", str(tmp_path / "nothing")], cli_env, tmp_path)
    assert missing.returncode == 2 and "not a run directory" in missing.stderr


def test_the_run_id_under_torchrun_names_the_trainer_count(tmp_path: Path, cli_env):
    def run_id(world: int, *extra: str) -> str:
        out = run_cli(["-m", "conadv_repro.train", "--print-config", "method=conadv", "conadv.attack_workers=1",
                       "batch_size=64", "bn.group_size=16", *extra], {**cli_env, "WORLD_SIZE": str(world)}, tmp_path)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)["run_id"]

    one_trainer, two_trainers = run_id(2), run_id(3)
    assert one_trainer == run_id(1)  # one trainer keeps the default, as a launcher's run does
    assert one_trainer != two_trainers
    assert two_trainers == run_id(3, "runtime.trainers=2")  # what the launcher names
    bad = run_cli(["-m", "conadv_repro.train", "--print-config"], {**cli_env, "WORLD_SIZE": "two"}, tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: WORLD_SIZE='two' is not an integer"


def test_a_run_directory_taken_over_mid_run_is_one_line(tmp_path: Path, monkeypatch, capsys):
    from conadv_repro import train
    from conadv_repro.engine import run

    def taken_over(*_args, **_kwargs):
        raise run.LockLost("run directory R was taken over by another process; stopping without writing to it")

    monkeypatch.setattr(run, "run_training", taken_over)
    assert train.main(["--run-dir", str(tmp_path / "run")]) == 1
    assert capsys.readouterr().err == ("error: run directory R was taken over by another process; stopping "
                                       "without writing to it\n")
