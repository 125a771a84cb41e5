"""`python -m conadv_repro.launch between EXPERIMENT`: the loss along the line between two of its runs.

An experiment declares the line in `settings["between"]`: `{"row": ..., "seed": ..., "from": COLUMN,
"to": COLUMN}` (experiments/flatness.py: vanilla's 8k and 96k runs of seed 0). Once both runs have
finished (after the launch), this command finds them by the launch's own plan and measures the line as
`python -m conadv_repro.landscape FROM_RUN --measures between --between TO_RUN` would, with the sample the
experiment declares, on this machine (a GPU when there is one). The entry goes into the first run's
landscape.json; the same line again is reused, not measured twice. It submits nothing.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from conadv_repro.errors import UserError
from conadv_repro.launch.plan import PlannedRun
from conadv_repro.registry import Experiment

SETTING = "between"
KEYS = ("row", "seed", "from", "to")


def declared_line(experiment: Experiment) -> Mapping[str, Any]:
    """The experiment's `settings["between"]`, checked against its rows and columns."""
    line = experiment.settings.get(SETTING)
    if line is None:
        raise UserError(f"experiment {experiment.name} declares no line between runs (settings['{SETTING}']); "
                        "measure one by hand: python -m conadv_repro.landscape RUN_A --between RUN_B")
    if not isinstance(line, Mapping) or sorted(line) != sorted(KEYS):
        raise UserError(f"experiment {experiment.name}: settings['{SETTING}'] must be a dict with keys "
                        f"{', '.join(KEYS)}")
    if line["row"] not in experiment.rows:
        raise UserError(f"experiment {experiment.name}: settings['{SETTING}'] row {line['row']!r} is not one of "
                        f"its rows ({', '.join(experiment.rows)})")
    for end in ("from", "to"):
        if line[end] not in experiment.columns:
            raise UserError(f"experiment {experiment.name}: settings['{SETTING}'] {end} {line[end]!r} is not one "
                            f"of its columns ({', '.join(experiment.columns)})")
    return line


def line_runs(experiment: Experiment, runs: list[PlannedRun]) -> tuple[PlannedRun, PlannedRun]:
    """The planned runs at the two ends of the declared line."""
    line = declared_line(experiment)

    def run_at(column: str) -> PlannedRun:
        for run in runs:
            if (experiment.name, line["row"], column) in run.uses and run.config.seed == line["seed"]:
                return run
        raise UserError(f"{experiment.name}: no planned run of {line['row']} at {column} with seed {line['seed']} "
                        "(is it left out by --only?)")

    return run_at(line["from"]), run_at(line["to"])


def cmd_between(args: argparse.Namespace) -> int:
    from conadv_repro.launch.cli import plan
    from conadv_repro.launch.states import SlurmJobs, run_state
    from conadv_repro.registry import load_experiments

    runs = plan(args, check_data=False)
    jobs = SlurmJobs()
    for experiment in load_experiments(args.experiments):
        start, end = line_runs(experiment, runs)
        for run in (start, end):
            state = run_state(run.run_dir, jobs).state
            if state != "finished":
                raise UserError(f"{experiment.name}: run {run.run_id} ({run.run_dir}) is {state}, not finished; "
                                f"launch it first: python -m conadv_repro.launch {experiment.name} --scale {args.scale}")
        measure_line(experiment, start, end)
    return 0


def measure_line(experiment: Experiment, start: PlannedRun, end: PlannedRun) -> None:
    """Measure the line from `start` to `end` with the experiment's declared sample, on this machine."""
    from conadv_repro import landscape_state
    from conadv_repro.engine.trainer import resolve_device
    from conadv_repro.landscape.measure import measure_run, summary_line

    declared = landscape_state.declared_for(experiment.settings, start.config.scale) or {}
    sample = landscape_state.settings_of({**declared, "measures": ["between"]}, start.config.data)
    entry, reused = measure_run(start.run_dir, sample, device=resolve_device("auto"), between=end.run_dir,
                                log=lambda text: print(text, flush=True))
    print(f"{experiment.name}: line from {start.run_dir} to {end.run_dir}, entry {entry['key_id']}"
          f"{' (reused)' if reused else ''}")
    print(f"  between     {summary_line('between', entry['results']['between'])}")


__all__ = ["cmd_between", "declared_line", "line_runs"]
