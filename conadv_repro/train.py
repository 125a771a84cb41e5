"""Train one run: `python -m conadv_repro.train --run-dir DIR [key=value ...]`.

Starting a run again resumes it from its newest checkpoint; starting a finished run does nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from conadv_repro.cli_help import options_table
from conadv_repro.config import Config, config_from_overrides
from conadv_repro.errors import OneLineParser, UserError, cli_entry
from conadv_repro.layout import env_world_size, with_trainers_named
from conadv_repro.presets import table6_hparams

EXAMPLES = """examples:
  python -m conadv_repro.train                                  # the embedded default, about 25 s on a 2-core CPU
  python -m conadv_repro.train --run-dir runs/aa autoaugment=true
  python -m conadv_repro.train --run-dir runs/r50 scale=paper batch_size=32k data_root=/data/imagenet
  torchrun --standalone --nproc-per-node 3 -m conadv_repro.train --run-dir runs/w method=conadv conadv.attack_workers=1
                                                                # 2 trainers (DDP, gloo on the CPU) + 1 attack worker
"""


def print_progress(message: str) -> None:
    """Print a progress line; once stdout is gone (e.g. `| head`), keep training and stop printing."""
    try:
        print(message, flush=True)
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - replaces the closed stream for the process


def default_run_dir(cfg: Config) -> Path:
    return Path("runs") / (cfg.scale or "free") / cfg.run_id()


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m conadv_repro.train",
        description="Train one run of the ConAdv reproduction suite and write its run directory "
                    "(config.json, metrics.jsonl, record.json, checkpoints/). Run the same command again "
                    "to resume after a crash.",
        epilog=EXAMPLES + "\n" + options_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (see below)")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="run directory (default: runs/<scale or free>/<run id>)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config and its run id, and exit without training")
    parser.add_argument("--check-data", action="store_true",
                        help="with data=imagenet: first read the first and last bytes of every image file of "
                             "data_root, list those that cannot be read and stop (exit 2); a clean result is "
                             "remembered until a file changes")
    return parser


def check_data(cfg: Config) -> None:
    """`--check-data`: ImageNet's image files, before anything is trained (or exit 2 listing the bad ones)."""
    if cfg.data != "imagenet":
        raise UserError(f"--check-data has no use with data={cfg.data}; it checks the image files of "
                        "data=imagenet's data_root")
    if not cfg.data_root:  # Path("") would check the working directory; the wording is build_imagenet's
        raise UserError("data=imagenet needs data_root=DIR, the folder holding train/<wnid>/ and val/<wnid>/ "
                        "(e.g. data_root=/data/imagenet)")
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun rank 0 checks for all: one pool of readers per node, not one per rank
    from conadv_repro.data.check_files import require_readable

    require_readable(cfg.data_root, flag="data_root")


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = with_trainers_named(config_from_overrides(args.overrides), env_world_size())
    if args.check_data:
        check_data(cfg)
    if args.print_config:
        resolved: dict[str, object] = {"run_id": cfg.run_id(), "config": cfg.flat()}
        if cfg.optim.lr_rule == "table6":
            peak_lr, warmup = table6_hparams(cfg.batch_size)
            resolved["lr_rule_gives"] = {"peak_lr": peak_lr, "warmup_epochs": warmup}
        print(json.dumps(resolved, indent=2))
        return 0
    from conadv_repro.distributed.context import RankLost
    from conadv_repro.distributed.handshake import FollowerAborted
    from conadv_repro.engine.run import LockLost, run_training  # torch import only when training

    run_dir = args.run_dir or default_run_dir(cfg)
    try:
        record = run_training(cfg, run_dir, log=print_progress)
    except (RankLost, FollowerAborted, LockLost) as error:
        # Another rank failed (its own log has the details), or another process took the run directory
        # over: one line, no traceback.
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C reaches every rank under torchrun: one line from rank 0, no traceback from any.
        if os.environ.get("RANK", "0") == "0":
            print(f"interrupted; run the same command again to resume {run_dir} from its newest checkpoint",
                  file=sys.stderr, flush=True)
        return 130
    return 0 if record.get("status") == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
