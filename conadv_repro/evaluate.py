"""Clean top-1/top-5 of a run's checkpoint: `python -m conadv_repro.evaluate RUN_DIR`.

Evaluates the newest valid checkpoint (the final one when the run finished), or the one --checkpoint
names, on the test set and on the training set (eval mode, no augmentation), with the run's own config.
A run directory moved to another machine or folder finds its dataset again with --data-root.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from conadv_repro.errors import OneLineParser, UserError, at_least_one, cli_entry

EXAMPLES = """examples:
  python -m conadv_repro.evaluate runs/smoke/0123456789ab
  python -m conadv_repro.evaluate moved/run --data-root /mnt/imagenet          # the run's dataset is elsewhere now
  python -m conadv_repro.evaluate RUN_DIR --checkpoint RUN_DIR/checkpoints/step-00000200.pt --batch-size 128
"""


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m conadv_repro.evaluate", description=__doc__, epilog=EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run directory written by conadv_repro.train")
    parser.add_argument("--splits", default="test,train", help="comma-separated: test, train, val (default: test,train)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    parser.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                        help="the dataset folder, in place of the data_root stored in the run's config "
                             "(for a run directory or dataset that has moved)")
    parser.add_argument("--checkpoint", type=Path, default=None, metavar="PATH",
                        help="evaluate this checkpoint file of the run (default: its final one, or its newest "
                             "valid one while it has not finished)")
    parser.add_argument("--batch-size", type=at_least_one, default=None, metavar="N",
                        help="images per evaluation batch (default: the run's runtime.eval_batch)")
    args = parser.parse_args(argv)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    bad = [s for s in splits if s not in ("test", "train", "val")]
    if bad or not splits:
        raise UserError(f"--splits={args.splits!r} is not allowed; allowed: test, train, val (comma-separated)")

    from conadv_repro.engine.checkpoint import load_latest_checkpoint
    from conadv_repro.engine.rundir import RunDirectory, read_run_config
    from conadv_repro.engine.trainer import Trainer

    rd = RunDirectory(args.run_dir)
    cfg = read_run_config(args.run_dir, data_root=args.data_root)
    overrides: dict[str, object] = {"runtime.device": args.device}
    if args.batch_size is not None:
        overrides["runtime.eval_batch"] = args.batch_size
    cfg = cfg.replace(overrides)
    if args.checkpoint is not None:
        path = args.checkpoint
        if not path.is_absolute() and not path.exists() and (rd.path / path).exists():
            path = rd.path / path  # `checkpoints/final.pt`, as the run directory lists it
        state = _named_checkpoint(path, cfg.run_id())
    else:
        loaded = load_latest_checkpoint(rd.path)
        if loaded is None:
            raise UserError(f"run directory {args.run_dir} has no usable checkpoint yet")
        state, path = loaded
    trainer = Trainer(cfg, log=lambda _msg: None)
    try:
        try:
            trainer.model.load_state_dict(state["model"])
        except (KeyError, RuntimeError) as error:
            first = str(error).strip().splitlines()[0]
            raise UserError(f"checkpoint {path} does not fit the run's network ({first})") from None
        results = {split: trainer.evaluate(split) for split in splits}
    finally:
        trainer.close()
    if args.json:
        print(json.dumps({"run_dir": str(rd.path), "checkpoint": path.name, "step": state["step"], **results}))
    else:
        print(f"{rd.path} ({path.name}, step {state['step']})")
        for split, res in results.items():
            print(f"  {split:5s} top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  loss {res['loss']:.4f}  "
                  f"({res['count']} images)")
    return 0


def _named_checkpoint(path: Path, run_id: str) -> dict[str, Any]:
    """The checkpoint file `path` (opened weights-only, its checksum verified), if it is this run's."""
    from conadv_repro.engine.checkpoint import load_checkpoint_file

    if not path.is_file():
        what = "is a folder, not a checkpoint file" if path.is_dir() else "does not exist"
        raise UserError(f"--checkpoint {path} {what}; allowed: e.g. RUN_DIR/checkpoints/final.pt")
    try:
        state = load_checkpoint_file(path)
    except OSError as error:
        raise UserError(f"--checkpoint {path} cannot be read ({error.strerror or error})") from None
    except RuntimeError as error:  # names the file and why it does not verify
        raise UserError(f"--checkpoint: {error}") from None
    if state.get("run_id") != run_id:
        # Another run's network would be evaluated with this run's data and config, and reported as its.
        raise UserError(f"--checkpoint {path} belongs to run {state.get('run_id')}, not to this run directory's "
                        f"config ({run_id})")
    return state


if __name__ == "__main__":
    sys.exit(main())
