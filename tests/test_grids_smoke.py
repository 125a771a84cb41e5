"""Every grid is expanded and trained at the smoke scale: Table 1 whole, and at least one run of each
other grid (their other runs are Table 1's or like them).

Table 1 is the session's shared launch (`table1_smoke`, tests/analysis_fixture.py): the local executor
trains its 28 runs once, and the analysis tests read the same runs."""

from __future__ import annotations

import shutil

import pytest

from conadv_repro.launch import cli
from conadv_repro.launch.plan import apply_filters, expand
from conadv_repro.registry import load_experiments
from tests.helpers import call_main, run_cli

LAUNCH = ["-m", "conadv_repro.launch"]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, table1_smoke):
    # Holds Table 1's ConAdv 32k run (copied from the shared launch), which is also Table 3's cell.
    runs = tmp_path_factory.mktemp("grids") / "runs"
    (run,) = apply_filters(expand(load_experiments(["table1"]), scale="smoke", runs_dir=table1_smoke.runs_dir,
                                  sets={}),
                           ["row=ResNet-50+ConAdv", "column=32k"])
    shutil.copytree(run.run_dir, runs / run.run_dir.relative_to(table1_smoke.runs_dir))
    return runs


def test_table1_whole_at_smoke_scale(table1_smoke, cli_env, tmp_path):
    assert table1_smoke.returncode == 0, table1_smoke.stdout[-2000:] + table1_smoke.stderr[-2000:]
    assert table1_smoke.stdout.strip().splitlines()[-1] == "28 runs: 28 finished"
    assert table1_smoke.stdout.count("top1=") == 28
    again = run_cli([*LAUNCH, "table1", "--runs-dir", str(table1_smoke.runs_dir), "--cluster", "local"], cli_env,
                    tmp_path)
    assert again.returncode == 0 and "nothing to submit" in again.stdout
    assert again.stdout.strip().splitlines()[-1] == "28 runs: 28 finished"


@pytest.mark.parametrize("experiment, only", [
    ("table2", ["row=ResNet-50+ConAdv+AA", "column=96k"]),
    ("table4", ["row=ConAdv + AA", "column=16k"]),
    ("table5", ["row=ResNet-50 + ConAdv + AA 64k", "column=p=0"]),
    ("figure2", ["row=ResNet-50", "column=128k"]),  # Table 1 has no 128k column
    ("table3", ["row=ConAdv", "column=32k"]),  # Table 1's run (copied in runs_dir): nothing to train
    ("staleness", ["row=ConAdv tau=2", "column=96k"]),
])
def test_one_run_of_each_other_grid(runs_dir, capsys, monkeypatch, experiment, only):
    # In-process (the debug executor): the local executor's jobs are Table 1's above and Figure 4's below.
    # 10 steps rather than the smoke scale's 40: the grid's cell expands, builds and trains all the same.
    # Table 3's cell keeps the smoke scale's own config, so that it is Table 1's run.
    monkeypatch.setattr("pdb.post_mortem", lambda *a, **k: None)
    filters = [arg for item in only for arg in ("--only", item)]
    if experiment != "table3":
        filters += ["--set", "steps=10"]
    status, out, err = call_main(cli.main, [experiment, *filters, "--runs-dir", str(runs_dir), "--cluster", "debug"],
                                 capsys)
    assert status == 0, out[-2000:] + err[-2000:]
    assert out.strip().splitlines()[-1] == "1 run: 1 finished"
    assert ("nothing to submit" in out) == (experiment == "table3"), out[-2000:]
    sets = [] if experiment == "table3" else ["--set", "steps=10"]
    status, out, _ = call_main(cli.main, [experiment, *sets, "--dry-run", "--runs-dir", str(runs_dir), "--cluster",
                                          "local"], capsys)
    assert status == 0 and "finished" in out.strip().splitlines()[-1]


def test_one_run_of_figure4_as_a_two_process_local_job(runs_dir, cli_env, tmp_path):
    # A trainer and an attack worker: timed, on two processes, trained alone, its ranks met after their imports.
    filters = ["--only", "row=(b) ConAdv", "--only", "column=512"]
    out = run_cli([*LAUNCH, "figure4", *filters, "--runs-dir", str(runs_dir), "--cluster", "local"], cli_env,
                  tmp_path, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "1 run: 1 finished"
    assert "measure time: on this machine each trains alone" in out.stdout
    assert not list(runs_dir.glob("smoke/_jobs/*.imported"))
    whole = run_cli([*LAUNCH, "figure4", "--dry-run", "--runs-dir", str(runs_dir), "--cluster", "local"], cli_env,
                    tmp_path)
    assert whole.returncode == 0 and "finished" in whole.stdout.strip().splitlines()[-1]
