"""The tables' statistics against hand computation: mean±std per cell, paired differences against vanilla
and DisAdv on the seeds both cells finished, and their 95% paired-t intervals; on synthetic run
directories of the proxy scale (five seeds per cell), one of them missing a seed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis.tables import T975, PairedResult, t_quantile
from conadv_repro.launch.plan import expand
from conadv_repro.registry import load_experiments
from tests.conftest import REPO

SCRIPT = str(REPO / "analysis" / "make_tables.py")


def t_cdf(x: float, df: int, steps: int = 20000) -> float:
    """Student t CDF by Simpson's rule on the density (independent of the tabulated values)."""
    const = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))

    def pdf(t: float) -> float:
        return const * (1 + t * t / df) ** (-(df + 1) / 2)

    h = x / steps
    total = pdf(0) + pdf(x) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, steps))
    return 0.5 + total * h / 3


def test_t_table_is_the_0975_quantile():
    assert len(T975) == 60
    for df in (1, 2, 3, 4, 5, 9, 19, 30, 60):
        assert abs(t_cdf(T975[df - 1], df, steps=200000 if df == 1 else 20000) - 0.975) < 2e-5, df
    assert [t_quantile(df) for df in (1, 4, 30)] == [12.7062, 2.7764, 2.0423]
    assert abs(t_quantile(120) - 1.9799) < 1e-4 and abs(t_quantile(10_000) - 1.96) < 1e-3
    values = list(T975)
    assert values == sorted(values, reverse=True)


def test_paired_interval_by_hand():
    pair = PairedResult("e", "row", "col", "test_top1", "vanilla", [0, 1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert pair.mean == 3.0 and abs(pair.std - math.sqrt(2.5)) < 1e-12
    lo, hi = pair.ci
    half = 2.7764 * math.sqrt(2.5) / math.sqrt(5)
    assert abs(lo - (3 - half)) < 1e-12 and abs(hi - (3 + half)) < 1e-12
    assert pair.text() == "+3.00 [+1.04, +4.96] (n=5)"
    constant = PairedResult("e", "r", "c", "m", "DisAdv", [0, 1], [-0.5, -0.5])
    assert constant.ci == (-0.5, -0.5) and constant.text() == "-0.50 [-0.50, -0.50] (n=2)"
    assert PairedResult("e", "r", "c", "m", "vanilla", [3], [1.25]).text() == "+1.25 (n=1)"
    assert PairedResult("e", "r", "c", "m", "vanilla", [], []).text() == "no pairs"


# Table 1 and Table 4 at 32k, proxy scale: per seed, test top-1 (and train top-1 for Table 4's gap).
VANILLA = [90.0, 91.0, 89.0, 92.0, 88.0]
DISADV = [v + d for v, d in zip(VANILLA, [1.0, 2.0, 3.0, 4.0, 5.0], strict=True)]  # +3 [+1.04, +4.96]
CONADV = {0: 91.5, 1: 92.0, 2: 89.5, 4: 91.0}  # seed 3 never finished
TRAIN = {"vanilla": [99.0, 98.0, 99.5, 97.0, 98.5], "conadv": {0: 96.0, 1: 95.5, 2: 96.5, 4: 95.0}}


def write_run(run_dir: Path, cfg, final: dict) -> None:
    run_dir.mkdir(parents=True)
    record = {"run_id": cfg.run_id(), "status": "finished", "config": cfg.flat(), "final": final,
              "steps_done": 1, "total_steps": 1}
    (run_dir / "record.json").write_text(json.dumps(record))


@pytest.fixture(scope="module")
def proxy_runs(tmp_path_factory) -> Path:
    runs_dir = tmp_path_factory.mktemp("stats") / "runs"
    planned = expand(load_experiments(["table1", "table4"]), scale="proxy", runs_dir=runs_dir, sets={},
                     check_data=False)
    for run in planned:
        cfg = run.config
        if cfg.paper_batch != "32k" or cfg.autoaugment:
            continue
        seed = cfg.seed
        if cfg.method == "vanilla":
            final = {"test_top1": VANILLA[seed], "train_top1": TRAIN["vanilla"][seed]}
        elif cfg.method == "disadv":
            final = {"test_top1": DISADV[seed]}
        elif seed in CONADV:
            final = {"test_top1": CONADV[seed], "train_top1": TRAIN["conadv"][seed]}
        else:
            continue
        write_run(run.run_dir, cfg, final)
    return runs_dir


def make_tables(runs_dir: Path, out: Path, experiments: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, "--scale", "proxy", "--runs-dir", str(runs_dir), "--out",
                           str(out), "--experiments", experiments, "--quiet"], env=env, capture_output=True,
                          text=True, timeout=120)


def ci(diffs: list[float]) -> tuple[float, float, float]:
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = T975[n - 2] * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def test_proxy_tables_cells_and_paired_differences(proxy_runs, tmp_path, cli_env):
    out = make_tables(proxy_runs, tmp_path / "results", "table1,table4", cli_env)
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "results" / "proxy"
    cells = pd.read_csv(folder / "table1.csv").set_index(["row", "column"])
    vanilla = cells.loc[("ResNet-50", "32k")]
    assert vanilla.runs_finished == 5 and abs(vanilla.ours_mean - 90.0) < 1e-9
    assert abs(vanilla.ours_std - math.sqrt(2.5)) < 1e-9 and vanilla.seeds == "0 1 2 3 4"
    conadv = cells.loc[("ResNet-50+ConAdv", "32k")]
    assert conadv.runs_finished == 4 and conadv.runs == 5 and conadv.seeds == "0 1 2 4"
    markdown = (folder / "table1.md").read_text()
    assert "90.00±1.58 (n=5) / 76.6 (+13.40)" in markdown
    assert "91.00±1.08 (n=4) / 77.3 (+13.70)" in markdown

    pairs = pd.read_csv(folder / "table1_paired.csv").set_index(["row", "column", "reference"])
    dis = pairs.loc[("ResNet-50+DisAdv", "32k", "vanilla")]
    assert dis.n == 5 and dis.mean_diff == pytest.approx(3.0)
    assert (dis.ci_low, dis.ci_high) == pytest.approx((3 - 1.963211, 3 + 1.963211), abs=1e-6)  # 2.7764 * sqrt(2.5 / 5)
    # ConAdv's missing seed 3 drops out of both of its pairs.
    con_v = pairs.loc[("ResNet-50+ConAdv", "32k", "vanilla")]
    expected = [CONADV[s] - VANILLA[s] for s in (0, 1, 2, 4)]  # 1.5, 1.0, 0.5, 3.0
    assert con_v.n == 4 and con_v.seeds == "0 1 2 4"
    assert (con_v.mean_diff, con_v.ci_low, con_v.ci_high) == pytest.approx(ci(expected))
    con_d = pairs.loc[("ResNet-50+ConAdv", "32k", "DisAdv")]
    expected_d = [CONADV[s] - DISADV[s] for s in (0, 1, 2, 4)]  # 0.5, -1.0, -2.5, -2.0
    assert (con_d.mean_diff, con_d.ci_low, con_d.ci_high) == pytest.approx(ci(expected_d))
    mean, lo, hi = ci(expected_d)
    assert f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}] (n=4)" in markdown
    assert "## Paired differences" in markdown
    # No row is compared with itself, AutoAugment alone is not compared with DisAdv, and a column with
    # no runs has no pairs.
    assert ("ResNet-50", "32k", "vanilla") not in pairs.index
    assert ("ResNet-50+DisAdv", "32k", "DisAdv") not in pairs.index
    assert ("ResNet-50+AA", "32k", "DisAdv") not in pairs.index
    assert pairs.loc[("ResNet-50+DisAdv", "64k", "vanilla")].n == 0

    gap = pd.read_csv(folder / "table4.csv").set_index(["row", "column", "metric"])
    conadv_gap = gap.loc[("ConAdv", "32k", "gap")]
    per_seed = [TRAIN["conadv"][s] - CONADV[s] for s in (0, 1, 2, 4)]
    assert conadv_gap.ours_mean == pytest.approx(sum(per_seed) / 4)
    assert [float(v) for v in conadv_gap["values"].split()] == pytest.approx(per_seed)
    gap_pairs = pd.read_csv(folder / "table4_paired.csv").set_index(["row", "column", "metric", "reference"])
    conadv_vs = gap_pairs.loc[("ConAdv", "32k", "gap", "vanilla")]
    diffs = [per_seed[i] - (TRAIN["vanilla"][s] - VANILLA[s]) for i, s in enumerate((0, 1, 2, 4))]
    assert (conadv_vs.mean_diff, conadv_vs.ci_low, conadv_vs.ci_high) == pytest.approx(ci(diffs))
    assert "ConAdv − vanilla: Generalization gap" in (folder / "table4.md").read_text()
