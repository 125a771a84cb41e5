"""Disk use of a run's checkpoints: the size of one checkpoint file per network and method.

For each network (resnet18, resnet50; ImageNet's 1000 classes) and method (vanilla, DisAdv, ConAdv), the
engine's own Trainer takes `--steps` optimizer steps on synthetic ImageNet-shaped batches (gpu-check's
`SyntheticTrainer`: no dataset needed) and its state is written by `save_checkpoint`, exactly as
`engine/run.py` writes `checkpoints/step-*.pt` and `final.pt`; the file's size is printed. The image size
and batch change no byte of the state (weights, LARS momentum, BN statistics, ConAdv's weight snapshots),
only the time the steps take, so they are small by default.

ConAdv's checkpoints are the largest: they hold its `conadv.tau + 1` snapshots of the weights, from which
a resumed run recomputes the same stale adversarial examples. A run keeps its newest two step checkpoints
and `final.pt` (`keep=2` in conadv_repro/engine/checkpoint.py), and at most three files exist at once while
it trains (a new one is written whole before the oldest is removed), so a run needs up to three times the
size printed.

    python benchmarks/checkpoint_sizes.py                        # the figures of docs/runs.md
    python benchmarks/checkpoint_sizes.py --networks resnet18 --methods conadv conadv.tau=2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from conadv_repro.config import build_config, parse_overrides
from conadv_repro.engine.checkpoint import save_checkpoint
from conadv_repro.engine.trainer import Window
from conadv_repro.errors import OneLineParser, UserError, at_least_one, cli_entry
from conadv_repro.gpu_check.synthetic import SyntheticTrainer
from conadv_repro.machine import cpu_name

NETWORKS = ("resnet18", "resnet50")
METHODS = ("vanilla", "disadv", "conadv")
COMMAND = "python benchmarks/checkpoint_sizes.py"
MB = 10 ** 6
MIB = 2 ** 20  # what `ls -lh` and `du -h` call M
KEPT = 3  # the newest two step checkpoints and final.pt (checkpoint.py's keep=2), the most at once


def checkpoint_bytes(network: str, method: str, *, steps: int, size: int, batch: int,
                     overrides: dict[str, str]) -> tuple[int, int, int]:
    """(bytes of the checkpoint file, parameters of the network, ConAdv's snapshots in it) after `steps`."""
    values = {"model.name": network, "method": method, "data": "imagenet", "model.input_size": size,
              "batch_size": batch, "bn.group_size": batch // 4, "steps": steps, "runtime.device": "cpu",
              "runtime.threads": 0, "seed": 0,
              **{k: v for k, v in overrides.items() if method == "conadv" or not k.startswith("conadv.")}}
    trainer = SyntheticTrainer(build_config(values))
    try:
        trainer.open_batches(0)
        for step in range(steps):
            trainer.train_step(step, trainer.step_batches(step))
            trainer.step = step + 1
        state = {**trainer.state_dict(), "elapsed": 0.0, "epoch_times": [], "log_window": Window().__dict__.copy()}
        snapshots = len(state["method"].get("snapshots", {}))
        params = sum(p.numel() for p in trainer.model.parameters())
        with tempfile.TemporaryDirectory(prefix="checkpoint-sizes-") as folder:
            path = save_checkpoint(Path(folder), steps, state)
            return path.stat().st_size, params, snapshots
    finally:
        trainer.close()


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog=COMMAND, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides for every run, e.g. conadv.tau=2 (conadv.* only reach ConAdv)")
    parser.add_argument("--networks", nargs="+", choices=NETWORKS, default=list(NETWORKS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--steps", type=at_least_one, default=2,
                        help="optimizer steps before the checkpoint (default 2: ConAdv holds tau + 1 snapshots "
                             "from step tau on)")
    parser.add_argument("--size", type=at_least_one, default=64,
                        help="image side in px (default 64; the state does not depend on it)")
    parser.add_argument("--batch", type=at_least_one, default=32,
                        help="batch, in 4 BN groups (default 32; the state does not depend on it)")
    args = parser.parse_args(argv)
    if args.batch % 4:
        raise UserError(f"--batch {args.batch} is not allowed; allowed: a multiple of 4 (its 4 BN groups)")
    overrides = parse_overrides(args.overrides)
    print(f"checkpoint sizes on {cpu_name()}, {os.cpu_count()} cores, CPU; torch {torch.__version__}")
    print(f"{'network':9s} {'method':8s} {'params':>11s} {'snapshots':>9s} {'checkpoint':>22s} "
          f"{'per run (x' + str(KEPT) + ')':>15s} {'time (s)':>9s}")
    for network in args.networks:
        for method in args.methods:
            start = time.perf_counter()
            size, params, snapshots = checkpoint_bytes(network, method, steps=args.steps, size=args.size,
                                                       batch=args.batch, overrides=overrides)
            both = f"{size / MB:.1f} MB ({size / MIB:.1f} MiB)"
            print(f"{network:9s} {method:8s} {params:>11,d} {snapshots:>9d} {both:>22s} "
                  f"{KEPT * size / MB:>12.1f} MB {time.perf_counter() - start:>9.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
