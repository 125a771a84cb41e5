"""The proxy evidence's path, reduced so that CI runs it: the launcher at the proxy scale (its LRs, warmup
and seeds) with two seeds, two batch sizes, a one-epoch budget and the smoke scale's width (8, a third of
the width 16's compute), then make_tables on those runs, into a temporary folder. The committed
results/proxy/ is never read or written."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from tests.conftest import REPO
from tests.helpers import run_cli

# 64k (batch 64, 19 steps an epoch) rather than 8k (batch 8, 157 steps): the same path, and an epoch's
# images cost the same at any batch size, so fewer steps save each step's fixed cost.
SETS = ["--set", "epochs=1", "model.width=8"]
REDUCED = ["--only", "seed=0,1", "--only", "paper_batch=64k,96k", *SETS]


def snapshot(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.exists() else {}


@pytest.mark.slow
def test_reduced_proxy_evidence_trains_and_renders(tmp_path, cli_env):
    committed = snapshot(REPO / "results" / "proxy")
    runs, results = tmp_path / "runs", tmp_path / "results"
    start = time.time()
    out = run_cli(["-m", "conadv_repro.launch", "table1", "table4", "--scale", "proxy", "--cluster", "local",
                   "--runs-dir", str(runs), *REDUCED], cli_env, tmp_path, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    # Table 1's four rows at 64k and 96k, and Table 4's ConAdv + AutoAugment at both, two seeds each.
    assert out.stdout.strip().splitlines()[-1] == "20 runs: 20 finished"
    tables = run_cli([str(REPO / "analysis" / "make_tables.py"), "--scale", "proxy", "--runs-dir", str(runs),
                      "--out", str(results), "--experiments", "table1,table4", *SETS, "--quiet"],
                     cli_env, tmp_path)
    elapsed = time.time() - start
    assert tables.returncode == 0, tables.stderr
    assert "table1: 8 of 28 cells filled (proxy scale)" in tables.stdout
    cells = pd.read_csv(results / "proxy" / "table1.csv")
    filled = cells[cells["runs_finished"] > 0]
    assert set(filled["column"]) == {"64k", "96k"} and set(filled["runs_finished"]) == {2}
    assert set(filled["seeds"]) == {"0 1"} and set(filled["runs"]) == {5}
    pairs = pd.read_csv(results / "proxy" / "table1_paired.csv")
    done = pairs[pairs["n"] > 0]
    assert len(done) == 2 * (3 + 1)  # AA, DisAdv, ConAdv - vanilla; ConAdv - DisAdv; at two batch sizes
    assert done["ci_low"].notna().all() and (done["ci_low"] <= done["mean_diff"]).all()
    markdown = (results / "proxy" / "table1.md").read_text()
    assert "(n=2)" in markdown and "## Paired differences" in markdown
    gap = pd.read_csv(results / "proxy" / "table4.csv")
    assert set(gap.loc[gap["runs_finished"] > 0, "column"]) == {"64k", "96k"}
    assert snapshot(REPO / "results" / "proxy") == committed
    print(f"reduced proxy evidence: {elapsed:.0f} s")
