"""The analysis reads landscape.json through the records (columns, slices, table, figure) without torch.

Synthetic run directories (tests/synthetic_runs.py) get a landscape.json written by the test, so every
expected number is known exactly; the experiment is a synthetic one (vanilla and DisAdv at 8k and 32k at
the proxy scale, 5 seeds) declaring a landscape measurement, as experiments/sharpness.py does."""

from __future__ import annotations

import io
import json
import math
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from analysis.figures import cells_with_runs
from analysis.landscape_figure import landscape_figure, paired_figure
from analysis.landscape_notes import unconverged
from analysis.landscape_table import (
    growth,
    landscape_results,
    layout,
    paired,
    paired_layout,
    write_landscape_table,
)
from analysis.records import load_runs, load_slices, run_row
from conadv_repro.landscape.settings import SLICE_ALPHAS, Settings
from conadv_repro.landscape_state import declared_for, measure_key, settings_of
from conadv_repro.launch.plan import PlannedRun, expand
from conadv_repro.registry import Cell, Experiment
from experiments.common import method_overrides
from tests.conftest import REPO
from tests.synthetic_runs import write_run

DECLARED = {"measures": ["eigenvalue", "adaptive", "slice"], "examples": {"proxy": 64}, "micro_batch": 32}
METHODS = {"Vanilla": "vanilla", "DisAdv": "disadv"}
BATCHES = ("8k", "32k")
EXPERIMENT = Experiment(
    name="landscape_synthetic", title="Synthetic sharpness", description="test", rows=tuple(METHODS),
    columns=BATCHES, settings={"landscape": DECLARED},
    cells=tuple(Cell(row=row, column=b, paper_batch=b, overrides=method_overrides(method, False, b))
                for row, method in METHODS.items() for b in BATCHES))
CHECKPOINT = {"file": "final.pt", "step": 100, "sha256": "0" * 64}


def eigen(run: PlannedRun) -> float:
    """The synthetic top eigenvalue: grows with the batch, DisAdv 10 lower, plus the seed (so paired
    differences are exactly -10 and the seeds' spread is known)."""
    return 100.0 + run.config.batch_size - (10.0 if run.config.method == "disadv" else 0.0) + run.config.seed


def entry(settings: Settings, value: float, *, measured_at: str = "2026-01-01T00:00:00+00:00",
          checkpoint: dict[str, Any] | None = None, between: dict[str, Any] | None = None) -> dict[str, Any]:
    key = measure_key(settings, checkpoint or CHECKPOINT, between)
    points = [{"alpha": a, "loss": 1.0 + value / 100 * a * a, "loss_ce": 1.0, "top1": 50.0} for a in SLICE_ALPHAS]
    results: dict[str, Any] = {
        "eigenvalue": {"value": value, "iterations": 5, "residual": 0.1, "converged": True, "history": [],
                       "ce": {"value": value - 1, "iterations": 4, "residual": 0.2, "converged": True}},
        "adaptive": {"value": value / 10, "iterations": 3, "residual": 0.01, "converged": True, "history": []},
        "slice": {"points": points}}
    if between is not None:
        results = {"between": {"distance": 2.0, "points": [{**p, "alpha": abs(p["alpha"])} for p in points]}}
    return {"key": key, "key_id": "k" + str(int(value)), "measured_at": measured_at,
            "sample": {"examples": settings.examples, "loss": 1.0, "loss_ce": 0.9, "top1": 60.0},
            "weights": {"parameters": 10, "norm": 3.0, "layers": {"fc.weight": 2.0}},
            "run": {"last_lr": 0.01, "peak_lr": 1.0}, "results": results}


def write_landscape(run_dir: Path, entries: list[dict[str, Any]]) -> None:
    (run_dir / "landscape.json").write_text(json.dumps({"format": "conadv-landscape/1", "entries": entries}))


def declared_settings(run: PlannedRun) -> Settings:
    return settings_of(declared_for({"landscape": DECLARED}, "proxy") or {}, run.config.data)


@pytest.fixture()
def measured(tmp_path: Path) -> tuple[Path, list[PlannedRun]]:
    runs_dir = tmp_path / "runs"
    runs = expand([EXPERIMENT], scale="proxy", runs_dir=runs_dir, sets={}, check_data=False)
    assert len(runs) == 20
    for run in runs:
        folder = write_run(run, final_top1=50.0)
        value = eigen(run)
        # An older entry of the same settings, one of the default settings, one of a step checkpoint and a
        # line to another run: the newest entry of the declared settings on final.pt must win.
        write_landscape(folder, [
            entry(declared_settings(run), value, measured_at="2026-02-01T00:00:00+00:00"),
            entry(declared_settings(run), -1.0, measured_at="2025-01-01T00:00:00+00:00"),
            entry(Settings(examples=512), -2.0),
            entry(declared_settings(run), -3.0, measured_at="2027-01-01T00:00:00+00:00",
                  checkpoint={"file": "step_50.pt", "step": 50, "sha256": "1" * 64}),
            entry(declared_settings(run), -4.0, between={"run_id": "other", "checkpoint": CHECKPOINT})])
    return runs_dir, runs


def test_columns_choose_the_declared_entry_else_default(measured: tuple[Path, list[PlannedRun]]) -> None:
    runs_dir, runs = measured
    frame = load_runs(runs_dir, ["proxy"], DECLARED)
    by_id = frame.set_index("run_id")
    for run in runs:
        row = by_id.loc[run.run_id]
        assert row["landscape.match"] == "requested"
        assert row["landscape.top_eigenvalue"] == eigen(run)
        assert row["landscape.top_eigenvalue_ce"] == eigen(run) - 1
        assert row["landscape.adaptive_eigenvalue"] == pytest.approx(eigen(run) / 10)
        assert row["landscape.examples"] == 64 and row["landscape.trace"] is None
        assert row["landscape.layer_norms"] == {"fc.weight": 2.0} and row["landscape.last_lr"] == 0.01
    # Without a declaration the default-settings entry stands for the run; with none of either, no columns.
    plain = run_row(runs[0].run_dir)
    assert plain is not None and plain["landscape.match"] == "default" and plain["landscape.top_eigenvalue"] == -2.0
    write_landscape(runs[0].run_dir, [entry(Settings(examples=7), 5.0)])
    bare = run_row(runs[0].run_dir)
    assert bare is not None and "landscape.top_eigenvalue" not in bare
    (runs[1].run_dir / "landscape.json").write_text("not json")
    broken = run_row(runs[1].run_dir)
    assert broken is not None and "not JSON" in broken["landscape.error"]


def test_load_slices(measured: tuple[Path, list[PlannedRun]]) -> None:
    _, runs = measured
    slices = load_slices(runs[0].run_dir, DECLARED)
    random, between = slices[slices["kind"] == "random"], slices[slices["kind"] == "between"]
    assert list(random["alpha"]) == list(SLICE_ALPHAS) and len(between) == len(SLICE_ALPHAS)
    assert random["loss"].max() == pytest.approx(1.0 + eigen(runs[0]) / 100)
    assert set(between["other"]) == {"other"} and set(random["key_id"]) == {f"k{int(eigen(runs[0]))}"}
    assert load_slices(runs[0].run_dir.parent / "nowhere").empty


def test_table_cells_and_paired_differences(measured: tuple[Path, list[PlannedRun]], tmp_path: Path) -> None:
    runs_dir, runs = measured
    frame = load_runs(runs_dir, ["proxy"], DECLARED)
    results = landscape_results(EXPERIMENT, runs, frame)
    top = {(r.row, r.column): r for r in results if r.metric == "landscape.top_eigenvalue"}
    # Seeds 0-4: mean 100 + batch + 2 (- 10 for DisAdv), sd of 0..4 = 1.58.
    assert top[("Vanilla", "8k")].mean == pytest.approx(110.0)
    assert top[("DisAdv", "32k")].mean == pytest.approx(100.0 + 32 - 10 + 2)
    grid = layout(EXPERIMENT, results)
    assert grid.loc["Vanilla: top eigenvalue (primary)", "8k"] == "110±1.6 (n=5)"
    assert grid.loc["DisAdv: adaptive eigenvalue", "8k"] == "10±0.16 (n=5)"
    assert grid.loc["DisAdv: Test top-1", "32k"] == "50.00±0 (n=5)"  # the experiment's accuracy line
    assert grid.loc["Vanilla: weight norm", "8k"] == "3±0 (n=5)"
    pairs = paired(EXPERIMENT, results)
    assert {(p.row, p.reference) for p in pairs} == {("DisAdv", "Vanilla")}
    pair = next(p for p in pairs if p.metric == "landscape.top_eigenvalue" and p.column == "32k")
    expected = [math.log(132 - 10 + s) - math.log(132 + s) for s in range(5)]
    assert pair.seeds == [0, 1, 2, 3, 4] and pair.diffs == pytest.approx(expected)
    mean, sd = statistics.mean(expected), statistics.stdev(expected)
    half = 2.7764 * sd / math.sqrt(5)  # t(0.975, 4)
    assert pair.ci == pytest.approx((mean - half, mean + half))
    text = f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}] (×{math.exp(mean):.3g}, n=5)"
    assert paired_layout(EXPERIMENT, pairs).loc["DisAdv / Vanilla: top eigenvalue (primary)", "32k"] == text
    ratios = growth(EXPERIMENT, results)
    up = next(r for r in ratios if r.row == "Vanilla" and r.metric == "landscape.top_eigenvalue")
    assert (up.column, up.reference) == ("32k", "8k")
    assert up.diffs == pytest.approx([math.log(132 + s) - math.log(108 + s) for s in range(5)])
    texts = write_landscape_table(EXPERIMENT, runs, frame, scale="proxy", out=tmp_path, note="test", quiet=True)
    assert {p.name for p in tmp_path.glob("landscape_synthetic_landscape.*")} == {
        f"landscape_synthetic_landscape.{s}" for s in ("md", "csv", "tex")}
    assert "4 of 4 cells measured" in texts["md"] and "Paired differences in log" in texts["md"]
    assert "## From 8k to 32k" in texts["md"] and "primary measure is the top eigenvalue" in texts["md"]
    assert "/ " not in texts["md"].split("\n\n", 2)[2].split("\n")[2]  # ours only: no paper column
    kinds = pd.read_csv(io.StringIO(texts["csv"]))["kind"].value_counts().to_dict()
    # cells: 2 measures, the weight norm, the last LR, test top-1
    assert kinds == {"cell": 20, "paired": 4, "growth": 4}
    assert "top eigenvalue 0; adaptive eigenvalue 0." in texts["md"]  # power iterations at their limit
    assert "Measuring: " not in texts["md"]  # the synthetic entries record no times
    assert grid.loc["Vanilla: last LR", "8k"] == "0.01±0 (n=5)"


def test_a_negative_eigenvalue_has_no_log_and_is_counted(measured: tuple[Path, list[PlannedRun]]) -> None:
    runs_dir, runs = measured
    frame = load_runs(runs_dir, ["proxy"], DECLARED)
    frame.loc[frame["run_id"] == runs[0].run_id, "landscape.top_eigenvalue"] = -3.0  # a saddle
    pairs = paired(EXPERIMENT, landscape_results(EXPERIMENT, runs, frame))
    hit = next(p for p in pairs if p.metric == "landscape.top_eigenvalue" and p.column == runs[0].config.paper_batch)
    assert hit.n == 4 and hit.dropped == [runs[0].config.seed] and hit.text().endswith("1 not positive")


def test_runs_under_the_convergence_line_are_flagged_not_dropped(measured: tuple[Path, list[PlannedRun]],
                                                                 tmp_path: Path) -> None:
    runs_dir, runs = measured
    strict = replace(EXPERIMENT, metrics=("test_top1", "train_top1"), settings={**EXPERIMENT.settings,
                                                                                 "converged_train_top1": 99.5})
    low = next(r for r in runs if r.config.method == "disadv" and r.config.paper_batch == "32k")
    for run in runs:
        write_run(run, final_top1=98.0, final_train_top1=99.0 if run is low else 100.0)
    frame = load_runs(runs_dir, ["proxy"], DECLARED)
    assert [f["run_id"] for f in unconverged(strict, runs, frame, 99.5)] == [low.run_id]
    grid = layout(strict, landscape_results(strict, runs, frame), unconverged(strict, runs, frame, 99.5))
    assert grid.loc["DisAdv: Training top-1", "32k"] == "99.80±0.45 (n=5), 1 unconverged"
    assert grid.loc["DisAdv: Generalization gap", "32k"] == "1.80±0.45 (n=5)"
    assert grid.loc["DisAdv: top eigenvalue (primary)", "32k"].endswith("(n=5)")  # counted, not dropped
    texts = write_landscape_table(strict, runs, frame, scale="proxy", out=tmp_path, note="test", quiet=True)
    assert f"DisAdv 32k seed {low.config.seed} ({low.run_id}, 99.00%)" in texts["md"]


def test_table_ignores_entries_of_other_settings(measured: tuple[Path, list[PlannedRun]]) -> None:
    runs_dir, runs = measured
    frame = load_runs(runs_dir, ["proxy"])  # no declaration: every run's entry is the default one
    results = landscape_results(EXPERIMENT, runs, frame)
    assert all(r.mean is None for r in results if r.metric.startswith("landscape."))
    assert all(r.mean == 50.0 for r in results if r.metric == "test_top1")  # accuracies need no entry


def test_figure_has_one_point_per_run(measured: tuple[Path, list[PlannedRun]]) -> None:
    runs_dir, runs = measured
    frame = load_runs(runs_dir, ["proxy"], DECLARED)
    figure = landscape_figure(EXPERIMENT, cells_with_runs(EXPERIMENT, runs, frame), "proxy")
    assert figure is not None
    eigenvalue, adaptive, lines = figure.axes  # a panel per declared measure, then the 1-D lines
    for panel in (eigenvalue, adaptive):
        assert sum(len(c.get_offsets()) for c in panel.collections) == len(runs)
    assert eigenvalue.get_yscale() == "log"
    # Each run's random slice (solid) and its line to the other run (dashed).
    assert [line.get_linestyle() for line in lines.lines].count("-") == len(runs)
    assert [line.get_linestyle() for line in lines.lines].count("--") == len(runs)
    from analysis.figures import render

    assert render(figure, "png").startswith(b"\x89PNG")
    assert landscape_figure(EXPERIMENT, cells_with_runs(EXPERIMENT, runs, load_runs(runs_dir, ["proxy"])),
                            "proxy") is None


def test_the_paired_figure_draws_an_interval_per_comparison(measured: tuple[Path, list[PlannedRun]]) -> None:
    runs_dir, runs = measured
    results = landscape_results(EXPERIMENT, runs, load_runs(runs_dir, ["proxy"], DECLARED))
    figure = paired_figure(EXPERIMENT, paired(EXPERIMENT, results), growth(EXPERIMENT, results), "proxy")
    assert figure is not None
    against, across = figure.axes  # DisAdv against Vanilla at 8k and 32k; each row's 32k against its 8k
    for panel in (against, across):
        assert len(panel.lines) == 2 * 2 + 1  # an interval and a mean per comparison, and the zero line
    assert [t.get_text() for t in across.get_yticklabels()] == ["Vanilla", "DisAdv"]  # top to bottom
    assert paired_figure(EXPERIMENT, [], [], "proxy") is None


def test_landscape_analysis_imports_no_torch(measured: tuple[Path, list[PlannedRun]], tmp_path: Path) -> None:
    runs_dir, _ = measured
    code = (
        "import sys\n"
        "from conadv_repro.folders import clone_package\n"
        "clone_package('analysis')\n"
        "import analysis.records, analysis.landscape_table, analysis.landscape_figure\n"
        "assert 'torch' not in sys.modules, 'import'\n"
        # The experiment built again here: importing this test module would import tests/conftest (torch).
        "from conadv_repro.registry import Cell, Experiment\n"
        "from experiments.common import method_overrides\n"
        f"DECLARED = {DECLARED!r}\n"
        "EXPERIMENT = Experiment(name='landscape_synthetic', title='t', description='', rows=('Vanilla', 'DisAdv'), "
        "columns=('8k', '32k'), settings={'landscape': DECLARED}, cells=tuple(Cell(row=r, column=b, paper_batch=b, "
        "overrides=method_overrides(m, False, b)) for r, m in (('Vanilla', 'vanilla'), ('DisAdv', 'disadv')) "
        "for b in ('8k', '32k')))\n"
        "from conadv_repro.launch.plan import expand\n"
        "from analysis.figures import cells_with_runs\n"
        f"runs = expand([EXPERIMENT], scale='proxy', runs_dir=__import__('pathlib').Path({str(runs_dir)!r}), "
        "sets={}, check_data=False)\n"
        f"frame = analysis.records.load_runs(__import__('pathlib').Path({str(runs_dir)!r}), ['proxy'], DECLARED)\n"
        "analysis.landscape_table.landscape_results(EXPERIMENT, runs, frame)\n"
        "assert analysis.landscape_figure.landscape_figure(EXPERIMENT, cells_with_runs(EXPERIMENT, runs, frame), "
        "'proxy') is not None\n"
        "assert 'torch' not in sys.modules, 'drawing'\n"
        "print('no torch')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "no torch" in result.stdout


def test_make_tables_and_figures_draw_declared_experiments_only(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the command lines, with the registry's own `sharpness` (the experiment that declares a
    landscape): its table and figure are written; table1, which declares none, gets neither."""
    import analysis.make_figures
    import analysis.make_tables
    from conadv_repro.registry import load_experiments
    from tests.helpers import call_main

    sharpness = load_experiments(["sharpness"])[0]
    runs_dir = tmp_path / "runs"
    runs = expand([sharpness], scale="smoke", runs_dir=runs_dir, sets={}, check_data=False)
    for run in runs:
        write_run(run, final_top1=50.0)
        settings = settings_of(declared_for(sharpness.settings, "smoke") or {}, run.config.data)
        write_landscape(run.run_dir, [entry(settings, eigen(run))])
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results"
    status, text, err = call_main(analysis.make_tables.main, ["--experiments", "sharpness,table1", "--runs-dir",
                                                               str(runs_dir), "--out", str(out), "--quiet"], capsys)
    assert status == 0, err
    assert f"sharpness_landscape: {len(runs)} of {len(runs)} cells measured" in text
    assert {p.name for p in (out / "smoke").glob("*_landscape.*")} == {
        f"sharpness_landscape.{s}" for s in ("md", "csv", "tex")}
    status, text, err = call_main(analysis.make_figures.main, ["--experiments", "sharpness,table1", "--runs-dir",
                                                                str(runs_dir), "--out", str(out)], capsys)
    assert status == 0, err
    assert {p.name for p in (out / "smoke" / "figures").glob("landscape_*")} == {
        "landscape_sharpness.png", "landscape_sharpness.pdf"}
