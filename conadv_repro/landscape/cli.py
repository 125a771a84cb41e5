"""Sharpness of a run's network: `python -m conadv_repro.landscape RUN_DIR`.

Measures the run's final network (eval mode, main BN, running statistics fixed) on a fixed sample of
clean training examples: the top Hessian eigenvalue of the training loss (the primary figure) and of
plain cross-entropy, the Hessian trace, the scale-invariant eigenvalue of diag(|w|) H diag(|w|), Keskar's
epsilon-sharpness and a filter-normalised 1-D slice; with --between, the line to another run. Writes
RUN_DIR/landscape.json, one entry per key (settings, code version, checkpoint); the same key again
reuses its entry. Progress goes to stderr, one line per measure. Definitions: docs/landscape.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from conadv_repro.errors import OneLineParser, at_least_one, cli_entry, count_at_least
from conadv_repro.landscape.settings import (
    DEFAULT_MICRO_BATCH,
    DEFAULT_SEED,
    MEASURE_HELP,
    MEASURES,
    TRACE_PROBES,
    Settings,
    default_examples,
    parse_measures,
)

EXAMPLES = """measures:
""" + "".join(f"  {name:11s} {text}\n" for name, text in MEASURE_HELP.items()) + """
examples:
  python -m conadv_repro.landscape runs/proxy/0123456789ab
  python -m conadv_repro.landscape RUN_DIR --measures eigenvalue,trace --examples 1024 --micro-batch 64
  python -m conadv_repro.landscape runs/proxy/A --between runs/proxy/B      # adds the line from A to B
  python -m conadv_repro.landscape RUN_DIR --allow-unfinished               # newest checkpoint of a running run
"""


at_least_two = count_at_least(2, " (for a standard error)")
not_negative = count_at_least(0)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m conadv_repro.landscape", description=__doc__, epilog=EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run directory written by conadv_repro.train")
    parser.add_argument("--measures", default=None, metavar="LIST",
                        help=f"comma-separated, of: {', '.join(MEASURES)} (default: all but between; between "
                             "comes with --between)")
    parser.add_argument("--examples", type=at_least_one, default=None, metavar="N",
                        help="training examples in the sample (default: 5000 on imagenet, else 512)")
    parser.add_argument("--micro-batch", type=at_least_one, default=DEFAULT_MICRO_BATCH, metavar="N",
                        help=f"examples per forward/backward; memory stays at one (default: {DEFAULT_MICRO_BATCH})")
    parser.add_argument("--between", type=Path, default=None, metavar="OTHER_RUN",
                        help="also measure the line from this run to OTHER_RUN (same network, same data)")
    parser.add_argument("--allow-unfinished", action="store_true",
                        help="measure the newest checkpoint that verifies when final.pt is missing or does not verify")
    parser.add_argument("--probes", type=at_least_two, default=TRACE_PROBES, metavar="N",
                        help=f"Rademacher probes of the trace (default: {TRACE_PROBES})")
    parser.add_argument("--seed", type=not_negative, default=DEFAULT_SEED, metavar="N",
                        help=f"seed of the probes and directions (default: {DEFAULT_SEED}); the sample's is fixed")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    parser.add_argument("--threads", type=at_least_one, default=None, metavar="N",
                        help="torch CPU threads (default: torch's); results repeat bit for bit at one count")
    parser.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                        help="the dataset folder, in place of the data_root stored in the run's config")
    parser.add_argument("--recompute", action="store_true", help="measure again even if the key has an entry")
    parser.add_argument("--json", action="store_true", help="print the entry as JSON instead of lines")
    args = parser.parse_args(argv)
    measures = parse_measures(args.measures, between=args.between is not None)

    import torch

    from conadv_repro.engine.rundir import RunDirectory
    from conadv_repro.engine.trainer import resolve_device
    from conadv_repro.landscape.measure import measure_run, summary_line

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    examples = args.examples
    if examples is None:
        cfg = RunDirectory(args.run_dir).stored_config() if args.run_dir.is_dir() else None
        examples = default_examples(cfg.data if cfg is not None else "")
    settings = Settings(measures=measures, examples=examples, micro_batch=args.micro_batch, seed=args.seed,
                        probes=args.probes)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    entry, reused = measure_run(args.run_dir, settings, device=device, allow_unfinished=args.allow_unfinished,
                                between=args.between, data_root=args.data_root, recompute=args.recompute, log=log)
    if args.json:
        print(json.dumps(entry, sort_keys=True))
        return 0
    run, sample = entry["run"], entry["sample"]
    print(f"{args.run_dir} ({run['checkpoint']['file']}, step {run['checkpoint']['step']}), entry {entry['key_id']}"
          f"{' (reused)' if reused else ''}")
    print(f"  sample      {sample['examples']} examples: loss {sample['loss']:.6g}, cross-entropy "
          f"{sample['loss_ce']:.6g}, top-1 {sample['top1']:.2f}%")
    for measure in entry["key"]["measures"]:  # the file's keys are sorted; the key keeps the measures' order
        print(f"  {measure:11s} {summary_line(measure, entry['results'][measure])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
