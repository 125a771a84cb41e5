"""`python analysis/make_figures.py`: the paper's figures from finished runs, as PNG and PDF.

Writes, under `<out>/<scale>/figures/`:

    figure2.png, figure2.pdf                   top-1 against batch size, with and without AutoAugment,
                                               beside the paper's points (when figure2 is asked for)
    figure4.png, figure4.pdf                   throughput against batch size, (a) and (b), measured, the
                                               paper's points and the performance model's curves
    curves_<experiment>.png, .pdf              test top-1 against epoch, one line per method and batch
    landscape_<experiment>.png, .pdf           for an experiment that declares `settings["landscape"]`: each
                                               measure against batch size, and the 1-D lines
    landscape_<experiment>_paired.png, .pdf    its primary measure's paired log ratios with 95% intervals
                                               (analysis/landscape_figure.py)

Figure 4's model curves come from a calibration (`--calibration PATH`, or the newest one in
benchmarks/calibrations/ measured on the runs' hardware, else any; with none, NVIDIA's published A100
figure, labelled as such). Every file is rendered in memory and written atomically, and only the files of
the experiments asked for at the scale asked for are rewritten: other scales' and experiments' results are
never touched. Reads run directories only; the training code (torch) is never imported.
"""

from __future__ import annotations

import argparse
import os
import textwrap
from pathlib import Path

from conadv_repro.folders import clone_package

# Run as `python analysis/<script>.py`, this file is not inside its package: register the folder as one.
clone_package("analysis")

from analysis.records import load_runs, planned  # noqa: E402
from conadv_repro.atomic import atomic_write_bytes  # noqa: E402
from conadv_repro.errors import OneLineParser, UserError, cli_entry  # noqa: E402
from conadv_repro.launch.plan import check_scale, parse_sets  # noqa: E402
from conadv_repro.presets import LAUNCH_SCALES  # noqa: E402
from conadv_repro.registry import experiment_names  # noqa: E402

FIGURE4 = "figure4"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(
        prog="python analysis/make_figures.py",
        description=textwrap.fill("Draw the paper's figures from finished runs, as PNG and PDF: Figure 2 (top-1 against "
                    "batch size, with and without AutoAugment, beside the paper's points), Figure 4 (throughput "
                    "against batch size, beside the paper's points and the performance model's curves) and a "
                    "training-curve figure per experiment (test top-1 against epoch). Only the files of the "
                    "experiments asked for, at the scale asked for, are rewritten.", 88, break_on_hyphens=False),
        epilog="examples:\n"
               "  python analysis/make_figures.py                         every figure of the smoke runs\n"
               "  python analysis/make_figures.py --scale proxy --experiments figure2,table1\n"
               "  python analysis/make_figures.py --runs-dir /copied/runs --out results\n"
               "  python analysis/make_figures.py --experiments table1 --set optim.lr=2 --out results/lr2\n\n"
               "Files go to OUT/SCALE/figures/: figure2.png/.pdf, figure4.png/.pdf, curves_EXPERIMENT.png/.pdf,\n"
               "and for an experiment that declares a landscape measurement (sharpness, flatness)\n"
               "landscape_EXPERIMENT.png/.pdf and landscape_EXPERIMENT_paired.png/.pdf.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="smoke", help=f"{', '.join(LAUNCH_SCALES)} (default: smoke)")
    parser.add_argument("--runs-dir", default="runs", type=Path,
                        help="the launcher's runs folder, holding SCALE/RUN_ID/ (default: runs)")
    parser.add_argument("--experiments", default="all",
                        help=f"comma-separated: {', '.join(experiment_names())}, or all (default: all)")
    parser.add_argument("--out", default="results", type=Path,
                        help="results folder; figures go to OUT/SCALE/figures/ (default: results)")
    parser.add_argument("--set", dest="sets", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="the runs of a launcher variation made with the same --set items (give it its own "
                             "--out, or its figures replace those of the paper's runs)")
    parser.add_argument("--calibration", default=None, metavar="PATH",
                        help="Figure 4's model: a calibration file (benchmarks/throughput.py --save), or 'published' "
                             "(default: the newest in benchmarks/calibrations/, preferring the runs' hardware)")
    return parser.parse_args(argv)


def _names(raw: str) -> list[str]:
    """The registry's experiment names asked for."""
    names = [n.strip() for n in raw.split(",") if n.strip()]
    if not names:
        raise UserError(f"--experiments {raw!r} names no experiment; allowed: {', '.join(experiment_names())}, all")
    return names


def _figures_dir(out: Path, scale: str) -> Path:
    """OUT/SCALE/figures, created; a folder that cannot be created or written is the user's error."""
    folder = out / scale / "figures"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out {out}: cannot create {folder} ({error.strerror or error})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {folder} is not writable")
    return folder


def _write(path: Path, data: bytes) -> None:
    try:
        atomic_write_bytes(path, data)
    except OSError as error:
        raise UserError(f"cannot write {path} ({error.strerror or error})") from None


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_scale(args.scale)
    names = _names(args.experiments)
    sets = parse_sets(args.sets)
    experiments, runs = planned(names, args.scale, args.runs_dir, sets) if names else ([], [])
    records = load_runs(args.runs_dir, [args.scale])
    planned_ids = {run.run_id for run in runs}
    finished = set()
    if not records.empty:
        finished = set(records.loc[records["status"] == "finished", "run_id"].astype(str)) & planned_ids
    if names and not finished:
        asked = "all" if "all" in names else " ".join(e.name for e in experiments)
        data = " --data-root DIR" if args.scale in ("paper", "cifar10") else ""
        data += "".join(f" --set {item}" for item in args.sets)
        raise UserError(f"no finished runs of {', '.join(e.name for e in experiments)} under "
                        f"{args.runs_dir / args.scale}; train some with python -m conadv_repro.launch {asked} "
                        f"--scale {args.scale}{data} --runs-dir {args.runs_dir}")
    folder = _figures_dir(args.out, args.scale) if names else None
    # matplotlib only now, so that bad input is answered quickly.
    from analysis.figures import FORMATS, cells_with_runs, curves_figure, curves_of, figure2, render
    written: list[Path] = []
    missing: list[str] = []

    def save(fig, stem: str) -> None:
        for fmt in FORMATS:
            path = folder / f"{stem}.{fmt}"
            _write(path, render(fig, fmt))
            written.append(path)
            print(f"wrote {path}")

    def left_alone(stem: str) -> str:
        old = [folder / f"{stem}.{fmt}" for fmt in FORMATS if (folder / f"{stem}.{fmt}").exists()]
        return f" (an older {', '.join(map(str, old))} is left as it was)" if old else ""

    for experiment in experiments:
        if experiment.name == FIGURE4:
            from analysis.figure4 import draw_figure4

            figure, line = draw_figure4(experiment, runs, records, args.scale, args.calibration)
            if figure is None:
                missing.append(line + left_alone(FIGURE4))
            else:
                print(line)
                save(figure, FIGURE4)
            continue  # its runs are short throughput runs: no training curves
        cells = cells_with_runs(experiment, runs, records)
        if experiment.name == "figure2":
            filled = sum(1 for c in cells if c.values())
            if filled:
                print(f"figure2: {filled} of {len(cells)} points filled at the {args.scale} scale "
                      f"(the paper's {sum(1 for c in cells if 'test_top1' in c.paper)} drawn beside them)")
                save(figure2(experiment, cells, args.scale), "figure2")
            else:
                missing.append(f"figure2: no finished run of its {len(cells)} points; not drawn"
                               + left_alone("figure2"))
        if "landscape" in experiment.settings:
            from analysis.landscape_figure import landscape_figure

            # Read again with the experiment's declaration, so each run's entry of those settings is chosen.
            declared = load_runs(args.runs_dir, [args.scale], experiment.settings["landscape"])
            figure = landscape_figure(experiment, cells_with_runs(experiment, runs, declared), args.scale)
            stem = f"landscape_{experiment.name}"
            if figure is None:
                missing.append(f"{stem}: no run of {experiment.name} measured with its declared settings; "
                               "not drawn" + left_alone(stem))
            else:
                print(f"{stem}: sharpness against batch size and the 1-D lines")
                save(figure, stem)
            from analysis.landscape_figure import paired_figure
            from analysis.landscape_table import growth, landscape_results, paired

            results = landscape_results(experiment, runs, declared)
            figure = paired_figure(experiment, paired(experiment, results), growth(experiment, results), args.scale)
            stem = f"landscape_{experiment.name}_paired"
            if figure is None:
                missing.append(f"{stem}: no comparison has two paired seeds (an interval needs them); not drawn"
                               + left_alone(stem))
            else:
                print(f"{stem}: the primary measure's paired log ratios with their 95% intervals")
                save(figure, stem)
        curves = curves_of(cells)
        stem = f"curves_{experiment.name}"
        if curves:
            empty = sum(1 for c in cells if not c.finished)
            print(f"{stem}: {len(curves)} lines from {sum(c.runs for c in curves)} finished runs "
                  f"({empty} of {len(cells)} cells have none)")
            save(curves_figure(experiment, curves, args.scale), stem)
        else:
            missing.append(f"{stem}: no finished run of {experiment.name}; not drawn" + left_alone(stem))
    for line in missing:
        print(f"missing: {line}")
    print(f"{len(written)} files written" + (f" under {folder}" if folder is not None else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
