"""Table 3 (time to the target top-1) from synthetic run directories: reached at an epoch, reached only at the
final evaluation, never reached ("/"), runs not finished, and the executor and devices each run recorded."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from analysis import make_tables
from analysis.table3 import target_for, time_to_target
from conadv_repro.registry import load_experiment
from tests.synthetic_runs import CPU, find, planned, write_run


def test_the_targets_and_the_papers_times():
    experiment = load_experiment("table3")
    assert target_for(experiment, "paper") == 75.9  # MLPerf
    assert {s: target_for(experiment, s) for s in ("smoke", "proxy", "cifar10")} == \
        {"smoke": 20.0, "proxy": 90.0, "cifar10": 93.0}
    paper = {(c.row, c.column): c.paper.get("time_to_target_s") for c in experiment.cells}
    assert paper[("ResNet-50", "16k")] == 1194 and paper[("ResNet-50", "64k")] is None
    assert paper[("DisAdv", "32k")] == 1191 and paper[("ConAdv", "64k")] == 227
    assert ("ResNet-50", "64k") in experiment.settings["paper_not_reached"]
    # Table 3's runs are Table 1's.
    table1 = {r.run_id for r in planned("table1", Path("runs"))}
    assert {r.run_id for r in planned("table3", Path("runs"))} <= table1


def test_time_to_target_rule():
    epochs = pd.DataFrame([{"step": 20, "test_top1": 80.0, "elapsed_s": 20.0},
                           {"step": 10, "test_top1": 76.0, "elapsed_s": 10.0},
                           {"step": 5, "elapsed_s": 5.0}])  # an epoch without evaluation
    assert time_to_target(epochs, 75.9, final_top1=80.0, wall_time_s=30.0) == 10.0
    assert time_to_target(epochs, 90.0, final_top1=80.0, wall_time_s=30.0) is None
    # Training ended between epochs: the final evaluation, at the run's wall time.
    assert time_to_target(pd.DataFrame(), 20.0, final_top1=25.0, wall_time_s=4.5) == 4.5
    assert time_to_target(pd.DataFrame(), 20.0, final_top1=15.0, wall_time_s=4.5) is None


def test_table3_cells_from_synthetic_runs(tmp_path, capsys):
    runs_dir = tmp_path / "runs"
    runs = planned("table3", runs_dir)

    def run(row, column):
        return find(runs, "table3", row, column)

    # Old records (no executor, no distributed): one trainer.
    write_run(run("ResNet-50", "16k"), epochs=[(1, 15.0, 3.0), (2, 25.0, 6.5)], final_top1=25.0, wall_time_s=8.0)
    write_run(run("ResNet-50", "32k"), epochs=[(1, 12.0, 3.0), (2, 18.0, 6.0)], final_top1=18.0, wall_time_s=7.0)
    write_run(run("ResNet-50", "64k"), final_top1=30.0, wall_time_s=5.5)  # ended before its first epoch
    write_run(run("DisAdv", "16k"), status="running")  # no live lock: unfinished
    write_run(run("DisAdv", "32k"), status="failed")
    write_run(run("ConAdv", "32k"), epochs=[(1, 22.0, 2.0), (2, 30.0, 4.0)], final_top1=30.0, wall_time_s=5.0,
              executor="workers", distributed={"world_size": 4, "trainers": 2, "attack_workers": 2,
                                               "backend": "gloo"})
    write_run(run("ConAdv", "64k"), epochs=[(1, None, 4.0), (2, 21.0, 9.0)], final_top1=21.0, wall_time_s=10.0,
              executor="thread", distributed={"world_size": 1, "trainers": 1, "attack_workers": 0,
                                              "backend": None})
    out = tmp_path / "results"
    status = make_tables.main(["--runs-dir", str(runs_dir), "--out", str(out), "--experiments", "table3"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "table3: 5 of 9 cells filled (smoke scale, target 20% top-1)" in printed

    cells = pd.read_csv(out / "smoke" / "table3.csv")
    assert len(cells) == 18  # 9 cells x (time to target, total)
    cell = cells.set_index(["row", "column", "metric"])
    assert cell.loc[("ResNet-50", "16k", "time_to_target_s"), "ours_mean"] == 6.5
    assert cell.loc[("ResNet-50", "16k", "time_to_target_s"), "diff"] == pytest.approx(6.5 - 1194)
    assert cell.loc[("ResNet-50", "16k", "wall_time_s"), "ours_mean"] == 8.0
    assert pd.isna(cell.loc[("ResNet-50", "16k", "wall_time_s"), "paper"])
    assert pd.isna(cell.loc[("ResNet-50", "32k", "time_to_target_s"), "ours_mean"])
    assert cell.loc[("ResNet-50", "32k", "time_to_target_s"), "runs_reached"] == 0
    assert cell.loc[("ResNet-50", "64k", "time_to_target_s"), "ours_mean"] == 5.5
    assert bool(cell.loc[("ResNet-50", "64k", "time_to_target_s"), "paper_not_reached"])
    assert cell.loc[("ConAdv", "32k", "time_to_target_s"), "ours_mean"] == 2.0
    assert cell.loc[("ConAdv", "32k", "time_to_target_s"), "executors"] == "workers"
    assert str(cell.loc[("ConAdv", "32k", "time_to_target_s"), "attack_workers"]).startswith("2")
    assert cell.loc[("ConAdv", "64k", "time_to_target_s"), "ours_mean"] == 9.0  # epoch 1 was not evaluated
    assert cell.loc[("DisAdv", "16k", "time_to_target_s"), "statuses"] == "unfinished"

    markdown = (out / "smoke" / "table3.md").read_text()
    assert "| ResNet-50: time to 20% | 6.5s / 1194s (-1188s) | not reached / 622s | 5.5s / not reached |" in markdown
    assert "| ResNet-50: total wall time | 8.0s / n/a | 7.0s / n/a | 5.5s / n/a |" in markdown
    assert "| DisAdv: time to 20% | missing (unfinished) / 1657s | missing (failed) / 1191s | missing / 592s |" \
        in markdown
    assert "| ConAdv: time to 20% | missing / 1277s | 2.0s / 677s (-675s) | 9.0s / 227s (-218s) |" in markdown
    assert f"| ConAdv 32k | {run('ConAdv', '32k').run_id} | 2.0s | 5.0s | 30.00 | workers | " \
           f"2 trainers + 2 attack workers, gloo | {CPU} |" in markdown
    assert f"| ResNet-50 16k | {run('ResNet-50', '16k').run_id} | 6.5s | 8.0s | 25.00 | unrecorded | 1 trainer | " \
           in markdown
    assert (out / "smoke" / "table3.tex").read_text().startswith("\\begin{table}")
