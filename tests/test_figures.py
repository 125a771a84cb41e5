"""`analysis/make_figures.py` on the records of real smoke runs (the `smoke_runs` fixture): the figure
files exist, are valid PNG and PDF and are not blank; a rerun rewrites the same files and only its own;
bad input is one line and exit status 2; the analysis imports no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

import analysis.make_figures
from tests.helpers import call_main

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "analysis" / "make_figures.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_figures(cli_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=cli_env, capture_output=True,
                          text=True, timeout=120)


def wrote(stdout: str) -> list[str]:
    return [line.removeprefix("wrote ") for line in stdout.splitlines() if line.startswith("wrote ")]


def assert_png_not_blank(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 200, pixels.shape
    rgb = pixels[..., :3].reshape(-1, 3)
    assert float(rgb.std()) > 0.02, f"{path} looks blank"
    assert len(np.unique(rgb, axis=0)) > 2, f"{path} has no more than 2 colours"
    # The lines are coloured, not only black text on white.
    assert float((rgb.max(axis=1) - rgb.min(axis=1)).max()) > 0.3, f"{path} has no coloured pixel"


def assert_pdf(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(b"%PDF-"), path
    assert data.rstrip().endswith(b"%%EOF"), path
    assert len(data) > 1024, path


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return tmp_path / "results"


def draw(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """make_figures in this process (the script's own path runs in the tests below)."""
    return call_main(analysis.make_figures.main, list(args), capsys)


def test_figures_of_real_runs(smoke_runs: Path, results: Path, capsys) -> None:
    figures = results / "smoke" / "figures"
    # Another scale's committed results and a same-scale figure of an experiment not asked for.
    keep = results / "paper" / "figures" / "keep.png"
    keep.parent.mkdir(parents=True)
    keep.write_bytes(b"committed paper-scale figure")
    other = figures / "curves_table5.png"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"an older table5 figure")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (keep, other)}

    args = ("--scale", "smoke", "--runs-dir", str(smoke_runs), "--experiments", "figure2,table1,figure4",
            "--out", str(results))
    status, first, err = draw(capsys, *args)
    assert status == 0, err
    # Table 1's smoke runs at 32k and 64k fill Figure 2's vanilla and AutoAugment points there.
    assert "figure2: 4 of 18 points filled" in first
    assert "curves_table1: 6 lines from 6 finished runs" in first
    assert "figure4" in first and "no file written" in first
    expected = sorted(str(figures / f"{stem}.{fmt}") for stem in ("figure2", "curves_figure2", "curves_table1")
                      for fmt in ("png", "pdf"))
    assert sorted(wrote(first)) == expected
    for stem in ("figure2", "curves_figure2", "curves_table1"):
        assert_png_not_blank(figures / f"{stem}.png")
        assert_pdf(figures / f"{stem}.pdf")
    assert not list(figures.glob("figure4*")), "figure 4 is reported missing, not drawn empty"
    assert not list(figures.glob(".*.tmp")), "an atomic write left its temporary file"
    contents = {p: p.read_bytes() for p in figures.iterdir()}

    # A rerun rewrites the same files with the same bytes (no timestamps inside).
    status, second, err = draw(capsys, *args)
    assert status == 0, err
    assert sorted(wrote(second)) == expected
    assert {p: p.read_bytes() for p in figures.iterdir()} == contents

    # Regenerating one experiment rewrites only its own files.
    figure2_mtime = (figures / "figure2.png").stat().st_mtime_ns
    status, third, err = draw(capsys, "--runs-dir", str(smoke_runs), "--experiments", "table1", "--out", str(results))
    assert status == 0, err
    assert sorted(wrote(third)) == [str(figures / "curves_table1.pdf"), str(figures / "curves_table1.png")]
    assert (figures / "figure2.png").stat().st_mtime_ns == figure2_mtime
    for path, (data, mtime) in before.items():
        assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime, f"{path} was touched"
    assert sorted(p.name for p in (results / "paper" / "figures").iterdir()) == ["keep.png"]


def test_bad_input_is_one_line_and_status_2(smoke_runs: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    empty = tmp_path / "empty_runs"
    empty.mkdir()
    out = ["--out", str(tmp_path / "results")]
    cases = {
        "unknown experiment": (["--runs-dir", str(smoke_runs), "--experiments", "figure9", *out], "figure9"),
        "unknown scale": (["--runs-dir", str(smoke_runs), "--scale", "huge", *out], "huge"),
        "no runs": (["--runs-dir", str(empty), *out], "no finished runs"),
        "no runs at the scale": (["--runs-dir", str(smoke_runs), "--scale", "proxy", *out], "no finished runs"),
        "missing runs folder": (["--runs-dir", str(tmp_path / "nowhere"), *out], "no finished runs"),
        "out not writable": (["--runs-dir", str(smoke_runs), "--experiments", "table1",
                              "--out", str(a_file / "results")], "--out"),
    }
    monkeypatch.chdir(tmp_path)
    for name, (args, needle) in cases.items():
        status, out_text, err = call_main(analysis.make_figures.main, args, capsys)
        assert status == 2, (name, out_text, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (name, err)
    assert not (tmp_path / "results").exists(), "bad input wrote results"


def test_analysis_imports_no_torch(smoke_runs: Path, tmp_path: Path, cli_env: dict[str, str]) -> None:
    """Importing the figure code and drawing every figure never loads the training code."""
    code = (
        "import sys\n"
        "from conadv_repro.folders import clone_package\n"
        "clone_package('analysis')\n"
        "import analysis.figures\n"
        "import analysis.make_figures as m\n"
        "assert 'torch' not in sys.modules, 'import'\n"
        f"status = m.main(['--runs-dir', {str(smoke_runs)!r}, '--out', {str(tmp_path / 'results')!r}])\n"
        "assert status == 0\n"
        "assert 'torch' not in sys.modules, 'drawing'\n"
        "print('no torch')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "no torch" in result.stdout
    assert "missing: figure4" in result.stdout


def test_set_draws_the_runs_of_a_launcher_variation(tmp_path: Path, cli_env: dict[str, str]) -> None:
    from conadv_repro.launch.plan import expand
    from conadv_repro.registry import load_experiments
    from tests.synthetic_runs import write_run

    runs_dir = tmp_path / "runs"
    variation = expand(load_experiments(["table1"]), scale="smoke", runs_dir=runs_dir, sets={"optim.lr": "2"},
                       check_data=False)
    for run in variation[:3]:
        write_run(run, epochs=[(1, 40.0, 1.0), (2, 60.0, 2.0)], final_top1=60.0)
    common = ["--experiments", "table1", "--runs-dir", str(runs_dir), "--out", str(tmp_path / "results")]
    paper_runs = make_figures(cli_env, *common)
    assert paper_runs.returncode == 2 and "--set optim.lr=2" not in paper_runs.stderr
    assert "no finished runs of table1" in paper_runs.stderr
    ours = make_figures(cli_env, *common, "--set", "optim.lr=2")
    assert ours.returncode == 0, ours.stderr
    (png,) = [Path(p) for p in wrote(ours.stdout) if p.endswith("curves_table1.png")]
    assert_png_not_blank(png)
    assert "3 finished runs" in ours.stdout
    bad = make_figures(cli_env, *common, "--set", "optim.nosuch=1")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "nosuch" in bad.stderr


def synthetic_cells(tmp_path: Path, name: str, skip: tuple[str, ...] = ()) -> tuple:
    """An experiment's cells with a finished synthetic run at every paper batch but those in `skip`."""
    from analysis.figures import cells_with_runs
    from analysis.records import load_runs
    from conadv_repro.registry import load_experiment
    from tests.synthetic_runs import planned, write_run

    runs_dir = tmp_path / "runs"
    runs = planned(name, runs_dir)
    for i, run in enumerate(runs):
        if run.config.paper_batch not in skip:
            write_run(run, epochs=[(1, 30.0 + i, 1.0), (2, 50.0 + i, 2.0)], final_top1=50.0 + i)
    experiment = load_experiment(name)
    return experiment, cells_with_runs(experiment, runs, load_runs(runs_dir, ["smoke"]))


def test_figure2_marks_the_points_not_run(tmp_path: Path) -> None:
    import math

    from analysis.figures import figure2

    experiment, cells = synthetic_cells(tmp_path, "figure2", skip=("128k", "256k"))
    (ax,) = figure2(experiment, cells, "smoke").axes
    crosses = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert len(crosses) == len(experiment.rows), "one 'not run' mark per row"
    for line in crosses:
        assert list(line.get_xdata()) == [math.log2(128), math.log2(256)]  # only the missing batch sizes
        assert line.get_label().endswith("not run (no finished run) at 128k, 256k")
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert sum("not run" in text for text in legend) == len(experiment.rows)

    _, every = synthetic_cells(tmp_path / "all", "figure2")
    (ax,) = figure2(experiment, every, "smoke").axes
    assert not [line for line in ax.get_lines() if line.get_marker() == "x"], "nothing to mark when all ran"


def test_training_curves_give_each_batch_size_its_own_colour(tmp_path: Path) -> None:
    from matplotlib.colors import to_hex

    from analysis.figures import column_colours, curves_figure, curves_of

    experiment, cells = synthetic_cells(tmp_path, "table1")
    curves = curves_of(cells)
    fig = curves_figure(experiment, curves, "smoke")
    first_row = [c.column for c in curves if c.row == experiment.rows[0]]  # drawn in this order
    colour_of = {column: to_hex(line.get_color())
                 for column, line in zip(first_row, fig.axes[0].get_lines(), strict=True)}
    assert sorted(colour_of) == sorted(experiment.columns)
    assert len(set(colour_of.values())) == len(experiment.columns), colour_of
    # 1k, 4k and 8k were three shades of one dark purple: now three of the qualitative map's first colours.
    assert [colour_of[c] for c in ("1k", "4k", "8k")] == ["#1f77b4", "#ff7f0e", "#2ca02c"]
    # By size, whatever the declared order; Table 5's twelve perturbations stay distinct too.
    assert column_colours(["32k", "1k", "4k"]) == column_colours(["1k", "4k", "32k"])
    many = column_colours([f"p={p}" for p in (*range(11), 12)])
    assert len({to_hex(c) for c in many.values()}) == 12


def test_every_training_curve_panel_has_tick_labels(tmp_path: Path) -> None:
    from analysis.figures import curves_figure, curves_of

    experiment, cells = synthetic_cells(tmp_path, "table1")  # 4 panels on a 3 x 2 grid
    fig = curves_figure(experiment, curves_of(cells), "smoke")
    fig.draw_without_rendering()
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == len(experiment.rows)
    for ax in panels:
        labels = [t for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
        assert labels, f"panel {ax.get_title()!r} has no epoch tick labels"
