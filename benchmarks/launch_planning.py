"""How fast the launcher plans: `launch all --dry-run` over 10,000 existing run directories.

Goal: at most 1 s of wall time, process start included. The planning and status paths never import
torch (they read run records and locks as JSON). This script makes a temporary runs folder holding
10,000 run directories (finished records, claims and leftovers), including every run of every grid at
the smoke scale, then times the command as a subprocess, best of a few tries.

    python benchmarks/launch_planning.py [--dirs 10000] [--tries 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conadv_repro.launch.plan import expand
from conadv_repro.registry import load_experiments


def populate(root: Path, count: int) -> None:
    runs = expand(load_experiments(["all"]), scale="smoke", runs_dir=root, sets={})
    for i, run in enumerate(runs):
        run.run_dir.mkdir(parents=True)
        status = ("finished", "failed", "running")[i % 3]
        (run.run_dir / "record.json").write_text(json.dumps({"status": status, "final": {"test_top1": 50.0}}))
    for i in range(count - len(runs)):  # other runs: earlier variations, other scales
        folder = root / ("smoke" if i % 2 else "proxy") / f"{i:012x}"
        folder.mkdir(parents=True)
        (folder / "record.json").write_text('{"status": "finished"}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dirs", type=int, default=10_000)
    parser.add_argument("--tries", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "runs"
        populate(root, args.dirs)
        command = [sys.executable, "-m", "conadv_repro.launch", "all", "--dry-run", "--runs-dir", str(root),
                   "--cluster", "local"]
        times, last = [], None
        for _ in range(args.tries):
            start = time.perf_counter()
            last = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
            times.append(time.perf_counter() - start)
            if last.returncode != 0:
                raise SystemExit(last.stderr)
        probe = subprocess.run([sys.executable, "-c", "import sys, runpy; sys.argv=['x','all','--dry-run',"
                                f"'--runs-dir','{root}','--cluster','local']; import conadv_repro.launch.cli as c; "
                                "c.main(sys.argv[1:]); print('torch imported:', 'torch' in sys.modules)"],
                               capture_output=True, text=True)
    print(f"launch all --dry-run over {args.dirs:,} run directories: best {min(times):.3f} s, "
          f"median {sorted(times)[len(times) // 2]:.3f} s of {args.tries} (goal <= 1 s, process start included)")
    print(f"last line: {last.stdout.strip().splitlines()[-1]}")
    print(probe.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
