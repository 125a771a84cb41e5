"""Clean top-1/top-5 of a run's checkpoint: `python -m conadv_repro.evaluate RUN_DIR`.

Evaluates the newest valid checkpoint (the final one when the run finished) on the test set and on the
training set (eval mode, no augmentation), with the run's own config.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from conadv_repro.errors import OneLineParser, UserError, cli_entry


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m conadv_repro.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run directory written by conadv_repro.train")
    parser.add_argument("--splits", default="test,train", help="comma-separated: test, train, val (default: test,train)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = parser.parse_args(argv)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    bad = [s for s in splits if s not in ("test", "train", "val")]
    if bad or not splits:
        raise UserError(f"--splits={args.splits!r} is not allowed; allowed: test, train, val (comma-separated)")

    from conadv_repro.engine.checkpoint import load_latest_checkpoint
    from conadv_repro.engine.rundir import RunDirectory
    from conadv_repro.engine.trainer import Trainer

    rd = RunDirectory(args.run_dir)
    cfg = rd.stored_config()
    if cfg is None:
        raise UserError(f"{args.run_dir} is not a run directory (no config.json)")
    cfg = cfg.replace({"runtime.device": args.device})
    loaded = load_latest_checkpoint(rd.path)
    if loaded is None:
        raise UserError(f"run directory {args.run_dir} has no usable checkpoint yet")
    state, path = loaded
    trainer = Trainer(cfg, log=lambda _msg: None)
    try:
        trainer.model.load_state_dict(state["model"])
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


if __name__ == "__main__":
    sys.exit(main())
