"""Figure 4 from synthetic throughput runs: the measured points (median images/s after the first train row),
the paper's stated points beside them, the model's curves from a calibration, valid PNG and PDF files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from analysis import make_figures
from analysis.figure4 import choose_calibration, figure4, figure4_points, run_images_per_s
from analysis.records import load_runs
from conadv_repro.registry import load_experiment
from conadv_repro.throughput_model import CALIBRATIONS_ENV, load_calibration
from tests.synthetic_runs import CPU, planned, write_calibration, write_run
from tests.test_figures import assert_pdf, assert_png_not_blank

RATE = {"vanilla": 3000.0, "disadv": 1200.0, "conadv": 2000.0}


def write_figure4_runs(runs_dir: Path, only: int | None = None) -> list:
    runs = planned("figure4", runs_dir)
    for run in runs[:only]:
        method = run.config.method
        rate = RATE[method] * run.config.batch_size / 8
        workers = run.config.conadv.attack_workers
        write_run(run, train=[1.0, rate * 0.9, rate, rate * 1.1], final_top1=10.0, wall_time_s=3.0,
                  executor={"vanilla": None, "disadv": "sequential", "conadv": "workers"}[method],
                  distributed={"world_size": 1 + workers, "trainers": 1, "attack_workers": workers,
                               "backend": "gloo" if workers else None})
    return runs


def test_throughput_is_the_median_after_the_first_row(tmp_path):
    (run,) = [r for r in planned("figure4", tmp_path) if (("figure4", "(b) DisAdv", "2k") in r.uses)]
    folder = write_run(run, train=[10.0, 300.0, 100.0, 200.0])
    assert run_images_per_s(folder) == 200.0
    folder = write_run(run, train=[10.0])
    assert run_images_per_s(folder) is None


def test_figure4_points_and_the_papers_beside_them(tmp_path):
    runs_dir = tmp_path / "runs"
    runs = write_figure4_runs(runs_dir)
    experiment = load_experiment("figure4")
    points = figure4_points(experiment, runs, load_runs(runs_dir, ["smoke"]))
    assert len(points) == 21 and all(len(p.images_per_ms) == 1 for p in points)
    by_key = {(p.panel, p.method, p.column): p for p in points}
    conadv = by_key[("(a)", "conadv", "32k")]
    assert conadv.images_per_ms == [pytest.approx(2000.0 * 32 / 8 / 1000)]  # batch 32 at the smoke scale
    assert (conadv.trainers, conadv.attack_workers) == (1, 1)
    assert conadv.setups == ["1 trainer + 1 attack worker, executor workers"] and conadv.devices == [CPU]
    assert by_key[("(b)", "vanilla", "2k")].paper == 75.7 and by_key[("(a)", "vanilla", "4k")].paper is None

    calibration = load_calibration(write_calibration(tmp_path / "cal.json"))
    fig = figure4(experiment, points, "smoke", calibration)
    (ax_a, ax_b) = fig.axes[:2]

    def line(ax, label):
        found = [ln for ln in ax.get_lines() if ln.get_label() == label]
        assert found, [ln.get_label() for ln in ax.get_lines()]
        return list(found[0].get_ydata())

    assert line(ax_a, "DisAdv: paper (stated in the text)") == [10.3, 81.7]
    assert line(ax_a, 'ConAdv: paper, "about 1.5x DisAdv" (derived from the text)') == \
        [pytest.approx(15.45), pytest.approx(122.55)]
    assert line(ax_b, "ResNet-50 (vanilla): paper (stated in the text)") == [75.7]
    assert line(ax_b, "DisAdv: paper (stated in the text)") == [36.1]
    assert line(ax_b, "ConAdv: paper (stated in the text)") == [71.3]
    model = [ln for ln in ax_a.get_lines() if "model" in str(ln.get_label())]
    assert len(model) == 4 and all(math.isfinite(y) and y > 0 for ln in model for y in ln.get_ydata())
    texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert "synthetic test fixture" in texts and "perfect data-parallel scaling" in texts


def test_make_figures_draws_figure4(tmp_path, capsys):
    runs_dir = tmp_path / "runs"
    write_figure4_runs(runs_dir, only=5)
    calibration = write_calibration(tmp_path / "cal.json")
    out = tmp_path / "results"
    args = ["--runs-dir", str(runs_dir), "--experiments", "figure4", "--out", str(out)]
    assert make_figures.main([*args, "--calibration", str(calibration)]) == 0
    printed = capsys.readouterr().out
    assert f"figure4: 5 of 21 points measured at the smoke scale on {CPU}" in printed
    assert f"model from {calibration}: measured on synthetic test fixture" in printed
    figures = out / "smoke" / "figures"
    assert_png_not_blank(figures / "figure4.png")
    assert_pdf(figures / "figure4.pdf")
    assert not list(figures.glob("curves_figure4*")), "throughput runs have no training curves"


def test_the_models_calibration_is_chosen(tmp_path, monkeypatch):
    runs_dir = tmp_path / "runs"
    runs = write_figure4_runs(runs_dir, only=2)
    points = figure4_points(load_experiment("figure4"), runs, load_runs(runs_dir, ["smoke"]))
    # No calibration anywhere: NVIDIA's published figure, labelled as such.
    monkeypatch.setenv(CALIBRATIONS_ENV, str(tmp_path / "no-calibrations"))
    assert choose_calibration(None, points).describe().startswith("published, not measured here")
    # One of the runs' hardware is preferred over a newer one of other hardware; --calibration wins.
    write_calibration(tmp_path / "cals" / "cpu.json")
    write_calibration(tmp_path / "cals" / "gpu.json", device="cuda", device_name="Other GPU", date="2099-01-01")
    monkeypatch.setenv(CALIBRATIONS_ENV, str(tmp_path / "cals"))
    assert choose_calibration(None, points).path == str(tmp_path / "cals" / "cpu.json")
    assert choose_calibration(str(tmp_path / "cals" / "gpu.json"), points).device == "cuda"
    assert choose_calibration("published", points).published


def test_no_figure4_run_is_reported_not_drawn(tmp_path, capsys):
    runs_dir = tmp_path / "runs"
    runs = planned("figure4", runs_dir)
    write_run(runs[0], status="failed")
    write_run(planned("table1", runs_dir)[0], final_top1=50.0)
    out = tmp_path / "results"
    assert make_figures.main(["--runs-dir", str(runs_dir), "--experiments", "figure4,table1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "missing: figure4: no finished run of its 21 points (failed); no file written" in printed
    assert not list((out / "smoke" / "figures").glob("figure4*"))
