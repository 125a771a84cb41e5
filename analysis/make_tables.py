"""Regenerate the paper's tables from the runs, each cell beside the paper's number.

    python analysis/make_tables.py                               # every table, smoke scale, runs/
    python analysis/make_tables.py --scale paper --experiments table1,table4
    python analysis/make_tables.py --source wandb --entity E --project P --scale paper

Writes `results/<scale>/<table>.md`, `.csv` (one line per cell and metric: ours, paper, difference,
run ids, the seeds and their values) and `.tex` for Tables 1, 2, 4 and 5 (and the staleness grid), and
`table6.*` (the hyperparameters). With several seeds per cell (the proxy scale) a cell is mean±std (n),
and the Markdown adds the paired differences of each row against vanilla and DisAdv on the same seeds
with their 95% paired-t interval (also in `<table>_paired.csv`; see analysis/tables.py). `--set` reads
the runs of a launcher variation (`launch ... --set KEY=VALUE`). Table 3 (training
time) is the wall time to a target top-1 (analysis/table3.py). Each table says how many of its
cells are filled and at which scale; a cell without a finished run shows as missing. Only this scale's
files of the tables asked for are rewritten, each atomically.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from conadv_repro.folders import clone_package

# Run as `python analysis/<script>.py`, this file is not inside its package: register the folder as one.
clone_package("analysis")

import pandas as pd  # noqa: E402

from analysis.records import load_runs, planned  # noqa: E402
from analysis.tables import (  # noqa: E402
    PAIRED_NOTE,
    cell_results,
    filled,
    layout,
    long_form,
    paired_for,
    paired_layout,
    paired_long_form,
    to_latex,
    to_markdown,
)
from conadv_repro.atomic import atomic_write_text  # noqa: E402
from conadv_repro.batch_sizes import KIBI  # noqa: E402
from conadv_repro.errors import OneLineParser, UserError, cli_entry  # noqa: E402
from conadv_repro.launch.plan import check_scale, parse_sets  # noqa: E402
from conadv_repro.presets import TABLE6  # noqa: E402
from conadv_repro.registry import experiment_names, load_experiments  # noqa: E402

TABLES = ("table1", "table2", "table4", "table5", "staleness")
EXTRA = ("table6", "table3")  # hyperparameters; training time (analysis/table3.py)
SCALE_NOTES = {
    "smoke": "smoke scale: a few steps per run on the embedded digits; it checks the plumbing and its "
             "numbers are not comparable to the paper's",
    "proxy": "proxy scale: the embedded digits, the paper's effects in miniature; compare differences, "
             "not absolute numbers",
    "cifar10": "CIFAR-10 scale: compare differences between methods, not absolute numbers",
    "paper": "paper scale: ImageNet, ResNet-50, the paper's batch sizes",
}


def landscape_experiments() -> tuple[str, ...]:
    """The experiments that declare a landscape measurement (`settings["landscape"]`): each gets a
    <name>_landscape table (analysis/landscape_table.py); experiments without one get none."""
    return tuple(e.name for e in load_experiments(experiment_names()) if "landscape" in e.settings)


def writable_folder(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out folder {folder} cannot be created ({error.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"--out folder {folder} is not writable")
    return folder


def table6(frame: pd.DataFrame, scale: str, runs_dir: Path, sets: dict[str, str] | None = None
           ) -> tuple[pd.DataFrame, int]:
    """Table 6's hyperparameters: what our vanilla runs at 32k/64k/96k used, beside the paper's."""
    _, runs = planned(["table1"], scale, runs_dir, sets)
    by_id = {row["run_id"]: row for row in frame.to_dict("records")} if not frame.empty else {}
    paper_rows = {
        "Peak LR": lambda b: TABLE6[b][0], "Epoch": lambda b: 90, "Weight Decay": lambda b: 5e-4,
        "Warmup": lambda b: TABLE6[b][1], "LR decay": lambda b: "POLY", "Optimizer": lambda b: "LARS",
        "Momentum": lambda b: 0.9, "Label Smoothing": lambda b: 0.1,
    }
    columns, cells, found = [], {name: [] for name in paper_rows}, 0
    for batch in sorted(TABLE6):
        label = f"{batch // KIBI}k"
        columns.append(label)
        run = next((r for r in runs if r.config.paper_batch == label and r.config.method == "vanilla"
                    and not r.config.autoaugment), None)
        row = by_id.get(run.run_id) if run else None
        found += row is not None
        ours = {} if row is None else {
            "Peak LR": row.get("derived.peak_lr"), "Epoch": row.get("epochs") if row.get("steps") is None else
            f"{row.get('steps')} steps", "Weight Decay": row.get("optim.weight_decay"),
            "Warmup": row.get("derived.warmup_epochs"),
            "LR decay": f"POLY (power {row.get('schedule.power')})", "Optimizer": str(row.get("optim.name", "")).upper(),
            "Momentum": row.get("optim.momentum"), "Label Smoothing": row.get("optim.label_smoothing")}
        for name, paper in paper_rows.items():
            value = ours.get(name)
            shown = "missing" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))
            paper_value = paper(batch)
            cells[name].append(f"{shown} / {paper_value:g}" if isinstance(paper_value, float)
                               else f"{shown} / {paper_value}")
    return pd.DataFrame(list(cells.values()), index=list(cells), columns=columns), found


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python analysis/make_tables.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="smoke", help="smoke, proxy, cifar10 or paper (default: smoke)")
    parser.add_argument("--experiments", default="all", help="comma-separated: table1, table2, table4, table5, "
                                                             "staleness, table6 (hyperparameters), table3, an "
                                                             "experiment that declares a landscape measurement "
                                                             "(sharpness, flatness: written as NAME_landscape.md; "
                                                             "not with --source wandb), or all (default)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where the runs are (default: runs)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="results folder (default: results)")
    parser.add_argument("--source", default="records", choices=("records", "wandb"),
                        help="read the run records (default) or W&B")
    parser.add_argument("--entity", default="", help="W&B entity (with --source wandb)")
    parser.add_argument("--project", default="", help="W&B project (with --source wandb)")
    parser.add_argument("--set", dest="sets", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="the runs of a launcher variation made with the same --set items")
    parser.add_argument("--quiet", action="store_true", help="print only the summary lines")
    args = parser.parse_args(argv)
    check_scale(args.scale)
    sets = parse_sets(args.sets)
    names = [n.strip() for n in args.experiments.split(",") if n.strip()]
    landscape = landscape_experiments()
    allowed = TABLES + EXTRA + tuple(n for n in landscape if n not in TABLES)
    if not names:
        raise UserError(f"--experiments {args.experiments!r} names nothing; allowed: {', '.join(allowed)}, all")
    wanted: list[str] = []
    for name in names:
        for n in (list(allowed) if name == "all" else [name]):
            if n in ("figure2", "figure4"):
                raise UserError(f"{n} is a figure: use python analysis/make_figures.py")
            if n not in allowed:
                raise UserError(f"unknown experiment {n!r}; allowed: {', '.join(allowed)}, all")
            if n not in wanted:
                wanted.append(n)
    if args.source == "wandb":
        named = [n for n in names if n in landscape]
        if named:
            raise UserError(f"--source wandb cannot make {named[0]}'s landscape table: W&B has no landscape data "
                            "(it is in each run directory's landscape.json); read the run records instead "
                            "(without --source wandb)")
        skipped = [n for n in wanted if n in landscape]
        if skipped:
            print(f"skipped with --source wandb (no landscape data in W&B): {', '.join(skipped)}")
        wanted = [n for n in wanted if n not in landscape]
    experiments, runs = planned([n for n in wanted if n in TABLES], args.scale, args.runs_dir, sets)
    if args.source == "wandb":
        from analysis.wandb_source import load_wandb

        frame = load_wandb(args.entity, args.project, args.scale)
    else:
        frame = load_runs(args.runs_dir, [args.scale])
    if frame.empty:
        where = f"W&B {args.entity}/{args.project}" if args.source == "wandb" else str(args.runs_dir / args.scale)
        first = next((n for n in wanted if n in TABLES), "table1")
        raise UserError(f"no runs in {where}; train some with: python -m conadv_repro.launch "
                        f"{first} --scale {args.scale}")
    out = writable_folder(args.out / args.scale)
    note = SCALE_NOTES[args.scale]
    for experiment in experiments:
        results = cell_results(experiment, runs, frame)
        done, total = filled(results)
        grid = layout(experiment, results)
        caption = f"{experiment.title} -- reproduced / paper (difference); {done} of {total} cells filled"
        markdown = (f"# {experiment.title}\n\n{done} of {total} cells filled, {note}. Each cell: ours / the "
                    f"paper's (ours - paper).\n\n{to_markdown(grid)}\n")
        pairs = paired_for(experiment, results, frame, scale=args.scale, runs_dir=args.runs_dir, sets=sets)
        if any(p.n for p in pairs):
            markdown += (f"\n## Paired differences\n\n{PAIRED_NOTE}\n\n"
                         f"{to_markdown(paired_layout(experiment, pairs))}\n")
        atomic_write_text(out / f"{experiment.name}.md", markdown)
        atomic_write_text(out / f"{experiment.name}.csv", long_form(results, args.scale).to_csv(index=False))
        atomic_write_text(out / f"{experiment.name}_paired.csv", paired_long_form(pairs, args.scale).to_csv(index=False))
        atomic_write_text(out / f"{experiment.name}.tex", to_latex(grid, f"{caption} ({args.scale} scale)"))
        print(f"{experiment.name}: {done} of {total} cells filled ({args.scale} scale) -> "
              f"{out / experiment.name}.md/.csv/.tex")
        if not args.quiet:
            print(f"\n{markdown}")
    if "table6" in wanted:
        grid, found = table6(frame, args.scale, args.runs_dir, sets)
        markdown = (f"# Table 6: Hyperparameters of ResNet-50 on ImageNet\n\n{found} of 3 columns filled, "
                    f"{note}. Each cell: ours / the paper's.\n\n{to_markdown(grid)}\n")
        atomic_write_text(out / "table6.md", markdown)
        atomic_write_text(out / "table6.csv", grid.to_csv())
        atomic_write_text(out / "table6.tex", to_latex(grid, f"Table 6: Hyperparameters ({args.scale} scale)"))
        print(f"table6: {found} of 3 columns filled ({args.scale} scale) -> {out / 'table6'}.md/.csv/.tex")
        if not args.quiet:
            print(f"\n{markdown}")
    landscape_wanted = [n for n in wanted if n in landscape]
    if landscape_wanted:
        from analysis.landscape_table import write_landscape_table

        for experiment in load_experiments(landscape_wanted):
            # Its own read of the records: each run's entry is chosen by this experiment's declaration.
            records = load_runs(args.runs_dir, [args.scale], experiment.settings["landscape"])
            _, landscape_runs = planned([experiment.name], args.scale, args.runs_dir, sets)
            write_landscape_table(experiment, landscape_runs, records, scale=args.scale, out=out, note=note,
                                  quiet=args.quiet)
    if "table3" in wanted:
        from analysis.table3 import write_table3

        write_table3(frame, scale=args.scale, runs_dir=args.runs_dir, out=out, note=note, quiet=args.quiet,
                     sets=getattr(args, "sets", None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
