"""Check every GPU path of the suite on this machine's GPU, in about 5 minutes (docs/gpu-check.md).

    python -m conadv_repro.gpu_check                          # everything, on the GPU
    python -m conadv_repro.gpu_check --only speed             # one section again (also: a,b)
    python -m conadv_repro.gpu_check --cpu-smoke              # the same code, shrunk, on the CPU

Sections: deterministic, fast (section 1, correctness), speed (2), memory (peak memory per method; writes
the memory calibration), calibration (3, runs the speed measurements it needs), multi-gpu (4). Exit
status: 0 when every check passed (a missed speed goal is reported, not failed), 1 when one failed, 2 when
the check cannot run here (no GPU, bad arguments).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from conadv_repro.errors import OneLineParser, UserError, at_least_one, cli_entry

BUDGET_S = 300.0


def parse_sections(text: str) -> list[str]:
    from conadv_repro.gpu_check.plan import SECTIONS

    names = [part.strip() for part in text.split(",") if part.strip()]
    for name in names:
        if name not in SECTIONS:
            raise argparse.ArgumentTypeError(f"--only {name!r} is not a section; allowed: {', '.join(SECTIONS)}")
    if not names:
        raise argparse.ArgumentTypeError(f"--only needs a section; allowed: {', '.join(SECTIONS)}")
    return names


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="python -m conadv_repro.gpu_check", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", type=parse_sections, action="append", metavar="SECTION[,SECTION]",
                        help="run these sections only (repeatable)")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="the shrunken CPU version (CI): tiny networks, few rounds, no torch.compile")
    parser.add_argument("--calibration-out", type=Path, default=None, metavar="PATH",
                        help="where the calibration goes (default on a GPU: benchmarks/calibrations/<gpu>-gpu-check.json "
                             "from a clone's root; the CPU smoke writes none unless given)")
    parser.add_argument("--rounds", type=at_least_one, default=None,
                        help="timed rounds of the speed section (default 5 on a GPU)")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Before torch touches CUDA: PyTorch reads the cuBLAS workspace setting once, at the first cuBLAS call,
    # so the deterministic section is exact whichever section runs first (":4096:8" is also about the
    # workspace PyTorch gives a Hopper GPU by default, so the speed section is not slowed). The check's
    # runs are scratch runs in temporary folders: W&B stays off whatever the environment says.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    os.environ["WANDB_MODE"] = "disabled"
    try:
        import torch
    except ImportError:
        raise UserError(f"this Python ({sys.executable}) has no torch; allowed: a Python with torch and "
                        "torchvision, e.g. make gpu-check PYTHON=.venv/bin/python") from None

    if not args.cpu_smoke and not torch.cuda.is_available():
        raise UserError(f"no CUDA device is visible to torch {torch.__version__} (built for CUDA "
                        f"{torch.version.cuda or 'none'}): the GPU check needs one; allowed here: --cpu-smoke, "
                        "the shrunken CPU version")
    from conadv_repro.gpu_check.calibration import calibration_section, check_writable, default_path
    from conadv_repro.gpu_check.correctness import deterministic_section, fast_section
    from conadv_repro.gpu_check.device import describe, gpu_name
    from conadv_repro.gpu_check.memory_section import default_memory_path, memory_section
    from conadv_repro.gpu_check.multi_gpu import multi_gpu_section
    from conadv_repro.gpu_check.plan import GPU, SECTIONS, SMOKE
    from conadv_repro.gpu_check.report import Report
    from conadv_repro.gpu_check.speed import SpeedResult, speed_section

    chosen = [name for group in args.only for name in group] if args.only else list(SECTIONS)
    sections = [name for name in SECTIONS if name in chosen]
    plan = SMOKE if args.cpu_smoke else GPU
    if args.rounds:
        plan = dataclasses.replace(plan, rounds=args.rounds)
    calibration_path = args.calibration_out
    if calibration_path is None and not plan.smoke:
        calibration_path = default_path(gpu_name())
    if "calibration" in sections and calibration_path is not None:
        check_writable(calibration_path)
    if "memory" in sections and not plan.smoke:
        check_writable(default_memory_path(gpu_name()), "the memory calibration")

    report = Report()
    report.line(f"gpu-check ({plan.name}): {describe(plan.device)}")
    report.line(f"sections: {', '.join(sections)}")
    if "deterministic" in sections:
        deterministic_section(plan, report)
    if "fast" in sections:
        fast_section(plan, report)
    result = SpeedResult()
    if "speed" in sections or "calibration" in sections:
        if "speed" not in sections:
            report.line("calibration needs the speed measurements: they run first")
        result = speed_section(plan, report)
    if "memory" in sections:
        memory_section(plan, report, sys.argv[1:] if argv is None else argv)
    if "calibration" in sections:
        calibration_section(plan, report, result, calibration_path, sys.argv[1:] if argv is None else argv)
    if "multi-gpu" in sections:
        # The CPU smoke runs the gloo stand-in only when asked for by name: three processes with their own
        # torch imports are most of a minute on a small CPU.
        multi_gpu_section(plan, report, on_cpu=plan.smoke and "multi-gpu" in chosen and bool(args.only))
    report.summary(None if plan.smoke else BUDGET_S)
    return 1 if report.failed else 0
