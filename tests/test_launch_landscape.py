"""The launcher measures where a run trained: a declared landscape measurement, its state, its failure."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conadv_repro import landscape_state
from conadv_repro.errors import UserError
from conadv_repro.landscape import store
from conadv_repro.launch import cli
from conadv_repro.launch.plan import apply_filters, expand
from conadv_repro.launch.states import run_state
from conadv_repro.registry import EXPERIMENTS_ENV, USER_EXPERIMENTS, load_experiment, load_experiments
from tests.helpers import call_main, run_cli

LAUNCH = ["-m", "conadv_repro.launch"]
ONE = ["--only", "method=vanilla", "--only", "paper_batch=32k", "--set", "steps=4"]
DECLARED = {"measures": ["eigenvalue", "trace", "adaptive"], "examples": 32, "micro_batch": 128}


def one_run(runs: Path):
    [run] = apply_filters(expand(load_experiments(["sharpness"]), scale="smoke", runs_dir=runs,
                                 sets={"steps": "4"}), ["method=vanilla", "paper_batch=32k"])
    return run


@pytest.mark.parametrize("value, message", [
    ({"measures": ["sharpest"]}, "unknown measure 'sharpest'; allowed: eigenvalue, trace"),
    ({"measures": ["between"]}, "unknown measure 'between'"),
    ({"measures": ["trace"], "sample": 3}, "unknown key 'sample'"),
    ({"measures": ["trace"], "examples": 0}, "['examples'] must be an integer >= 1"),
])
def test_a_bad_declaration_is_refused_when_the_registry_loads(tmp_path, monkeypatch, value, message):
    def forget_user_experiments() -> None:  # the user folder is imported once per process as one package
        for name in [n for n in sys.modules if n.split(".")[0] == USER_EXPERIMENTS]:
            del sys.modules[name]

    forget_user_experiments()
    monkeypatch.setattr(sys, "path", list(sys.path))
    folder = tmp_path / "experiments"
    folder.mkdir()
    (folder / "bad.py").write_text(
        "from conadv_repro.registry import Cell, Experiment\n"
        "EXPERIMENT = Experiment(name='bad', title='t', description='d', rows=('r',), columns=('8k',),\n"
        "    cells=(Cell(row='r', column='8k', paper_batch='8k', overrides={'method': 'vanilla'}),),\n"
        f"    settings={{'landscape': {value!r}}})\n")
    monkeypatch.setenv(EXPERIMENTS_ENV, str(folder))
    try:
        with pytest.raises(UserError) as caught:
            load_experiment("bad")
    finally:
        forget_user_experiments()
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_setting_changes_no_run_id_and_the_grid_is_table1s():
    sharpness = {run.run_id for run in expand(load_experiments(["sharpness"]), scale="smoke", runs_dir=Path("r"),
                                              sets={})}
    table1 = {run.run_id for run in expand(load_experiments(["table1"]), scale="smoke", runs_dir=Path("r"), sets={})}
    assert len(sharpness) == 6 and sharpness <= table1
    assert landscape_state.declared_for(load_experiment("sharpness").settings, "smoke") == DECLARED
    # The flatness grid shares 6 of its runs and declares the same measurement at every scale: measured once.
    for scale in ("smoke", "proxy", "cifar10", "paper"):
        assert landscape_state.declared_for(load_experiment("flatness").settings, scale) == \
            landscape_state.declared_for(load_experiment("sharpness").settings, scale)
    assert landscape_state.declared_for(load_experiment("sharpness").settings, "paper")["micro_batch"] == 32


def test_a_finished_run_is_unmeasured_until_its_entry_is_there(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "record.json").write_text(json.dumps({"status": "finished"}))
    final = run_dir / "checkpoints" / "final.pt"
    final.write_bytes(b"weights")
    assert run_state(run_dir).state == "finished"  # nothing declared
    assert run_state(run_dir, landscape=DECLARED, data="digits").state == "unmeasured"
    checkpoint = {"file": "final.pt", "step": 4, "sha256": hashlib.sha256(b"weights").hexdigest()}
    other = landscape_state.measure_key(landscape_state.settings_of({**DECLARED, "examples": 64}, "digits"),
                                        checkpoint, None)
    store.store(run_dir, {"key": other})  # other settings: still unmeasured
    assert run_state(run_dir, landscape=DECLARED, data="digits").state == "unmeasured"
    key = landscape_state.measure_key(landscape_state.settings_of(DECLARED, "digits"), checkpoint, None)
    store.store(run_dir, {"key": key})
    assert run_state(run_dir, landscape=DECLARED, data="digits").state == "finished"
    final.write_bytes(b"other weights")  # a final.pt that is not the one measured
    assert run_state(run_dir, landscape=DECLARED, data="digits").state == "unmeasured"


def test_a_status_trusts_the_stored_hash_while_final_pt_is_untouched(tmp_path, monkeypatch):
    # At the paper scale a final.pt is hundreds of MB: status must not read it each time.
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "record.json").write_text(json.dumps({"status": "finished"}))
    final = run_dir / "checkpoints" / "final.pt"
    final.write_bytes(b"weights")
    checkpoint = {"file": "final.pt", "step": 4, "sha256": hashlib.sha256(b"weights").hexdigest()}
    key = landscape_state.measure_key(landscape_state.settings_of(DECLARED, "digits"), checkpoint, None)
    store.store(run_dir, {"key": key, "checkpoint_stat": landscape_state.checkpoint_stat(final)})

    def no_reading(path):
        raise AssertionError(f"{path} was read")
    monkeypatch.setattr(landscape_state, "file_sha256", no_reading)
    assert run_state(run_dir, landscape=DECLARED, data="digits").state == "finished"
    stat = final.stat()
    os.utime(final, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # touched: the hash is checked again
    with pytest.raises(AssertionError, match="was read"):
        run_state(run_dir, landscape=DECLARED, data="digits")


def test_a_launch_trains_and_measures_and_a_relaunch_only_measures(tmp_path, cli_env):
    runs = tmp_path / "runs"
    args = [*LAUNCH, "sharpness", *ONE, "--runs-dir", str(runs), "--cluster", "local"]
    first = run_cli(args, cli_env, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.strip().splitlines()[-1] == "1 run: 1 finished"
    run = one_run(runs)
    [entry] = store.read_entries(run.run_dir)
    assert entry["key"]["measures"] == ["eigenvalue", "trace", "adaptive"] and entry["key"]["examples"] == 32
    assert entry["key"]["micro_batch"] == 128 and entry["key"]["checkpoint"]["file"] == "final.pt"
    attempts = json.loads((run.run_dir / "record.json").read_text())["attempts"]

    (run.run_dir / "landscape.json").unlink()
    dry = run_cli([*args, "--dry-run"], cli_env, tmp_path)
    assert "unmeasured" in dry.stdout and "1 only to measure" in dry.stdout, dry.stdout + dry.stderr
    assert dry.stdout.strip().splitlines()[-1] == "1 run: 1 unmeasured"
    second = run_cli(args, cli_env, tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.strip().splitlines()[-1] == "1 run: 1 finished"
    assert len(store.read_entries(run.run_dir)) == 1
    record = json.loads((run.run_dir / "record.json").read_text())
    assert record["status"] == "finished" and record["attempts"] == attempts  # nothing trained again
    assert not (run.run_dir / "lock.json").exists()  # the measuring job's claim is released


def test_a_failed_measurement_leaves_the_training_finished_and_shows_in_status(tmp_path, monkeypatch, capsys):
    def broken(*_args, **_kwargs):
        raise RuntimeError("simulated measurement failure")

    monkeypatch.setattr("conadv_repro.landscape.measure.measure_run", broken)
    runs = tmp_path / "runs"
    args = ["sharpness", *ONE, "--runs-dir", str(runs)]
    status, out, _ = call_main(cli.main, [*args, "--cluster", "debug"], capsys)
    assert status == 1 and out.strip().splitlines()[-1] == "1 run: 1 unmeasured", out
    run = one_run(runs)
    assert json.loads((run.run_dir / "record.json").read_text())["status"] == "finished"
    assert not (run.run_dir / "landscape.json").exists()
    _, shown, _ = call_main(cli.main, ["status", *args], capsys)
    assert "landscape measurement failed: RuntimeError: simulated measurement failure" in shown, shown
    assert shown.strip().splitlines()[-1] == "1 run: 1 unmeasured"


def test_the_launchers_planning_and_states_import_no_torch():
    code = ("import sys\n"
            "import conadv_repro.landscape_state, conadv_repro.launch.states, conadv_repro.launch.cli\n"
            "import conadv_repro.launch.estimate\n"
            "print(sorted(m for m in ('torch', 'conadv_repro.engine') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_job_that_only_measures_asks_for_one_task():
    [run] = apply_filters(expand(load_experiments(["sharpness"]), scale="smoke", runs_dir=Path("r"), sets={},
                                 gpus_per_run=2), ["method=vanilla", "paper_batch=32k"])
    assert cli.job_processes(run) == 2 and cli.job_processes(run, {run.run_id}) == 1
