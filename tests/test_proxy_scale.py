"""The proxy scale's presets: the swept peak LR per batch size, Table 6's warmup share of the budget,
five seeds per cell; and the sweep script that chose them (on the validation split), end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

from conadv_repro.config import build_config
from conadv_repro.launch.plan import expand
from conadv_repro.presets import PROXY_LR, SCALES, proxy_lr, proxy_warmup_epochs
from conadv_repro.registry import load_experiments
from tests.helpers import run_cli


def test_proxy_lr_per_batch_and_warmup_share():
    for batch, lr in PROXY_LR.items():
        cfg = build_config({"scale": "proxy", "batch_size": batch})
        assert cfg.optim.lr == lr and cfg.epochs == SCALES["proxy"]["epochs"]
    # Log-linear between swept batch sizes, the nearest's outside them.
    lo, hi = PROXY_LR[16], PROXY_LR[32]
    assert math.isclose(proxy_lr(24), lo * (hi / lo) ** (math.log(24 / 16) / math.log(2)), rel_tol=1e-6)
    assert proxy_lr(4) == PROXY_LR[8] and proxy_lr(1024) == PROXY_LR[256]
    # From 32k up (batch 32 of 1257 images stands for 32,615 of ImageNet's) the paper warms up 40-41 of 90
    # epochs; below 32k it keeps 32k's warmup steps, so batch 8 warms up a quarter as many epochs.
    assert math.isclose(proxy_warmup_epochs(96, 9.0), 9.0 * 41 / 90, rel_tol=1e-3)
    assert math.isclose(proxy_warmup_epochs(8, 9.0), proxy_warmup_epochs(32, 9.0) / 4, rel_tol=1e-3)
    cfg = build_config({"scale": "proxy", "batch_size": 96, "epochs": 1})
    assert math.isclose(cfg.schedule.warmup_epochs, proxy_warmup_epochs(96, 1.0))
    assert build_config({"scale": "proxy", "batch_size": 96, "optim.lr": 0.5}).optim.lr == 0.5


def test_smoke_scale_is_unchanged():
    cfg = build_config({"scale": "smoke", "batch_size": 96})
    assert (cfg.optim.lr, cfg.steps, cfg.schedule.warmup_epochs, cfg.model.width) == (4.0, 40, 0.0, 8)


def test_proxy_grid_has_five_seeds_per_cell_and_the_swept_lrs():
    runs = expand(load_experiments(["table1"]), scale="proxy", runs_dir=Path("runs"), sets={}, check_data=False)
    assert len(runs) == 28 * 5
    assert {r.config.seed for r in runs} == {0, 1, 2, 3, 4}
    assert {(r.config.batch_size, r.config.optim.lr) for r in runs} == \
        {(b, PROXY_LR[b]) for b in (8, 16, 32, 64, 96)}


def test_sweep_trains_on_val_writes_its_table_and_resumes(tmp_path, cli_env):
    args = ["-m", "conadv_repro.sweep", "--batches", "96", "--lrs", "1,2", "--seeds", "0",
            "--epochs", "0.1", "--jobs", "2", "--out", str(tmp_path)]
    first = run_cli(args, cli_env, tmp_path, timeout=300)
    assert first.returncode == 0, first.stderr
    trials = [json.loads(line) for line in (tmp_path / "lr_sweep_trials.jsonl").read_text().splitlines()]
    assert len(trials) == 2 and all(t["steps"] == 1 and "val_top1" in t and "test_top1" not in t for t in trials)
    markdown = (tmp_path / "lr_sweep.md").read_text()
    assert "| 96 |" in markdown and "on the validation split" in markdown
    again = run_cli(args, cli_env, tmp_path, timeout=300)
    assert again.returncode == 0 and "2 done already, 0 to train" in again.stdout
    assert len((tmp_path / "lr_sweep_trials.jsonl").read_text().splitlines()) == 2
