"""The flatness grid (experiments/flatness.py): its runs at each scale, the line between two of its runs,
what its paper-scale estimate says, and the table's refusal of W&B."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from analysis.landscape_table import primary_of, references
from analysis.make_tables import main as make_tables
from conadv_repro import landscape_state
from conadv_repro.errors import UserError
from conadv_repro.landscape import store
from conadv_repro.launch import cli
from conadv_repro.launch.between import line_runs
from conadv_repro.launch.plan import expand
from conadv_repro.registry import load_experiment, load_experiments
from tests.helpers import call_main


def ids(name: str, scale: str, method: str | None = None) -> set[str]:
    runs = expand(load_experiments([name]), scale=scale, runs_dir=Path("r"), sets={}, check_data=False)
    return {run.run_id for run in runs if method is None or run.config.method == method}


def test_the_proxy_trains_to_convergence_and_the_paper_scale_reuses_table1():
    experiment = load_experiment("flatness")
    assert experiment.rows == ("Vanilla", "DisAdv", "ConAdv", "Noise") and experiment.columns == ("8k", "32k", "96k")
    proxy = expand([experiment], scale="proxy", runs_dir=Path("r"), sets={}, check_data=False)
    assert len(proxy) == 60 and {run.config.epochs for run in proxy} == {15.0}
    assert {run.config.batch_size for run in proxy} == {8, 32, 96}
    assert {run.config.attack.epsilon for run in proxy if run.config.paper_batch == "96k"
            and run.config.method != "vanilla"} == {8.0}
    # Only the proxy's budget changes: the paper scale trains Table 1's 90 epochs, the smoke scale its steps.
    paper = expand([experiment], scale="paper", runs_dir=Path("r"), sets={}, check_data=False)
    assert {run.config.epochs for run in paper} == {90.0}
    smoke = expand([experiment], scale="smoke", runs_dir=Path("r"), sets={}, check_data=False)
    assert {run.config.steps for run in smoke} == {40}
    flatness = ids("flatness", "paper")
    assert flatness - ids("table1", "paper") == ids("flatness", "paper", "noise")
    assert ids("flatness", "paper", "noise") <= ids("staleness", "paper") and len(flatness) == 12
    declared = landscape_state.declared_for(experiment.settings, "proxy")
    assert declared == {"measures": ["eigenvalue", "trace", "adaptive"], "examples": 512, "micro_batch": 128}
    assert experiment.settings["primary"] == "landscape.top_eigenvalue"


def test_the_paper_scale_estimate_says_what_the_grid_adds_to_table1(tmp_path, capsys):
    status, out, err = call_main(cli.main, ["flatness", "--scale", "paper", "--estimate", "--calibration",
                                            "published", "--runs-dir", str(tmp_path)], capsys)
    assert status == 0, err
    assert "9 of the 12 runs are table1's" in out
    assert "beyond table1: 3 runs to train (noise 8k, noise 32k, noise 96k)" in out, out
    assert "this grid trains only these and measures 12" in out


def test_the_line_between_two_runs_waits_for_them_then_is_measured_once(tmp_path, capsys):
    runs = tmp_path / "runs"
    selection = ["flatness", "--only", "row=Vanilla", "column=8k,96k", "seed=0", "--set", "steps=4",
                 "--runs-dir", str(runs)]
    status, _, err = call_main(cli.main, ["between", *selection], capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    # The hint launches the same selection (a variation's runs, not the paper's).
    assert f"is missing, not finished; launch it first: python -m conadv_repro.launch {' '.join(selection[:1])} " \
           f"--scale smoke --runs-dir {runs} --only row=Vanilla column=8k,96k seed=0 --set steps=4" in err, err
    # `all` skips the experiments that declare no line (table1 ...) and stops at flatness's unfinished run.
    status, _, err = call_main(cli.main, ["between", "all", *selection[1:]], capsys)
    assert status == 2 and err.startswith("error: flatness: run "), err
    status, out, err = call_main(cli.main, [*selection, "--cluster", "debug"], capsys)
    assert status == 0 and out.strip().splitlines()[-1] == "2 runs: 2 finished", out + err
    status, out, err = call_main(cli.main, ["between", *selection], capsys)
    assert status == 0, err
    planned = expand(load_experiments(["flatness"]), scale="smoke", runs_dir=runs, sets={"steps": "4"},
                     check_data=False)
    small, large = (next(r for r in planned if ("flatness", "Vanilla", column) in r.uses) for column in ("8k", "96k"))
    lines = [e for e in store.read_entries(small.run_dir) if e["key"]["between"] is not None]
    assert len(lines) == 1 and lines[0]["key"]["between"]["run_id"] == large.run_id
    assert lines[0]["key"]["measures"] == ["between"] and lines[0]["key"]["examples"] == 32
    points = lines[0]["results"]["between"]["points"]
    assert [p["alpha"] for p in points][:: len(points) - 1] == [0.0, 1.0]
    assert f"line from {small.run_dir} to {large.run_dir}" in out
    _, again, _ = call_main(cli.main, ["between", *selection], capsys)
    assert "(reused)" in again
    assert len([e for e in store.read_entries(small.run_dir) if e["key"]["between"] is not None]) == 1


def test_an_experiment_without_a_declared_line_is_refused(capsys):
    status, _, err = call_main(cli.main, ["between", "table1", "--only", "method=vanilla"], capsys)
    assert status == 2 and "table1 declares no line between runs" in err


@pytest.mark.parametrize("change, message", [
    ({"row": "Nope"}, "row 'Nope' is not one of its rows (Vanilla, DisAdv, ConAdv, Noise)"),
    ({"to": "3k"}, "to '3k' is not one of its columns (8k, 32k, 96k)"),
    ({"to": "8k"}, "goes from '8k' to itself"),
    ({"seed": -1}, "seed -1 must be an integer >= 0"),
    ({"seed": "0"}, "seed '0' must be an integer >= 0"),
])
def test_a_bad_line_declaration_is_refused_in_one_line(change, message):
    experiment = load_experiment("flatness")
    line = {**experiment.settings["between"], **change}
    with pytest.raises(UserError) as caught:
        landscape_state.check_between("flatness", line, experiment.rows, experiment.columns)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(UserError, match="must be a dict with keys row, seed, from, to"):
        landscape_state.check_between("flatness", {"row": "Vanilla"}, experiment.rows, experiment.columns)


def test_a_line_seed_outside_the_scale_is_refused(capsys):
    experiment = load_experiment("flatness")
    seven = replace(experiment, settings={**experiment.settings, "between": {**experiment.settings["between"], "seed": 7}})
    with pytest.raises(UserError, match=r"seed 7 is not a seed of the proxy scale \(0, 1, 2, 3, 4\)"):
        line_runs(seven, [], "proxy")


def test_the_landscape_table_refuses_wandb_in_one_line(capsys):
    status, _, err = call_main(make_tables, ["--source", "wandb", "--experiments", "flatness", "--scale", "proxy"], capsys)
    assert status == 2, err
    assert err.strip() == ("error: --source wandb cannot make flatness's landscape table: W&B has no landscape data "
                           "(it is in each run directory's landscape.json); read the run records instead (without "
                           "--source wandb)")


@pytest.mark.parametrize("name", ["flatness", "sharpness"])
def test_the_landscape_grids_compare_against_their_references(name):
    expected = {"flatness": ("Vanilla", "Noise", "DisAdv"), "sharpness": ("Vanilla",)}[name]
    assert references(load_experiment(name)) == expected


def test_a_primary_measure_the_grid_does_not_declare_is_refused():
    experiment = load_experiment("flatness")
    assert primary_of(experiment) == "landscape.top_eigenvalue"
    typo = replace(experiment, settings={**experiment.settings, "primary": "landscape.top_eigenvalues"})
    with pytest.raises(UserError, match="'landscape.top_eigenvalues' is not a measure it declares; allowed: "
                                        "landscape.top_eigenvalue, landscape.adaptive_eigenvalue, landscape.trace"):
        primary_of(typo)
