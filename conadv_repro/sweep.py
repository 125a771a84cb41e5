"""`python -m conadv_repro.sweep`: the proxy scale's epoch budget and peak LR per batch size, chosen on
the validation split (never the test set).

    python -m conadv_repro.sweep                         # the documented sweep (results/proxy/lr_sweep.*)
    python -m conadv_repro.sweep --epochs 5,10,20 --batches 8,96 --lrs 2 --out scratch/budget

The defaults are the documented sweep, the one behind results/proxy/lr_sweep.md and the preset's PROXY_LR:
`--epochs 3,3.5,4 --lrs 1,2,4,8,16 --seeds 0,1,2` over the batch sizes 8-256, vanilla. Its output folder,
results/proxy/, is committed and holds all of its trials, so a bare run trains nothing and rewrites only
the summary from them (delete the trials file there to train it again). Any other setting needs `--out`:
without it the script refuses rather than add other trials to the committed ones.

Each trial trains vanilla at the proxy scale (the preset's network, data, schedule and Table 6's warmup
share) with one (batch size, peak LR, seed, epoch budget) and evaluates it on the validation split (180
held-out training images), and on the training split in eval mode (to tell under-training from
over-fitting). For every batch size and budget the chosen LR is the one with the best mean validation
top-1 over the seeds; ties go to the lower mean validation loss. Trials are appended to
`<out>/lr_sweep_trials.jsonl` as they finish, so a sweep stopped half way resumes where it was; the
summary goes to `<out>/lr_sweep.md` and `.csv`, with the machine and the command.

It trains, so it is a tool of the package rather than of `analysis/` (which never imports the engine):
each trial runs the engine's Trainer and scores it with the engine's evaluation on the `val` split. The
committed results name it by its earlier path, `analysis/proxy_sweep.py`; the arguments are the same.
Each trial runs on one torch thread; `--jobs` trials run at once (default: the CPU count).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from conadv_repro.atomic import append_jsonl, atomic_write_text, read_jsonl
from conadv_repro.errors import OneLineParser, UserError, cli_entry
from conadv_repro.folders import CLONE
from conadv_repro.machine import cpu_name

TRIALS = "lr_sweep_trials.jsonl"
KEYS = ("method", "batch_size", "lr", "seed", "epochs")
# The sweep behind results/proxy/lr_sweep.md and presets.PROXY_LR.
DOCUMENTED = {"batches": "8,16,32,64,96,128,256", "lrs": "1,2,4,8,16", "seeds": "0,1,2", "epochs": "3,3.5,4",
              "method": "vanilla"}
# The repository's, wherever the script is run from: elsewhere a bare run would train the sweep afresh.
DOCUMENTED_OUT = CLONE / "results" / "proxy"


def _floats(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--{what} {text!r} is not a comma-separated list of numbers") from None
    if not values or any(v <= 0 for v in values):
        raise UserError(f"--{what} {text!r} needs positive numbers")
    return values


def _seeds(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--seeds {text!r} is not a comma-separated list of integers") from None
    if not values or any(v < 0 for v in values):
        raise UserError(f"--seeds {text!r} needs integers >= 0")
    return values


def _key(trial: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(trial[k] for k in KEYS)


def grid(batches: str, lrs: str, seeds: str, epochs: str, method: str) -> list[dict[str, Any]]:
    """Every trial of a sweep, as the specs `trial` takes."""
    return [{"method": method, "batch_size": int(b), "lr": lr, "seed": s, "epochs": e}
            for e in _floats(epochs, "epochs") for b in _floats(batches, "batches")
            for lr in _floats(lrs, "lrs") for s in _seeds(seeds)]


def trial(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one trial in this process (one torch thread) and evaluate it on val and train (eval mode)."""
    import torch

    from conadv_repro.config import build_config
    from conadv_repro.engine.trainer import Trainer

    torch.set_num_threads(1)
    values = {"scale": "proxy", "method": spec["method"], "batch_size": spec["batch_size"], "optim.lr": spec["lr"],
              "epochs": spec["epochs"], "seed": spec["seed"], "runtime.threads": 1, "runtime.device": "cpu"}
    cfg = build_config(values)
    start = time.time()
    trainer = Trainer(cfg, log=lambda _line: None)
    try:
        trainer.open_batches(0)
        loss = 0.0
        for step in range(trainer.derived.total_steps):
            out = trainer.train_step(step, trainer.step_batches(step))
            trainer.step = step + 1
            loss = out["loss"]
        val = trainer.evaluate("val")
        train = trainer.evaluate("train")
    finally:
        trainer.close()
    return {**{k: spec[k] for k in KEYS}, "val_top1": val["top1"], "val_loss": val["loss"],
            "train_top1": train["top1"], "last_train_loss": loss, "steps": trainer.derived.total_steps,
            "warmup_epochs": cfg.schedule.warmup_epochs, "seconds": round(time.time() - start, 3)}


def summarise(trials: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per (method, epochs, batch, lr), and which LR each (method, epochs, batch) picks."""
    grouped = trials.groupby(["method", "epochs", "batch_size", "lr"], as_index=False).agg(
        val_top1=("val_top1", "mean"), val_top1_std=("val_top1", "std"), val_loss=("val_loss", "mean"),
        train_top1=("train_top1", "mean"), seeds=("seed", "count"), seconds=("seconds", "mean"))
    grouped["chosen"] = False
    for _, part in grouped.groupby(["method", "epochs", "batch_size"]):
        best = part.sort_values(["val_top1", "val_loss"], ascending=[False, True]).index[0]
        grouped.loc[best, "chosen"] = True
    return grouped


def markdown(summary: pd.DataFrame, trials: pd.DataFrame, command: str) -> str:
    lines = ["# Proxy-scale sweep: peak LR per batch size, on the validation split", "",
             f"Command: `{command}`", "",
             f"Machine: {cpu_name()}, {os.cpu_count()} cores, {platform.system()}; each trial on one torch "
             f"thread. {len(trials)} trials, {trials['seconds'].sum() / 60:.1f} minutes of trial wall time summed "
             f"over the jobs (on a shared machine: more than an idle one needs).", "",
             "Each cell: mean validation top-1 over the seeds (the validation split: 180 images held out of "
             "the digits' training set; the test set is never looked at), then the mean training top-1 "
             "measured in eval mode. **Bold**: the LR chosen (best mean validation top-1, ties to the lower "
             "validation loss).", ""]
    best = summary[summary["chosen"]]
    batches = sorted(best["batch_size"].unique())
    lines += ["## Budgets: the best LR's mean validation top-1 per batch size", "",
              "| method, epochs | " + " | ".join(str(b) for b in batches) + " |",
              "|---|" + "---|" * len(batches)]
    for (method, epochs), part in best.groupby(["method", "epochs"]):
        by_batch = {r.batch_size: f"{r.val_top1:.1f} (lr {r.lr:g})" for r in part.itertuples()}
        lines.append(f"| {method}, {epochs:g} | " + " | ".join(by_batch.get(b, "") for b in batches) + " |")
    lines.append("")
    for (method, epochs), part in summary.groupby(["method", "epochs"]):
        lrs = sorted(part["lr"].unique())
        lines += [f"## {method}, {epochs:g} epochs", "",
                  "| batch | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | chosen |",
                  "|---|" + "---|" * (len(lrs) + 1)]
        for batch, rows in part.groupby("batch_size"):
            cells = []
            for lr in lrs:
                row = rows[rows["lr"] == lr]
                if row.empty:
                    cells.append("")
                    continue
                r = row.iloc[0]
                text = f"{r.val_top1:.1f} (train {r.train_top1:.1f}, n={r.seeds})"
                cells.append(f"**{text}**" if r.chosen else text)
            chosen = rows[rows["chosen"]].iloc[0]
            lines.append(f"| {batch} | " + " | ".join(cells) + f" | {chosen.lr:g} |")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="python -m conadv_repro.sweep", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default=DOCUMENTED["batches"],
                        help=f"trained batch sizes (default: the proxy's, {DOCUMENTED['batches']})")
    parser.add_argument("--lrs", default=DOCUMENTED["lrs"], help=f"peak LRs (default: {DOCUMENTED['lrs']})")
    parser.add_argument("--seeds", default=DOCUMENTED["seeds"], help=f"seeds per trial (default: {DOCUMENTED['seeds']})")
    parser.add_argument("--epochs", default=DOCUMENTED["epochs"],
                        help=f"epoch budgets (default: {DOCUMENTED['epochs']})")
    parser.add_argument("--method", default=DOCUMENTED["method"],
                        help=f"method trained (default: {DOCUMENTED['method']})")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="trials at once (default: CPU count)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder (default: the repository's results/proxy, for the documented sweep only)")
    return parser.parse_args(argv)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = grid(args.batches, args.lrs, args.seeds, args.epochs, args.method)
    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs} must be >= 1")
    if args.out is None:
        if sorted(map(_key, wanted)) != sorted(map(_key, grid(**DOCUMENTED))):
            raise UserError("without --out the sweep goes to the committed results/proxy/, which holds the documented "
                            "sweep only; give --out FOLDER for another setting (e.g. --out scratch/sweep)")
        args.out = DOCUMENTED_OUT
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / TRIALS
    done = {_key(row): row for row in read_jsonl(path)}
    todo = [spec for spec in wanted if _key(spec) not in done]
    # Longest first (small batches and long budgets), so the jobs end together.
    todo.sort(key=lambda spec: -spec["epochs"] * (1 + 8 / spec["batch_size"]))
    print(f"{len(wanted)} trials, {len(wanted) - len(todo)} done already, {len(todo)} to train on {args.jobs} jobs")
    start = time.time()
    if todo:
        with multiprocessing.get_context("spawn").Pool(args.jobs, maxtasksperchild=20) as pool:
            for i, row in enumerate(pool.imap_unordered(trial, todo), 1):
                append_jsonl(path, row)
                done[_key(row)] = row
                print(f"[{i}/{len(todo)} {time.time() - start:.0f}s] batch {row['batch_size']} lr {row['lr']:g} "
                      f"seed {row['seed']} {row['epochs']:g} epochs: val {row['val_top1']:.2f} "
                      f"train {row['train_top1']:.2f} ({row['seconds']:.1f}s)", flush=True)
    trials = pd.DataFrame([done[_key(spec)] for spec in wanted])
    summary = summarise(trials)
    command = "python -m conadv_repro.sweep " + " ".join(argv if argv is not None else sys.argv[1:])
    atomic_write_text(args.out / "lr_sweep.csv", summary.to_csv(index=False))
    atomic_write_text(args.out / "lr_sweep.md", markdown(summary, trials, command.strip()))
    chosen = summary[summary["chosen"]]
    for (method, budget), part in chosen.groupby(["method", "epochs"]):
        table = ", ".join(f"{int(r.batch_size)}: {r.lr:g}" for r in part.itertuples())
        print(f"{method}, {budget:g} epochs: chosen peak LR {{{table}}}")
    print(f"wrote {args.out / 'lr_sweep.md'} and .csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
