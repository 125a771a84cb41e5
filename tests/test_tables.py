"""make_tables.py on records of real smoke runs: cells parsed back and checked against the records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

import analysis.make_tables
from conadv_repro.registry import load_experiment
from tests.conftest import REPO
from tests.helpers import call_main

SCRIPT = str(REPO / "analysis" / "make_tables.py")


def make_tables(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def records(runs: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in runs.glob("smoke/*/record.json")}


def test_table1_cells_are_the_records_beside_the_papers_numbers(smoke_runs, tmp_path, cli_env):
    out = make_tables(["--runs-dir", str(smoke_runs), "--out", str(tmp_path / "results"), "--experiments", "table1"],
                      cli_env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "table1: 6 of 28 cells filled (smoke scale)" in out.stdout
    cells = pd.read_csv(tmp_path / "results" / "smoke" / "table1.csv")
    assert len(cells) == 28
    recs = records(smoke_runs)
    paper = {(c.row, c.column): c.paper["test_top1"] for c in load_experiment("table1").cells}
    filled = cells[cells["runs_finished"] > 0]
    assert len(filled) == 6
    for cell in filled.itertuples():
        record = recs[cell.run_ids]
        assert record["status"] == "finished"
        assert cell.ours_mean == record["final"]["test_top1"]
        assert cell.paper == paper[(cell.row, cell.column)]
        assert abs(cell.diff - (cell.ours_mean - cell.paper)) < 1e-9
    assert set(filled["row"]) == {"ResNet-50", "ResNet-50+AA", "ResNet-50+ConAdv"}
    markdown = (tmp_path / "results" / "smoke" / "table1.md").read_text()
    assert "6 of 28 cells filled, smoke scale" in markdown
    assert "| ResNet-50 | missing / 76.9 |" in markdown  # 1k has no run
    vanilla_32k = filled[(filled.row == "ResNet-50") & (filled.column == "32k")].iloc[0]
    assert f"{vanilla_32k.ours_mean:.2f} / 76.6 ({vanilla_32k.ours_mean - 76.6:+.2f})" in markdown
    assert (tmp_path / "results" / "smoke" / "table1.tex").read_text().startswith("\\begin{table}")


def test_table4_gap_table6_and_only_own_files_rewritten(smoke_runs, tmp_path, cli_env):
    results = tmp_path / "results"
    other_scale = results / "paper" / "table1.md"
    other_scale.parent.mkdir(parents=True)
    other_scale.write_text("committed paper-scale results")
    out = make_tables(["--runs-dir", str(smoke_runs), "--out", str(results), "--quiet"], cli_env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert other_scale.read_text() == "committed paper-scale results"
    # Table 3's vanilla and ConAdv cells at 32k and 64k are these Table 1 runs.
    assert "table3: 4 of 9 cells filled (smoke scale, target 20% top-1)" in out.stdout
    gap = pd.read_csv(results / "smoke" / "table4.csv")
    for row in ("Vanilla ResNet-50", "ConAdv"):
        for batch in ("32k", "64k"):
            cell = gap[(gap.row == row) & (gap.column == batch)].set_index("metric")["ours_mean"]
            assert abs(cell["gap"] - (cell["train_top1"] - cell["test_top1"])) < 1e-9
    only6 = make_tables(["--runs-dir", str(smoke_runs), "--out", str(tmp_path / "r6"), "--experiments", "table6",
                         "--quiet"], cli_env, tmp_path)
    assert only6.returncode == 0 and (tmp_path / "r6" / "smoke" / "table6.md").exists(), only6.stderr
    table6 = (results / "smoke" / "table6.md").read_text()
    assert "| Peak LR | 4 / 35 | 4 / 41 | missing / 43 |" in table6
    before = (results / "smoke" / "table2.md").stat().st_mtime_ns
    again = make_tables(["--runs-dir", str(smoke_runs), "--out", str(results), "--experiments", "table1", "--quiet"],
                        cli_env, tmp_path)
    assert again.returncode == 0
    assert (results / "smoke" / "table2.md").stat().st_mtime_ns == before
    assert not list((results / "smoke").glob(".*.tmp"))


def test_bad_input_is_one_line(smoke_runs, tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_API_KEY", "")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.chdir(tmp_path)
    cases = [
        (["--runs-dir", str(tmp_path / "empty")], "no runs in"),
        (["--runs-dir", str(smoke_runs), "--experiments", ""], "names nothing"),
        (["--runs-dir", str(smoke_runs), "--bogus"], "unrecognized arguments: --bogus"),
        (["--runs-dir", str(smoke_runs), "--experiments", "table9"], "unknown experiment 'table9'"),
        (["--runs-dir", str(smoke_runs), "--out", str(tmp_path / "afile" / "results")], "cannot be created"),
        (["--source", "wandb", "--entity", "e", "--project", "p"], "needs a W&B login"),
        (["--scale", "huge"], "--scale 'huge' is not allowed"),
    ]
    for args, fragment in cases:
        status, _, err = call_main(analysis.make_tables.main, args, capsys)
        lines = err.strip().splitlines()
        assert status == 2 and len(lines) == 1 and fragment in lines[0], (args, err)
