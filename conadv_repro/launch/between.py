"""`python -m conadv_repro.launch between EXPERIMENT`: the loss along the line between two of its runs.

An experiment declares the line in `settings["between"]`: `{"row": ..., "seed": ..., "from": COLUMN,
"to": COLUMN}` (experiments/flatness.py: vanilla's 8k and 96k runs of seed 0), checked when the registry
loads it (conadv_repro/landscape_state.py); with `all`, the experiments that declare none are skipped. Once
both runs have finished (after the launch), this command finds them by the launch's own plan and measures the line as
`python -m conadv_repro.landscape FROM_RUN --measures between --between TO_RUN` would, with the sample the
experiment declares, on this machine (a GPU when there is one). The entry goes into the first run's
landscape.json; the same line again is reused, not measured twice. It submits nothing.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conadv_repro.errors import UserError
from conadv_repro.landscape_state import BETWEEN
from conadv_repro.launch.plan import PlannedRun
from conadv_repro.presets import SCALE_SEEDS
from conadv_repro.registry import Experiment


def declared_line(experiment: Experiment) -> Mapping[str, Any] | None:
    """The experiment's `settings["between"]` (checked when the registry loaded it), or None."""
    return experiment.settings.get(BETWEEN)


def line_runs(experiment: Experiment, runs: list[PlannedRun], scale: str) -> tuple[PlannedRun, PlannedRun]:
    """The planned runs at the two ends of the declared line."""
    line = declared_line(experiment)
    assert line is not None
    seeds = SCALE_SEEDS.get(scale, (0,))
    if line["seed"] not in seeds:
        raise UserError(f"experiment {experiment.name}: settings['{BETWEEN}'] seed {line['seed']} is not a seed of "
                        f"the {scale} scale ({', '.join(map(str, seeds))})")

    def run_at(column: str) -> PlannedRun:
        run = line_end(experiment, runs, column)
        if run is None:
            raise UserError(f"{experiment.name}: the line's run ({line['row']} at {column}, seed {line['seed']}) is "
                            "left out by --only; select it too")
        return run

    return run_at(line["from"]), run_at(line["to"])


def line_end(experiment: Experiment, runs: list[PlannedRun], column: str) -> PlannedRun | None:
    """The planned run of the declared line's row and seed at `column`, or None when `runs` lack it."""
    line = declared_line(experiment)
    assert line is not None
    return next((run for run in runs if (experiment.name, line["row"], column) in run.uses
                 and run.config.seed == line["seed"]), None)


def cmd_between(args: argparse.Namespace) -> int:
    from conadv_repro.launch.cli import follow_up, plan
    from conadv_repro.launch.states import SlurmJobs, run_state
    from conadv_repro.registry import load_experiments

    runs = plan(args, check_data=False)
    experiments = [e for e in load_experiments(args.experiments) if declared_line(e) is not None]
    if not experiments:
        named = ", ".join(args.experiments)
        raise UserError(f"{named} declares no line between runs (settings['{BETWEEN}']; flatness does); measure one "
                        "by hand: python -m conadv_repro.landscape RUN_A --between RUN_B")
    jobs = SlurmJobs()
    for experiment in experiments:
        start, end = line_runs(experiment, runs, args.scale)
        for run in (start, end):
            state = run_state(run.run_dir, jobs).state
            if state != "finished":
                launch = follow_up("", args)
                raise UserError(f"{experiment.name}: run {run.run_id} ({run.run_dir}) is {state}, not finished; "
                                f"launch it first: {launch}")
        measure_line(experiment, start, end, Path(args.data_root) if args.data_root else None)
    return 0


def measure_line(experiment: Experiment, start: PlannedRun, end: PlannedRun, data_root: Path | None = None) -> None:
    """Measure the line from `start` to `end` with the experiment's declared sample, on this machine (`data_root`:
    the dataset's folder when it is not where the runs were trained)."""
    from conadv_repro import landscape_state
    from conadv_repro.engine.trainer import resolve_device
    from conadv_repro.landscape.measure import measure_run, summary_line

    declared = landscape_state.declared_for(experiment.settings, start.config.scale) or {}
    sample = landscape_state.settings_of({**declared, "measures": ["between"]}, start.config.data)
    entry, reused = measure_run(start.run_dir, sample, device=resolve_device("auto"), between=end.run_dir,
                                data_root=data_root, log=lambda text: print(text, flush=True))
    print(f"{experiment.name}: line from {start.run_dir} to {end.run_dir}, entry {entry['key_id']}"
          f"{' (reused)' if reused else ''}")
    print(f"  between     {summary_line('between', entry['results']['between'])}")


__all__ = ["cmd_between", "declared_line", "line_end", "line_runs"]
