"""Every grid is expanded and trained at the smoke scale: Table 1 whole, and at least one run of each
other grid (their other runs are Table 1's or like them)."""

from __future__ import annotations

import pytest

from tests.helpers import run_cli

LAUNCH = ["-m", "conadv_repro.launch"]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("grids") / "runs"


def test_table1_whole_at_smoke_scale(runs_dir, cli_env, tmp_path):
    out = run_cli([*LAUNCH, "table1", "--runs-dir", str(runs_dir), "--cluster", "local"], cli_env, tmp_path,
                  timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "28 runs: 28 finished"
    assert out.stdout.count("top1=") == 28


@pytest.mark.parametrize("experiment, only", [
    ("table2", ["row=ResNet-50+ConAdv+AA", "column=96k"]),
    ("table4", ["row=ConAdv + AA", "column=16k"]),
    ("table5", ["row=ResNet-50 + ConAdv + AA 64k", "column=p=0"]),
    ("figure2", ["row=ResNet-50+AA", "column=256k"]),
    ("table3", ["row=ConAdv", "column=32k"]),  # Table 1's run: finished above, nothing to train
    ("figure4", ["row=(b) ConAdv", "column=512"]),  # a trainer and an attack worker: a two-process job
    ("staleness", ["row=ConAdv tau=2", "column=96k"]),
])
def test_one_run_of_each_other_grid(runs_dir, cli_env, tmp_path, experiment, only):
    filters = [arg for item in only for arg in ("--only", item)]
    out = run_cli([*LAUNCH, experiment, *filters, "--runs-dir", str(runs_dir), "--cluster", "local"], cli_env,
                  tmp_path, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "1 run: 1 finished"
    if experiment == "figure4":  # timed, on two processes: trained alone, its ranks met after their imports
        assert "measure time: on this machine each trains alone" in out.stdout
        assert not list(runs_dir.glob("smoke/_jobs/*.imported"))
    whole = run_cli([*LAUNCH, experiment, "--dry-run", "--runs-dir", str(runs_dir), "--cluster", "local"], cli_env,
                    tmp_path)
    assert whole.returncode == 0 and "finished" in whole.stdout.strip().splitlines()[-1]
