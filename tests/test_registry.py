"""The paper's grids as declared in experiments/, and the scales they expand at."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conadv_repro.config import build_config
from conadv_repro.errors import UserError
from conadv_repro.launch.plan import apply_filters, expand, parse_sets
from conadv_repro.presets import scale_batch
from conadv_repro.registry import load_experiment, load_experiments
from tests.conftest import REPO


def runs_of(names, scale="smoke", sets=None, data_root=""):
    return expand(load_experiments(names), scale=scale, runs_dir=Path("runs"), sets=sets or {}, data_root=data_root)


def test_grids_have_the_papers_shapes():
    sizes = {e.name: len(e.cells) for e in load_experiments(["all"])}
    assert sizes == {"table1": 28, "table2": 21, "table3": 9, "table4": 12, "table5": 72, "figure2": 18,
                     "figure4": 21, "flatness": 12, "sharpness": 6, "staleness": 21}
    t1 = load_experiment("table1")
    assert t1.columns == ("1k", "4k", "8k", "16k", "32k", "64k", "96k")
    assert set(t1.rows) == {"ResNet-50", "ResNet-50+AA", "ResNet-50+DisAdv", "ResNet-50+ConAdv"}
    with pytest.raises(UserError, match="unknown experiment 'table9'; allowed: table1, table2, table3, table4, table5, figure2, figure4, flatness, sharpness, staleness, all"):
        load_experiment("table9")


def paper(name, row, column, metric="test_top1"):
    cell = next(c for c in load_experiment(name).cells if c.row == row and c.column == column)
    return cell.paper[metric]


def test_a_sample_of_the_papers_numbers():
    # Checked against the paper's text: section 4.2, 4.3, 4.5, 3.1 and Table 5.
    assert paper("table1", "ResNet-50", "96k") == 74.3 and paper("table1", "ResNet-50+ConAdv", "96k") == 75.3
    assert paper("table1", "ResNet-50+AA", "1k") == 77.5 and paper("table1", "ResNet-50", "1k") == 76.9
    assert paper("table2", "ResNet-50+ConAdv+AA", "96k") == 76.2
    assert paper("table4", "Vanilla ResNet-50", "96k", "gap") == 4.6 and paper("table4", "ConAdv", "96k", "gap") == 2.7
    assert paper("table4", "ConAdv + AA", "16k", "train_top1") == 81.6
    assert paper("table5", "ResNet-50 + ConAdv 64k", "p=5") == 76.7
    assert paper("table5", "ResNet-50 + ConAdv + AA 96k", "p=12") == 76.0
    assert paper("figure2", "ResNet-50", "128k") == 73.2 and paper("figure2", "ResNet-50+AA", "256k") == 62.5


def test_epsilon_follows_table5s_best_cells():
    def eps(name, row, column):
        cell = next(c for c in load_experiment(name).cells if c.row == row and c.column == column)
        return cell.overrides.get("attack.epsilon")

    assert [eps("table1", "ResNet-50+ConAdv", b) for b in ("1k", "16k", "32k", "64k", "96k")] == [3, 3, 3, 5, 8]
    assert [eps("table1", "ResNet-50+DisAdv", b) for b in ("32k", "64k", "96k")] == [3, 5, 8]
    assert [eps("table2", "ResNet-50+ConAdv+AA", b) for b in ("1k", "32k", "64k", "96k")] == [5, 5, 7, 8]
    assert eps("table1", "ResNet-50", "32k") is None


def test_shared_runs_are_one_run():
    everything = runs_of(["all"])
    # Table 3's are Table 1's; the staleness grid adds ConAdv at tau 0, 2, 4 and the noise control at 3 batches;
    # the sharpness grid's are Table 1's, and the flatness grid's are Table 1's and the noise control's at the
    # smoke scale (it trains longer only at the proxy scale).
    assert len(everything) == len({r.run_id for r in everything}) == 138
    table4 = {r.run_id for r in runs_of(["table4"])}
    assert table4 <= {r.run_id for r in runs_of(["table1", "table2"])}
    vanilla_32k = next(r for r in everything if r.config.method == "vanilla" and not r.config.autoaugment
                       and r.config.paper_batch == "32k")
    assert {use[0] for use in vanilla_32k.uses} == {"table1", "table2", "table3", "table4", "figure2", "sharpness",
                                                  "staleness", "flatness"}
    # Table 5's p=3 at 32k is Table 1's ConAdv 32k run.
    conadv_32k = next(r for r in everything if r.config.method == "conadv" and not r.config.autoaugment
                      and r.config.paper_batch == "32k" and r.config.attack.epsilon == 3)
    assert {use[0] for use in conadv_32k.uses} >= {"table1", "table5"}


def test_columns_mapping_to_one_batch_stay_distinct_runs():
    small = [r for r in runs_of(["table1"]) if r.config.method == "vanilla" and not r.config.autoaugment]
    assert [r.config.batch_size for r in small[:3]] == [8, 8, 8]  # 1k, 4k, 8k share the trained batch
    assert len({r.run_id for r in small}) == 7


def test_scale_batch_rule():
    assert [scale_batch("paper", b) for b in ("1k", "32k", "96k")] == [1024, 32768, 98304]
    assert [scale_batch("smoke", b) for b in ("1k", "32k", "64k", "96k", "256k")] == [8, 32, 64, 96, 256]
    assert scale_batch("cifar10", "32k") == 1152


def test_paper_scale_resolves_exactly_to_table6(tmp_path):
    from conadv_repro.engine.trainer import derive

    for part in ("train", "val"):
        (tmp_path / part / "n01440764").mkdir(parents=True)  # the class-folder layout the launcher checks
        (tmp_path / part / "n01440764" / "a.JPEG").touch()
    for batch, (lr, warmup) in {"32k": (35.0, 40.0), "64k": (41.0, 41.0), "96k": (43.0, 41.0)}.items():
        run = next(r for r in runs_of(["table1"], scale="paper", data_root=str(tmp_path))
                   if r.config.paper_batch == batch and r.config.method == "vanilla")
        cfg = run.config
        derived = derive(cfg, 1_278_167)
        assert (derived.peak_lr, derived.warmup_epochs) == (lr, warmup)
        assert cfg.batch_size == int(batch[:-1]) * 1024 and cfg.epochs == 90
        assert cfg.optim.name == "lars" and cfg.optim.momentum == 0.9 and cfg.optim.weight_decay == 5e-4
        assert cfg.optim.label_smoothing == 0.1 and cfg.model.name == "resnet50" and cfg.bn.group_size == 64
        assert cfg.data == "imagenet" and cfg.data_root == str(tmp_path)
    with pytest.raises(UserError, match="--scale paper needs the ImageNet folder"):
        runs_of(["table1"], scale="paper")


def test_the_paper_micro_batch_is_capped_at_a_trainers_share(tmp_path):
    # The paper preset's runtime.micro_batch=256 on 8 trainers at 1k (128 each): no accumulation, no error.
    from conadv_repro.engine.trainer import derive
    from conadv_repro.layout import check_layout

    cfg = build_config({"scale": "paper", "batch_size": 1024, "runtime.trainers": 8})
    assert cfg.runtime.micro_batch == 256 and check_layout(cfg, 8) == (8, 0)
    derived = derive(cfg, 1_278_167, trainers=8)
    assert (derived.micro_batch, derived.accumulation) == (128, 1)
    with pytest.raises(UserError, match="runtime.micro_batch=256 does not divide the per-trainer batch 384"):
        check_layout(cfg.replace({"batch_size": 3072}), 8)


def test_a_variation_touches_only_the_methods_that_use_it():
    base = {r.run_id: r for r in runs_of(["table1"])}
    varied = runs_of(["table1"], sets=parse_sets(["attack.bn_mode=eval"]))
    for run in varied:
        if run.config.method == "vanilla":
            assert run.run_id in base
        else:
            assert run.run_id not in base and run.config.attack.bn_mode == "eval"
    everyone = runs_of(["table1"], sets=parse_sets(["optim.momentum=0.92"]))
    assert not {r.run_id for r in everyone} & set(base)
    with pytest.raises(UserError, match="--set batch_size"):
        parse_sets(["batch_size=3"])


def test_filters_on_fields_and_labels():
    runs = runs_of(["table1"])
    kept = apply_filters(runs, ["method=conadv", "paper_batch=32k,64k"])
    assert [(r.config.method, r.config.paper_batch) for r in kept] == [("conadv", "32k"), ("conadv", "64k")]
    assert len(apply_filters(runs, ["autoaugment=true"])) == 7
    assert len(apply_filters(runs, ["row=ResNet-50+DisAdv"])) == 7
    assert len(apply_filters(runs, ["attack.epsilon=8"])) == 2
    with pytest.raises(UserError, match="--only key 'colour' is unknown"):
        apply_filters(runs, ["colour=red"])
    with pytest.raises(UserError, match="--only method=sgd matches no run; values here: conadv, disadv, vanilla"):
        apply_filters(runs, ["method=sgd"])


def test_grid_configs_are_plain_data_that_rebuild():
    for run in runs_of(["table5"]):
        assert build_config(run.config.flat()) == run.config


def test_three_way_bn_variation_touches_only_autoaugment_adversarial_runs():
    base = {r.run_id for r in runs_of(["table1", "table2"])}
    varied = runs_of(["table1", "table2"], sets=parse_sets(["bn.three_way=true"]))
    changed = [r for r in varied if r.run_id not in base]
    assert changed and all(r.config.method == "conadv" and r.config.autoaugment and r.config.bn.three_way
                           for r in changed)
    assert len(changed) == 7  # Table 2's ConAdv + AA row


def test_status_plans_without_the_dataset():
    runs = expand(load_experiments(["table1"]), scale="paper", runs_dir=Path("runs"), sets={}, check_data=False)
    assert len(runs) == 28
    with pytest.raises(UserError, match="holds no ImageNet"):
        runs_of(["table1"], scale="paper", data_root="/nonexistent")


def test_staleness_grid_shares_table1s_runs_and_varies_only_tau():
    table1 = {(r.config.method, r.config.paper_batch): r.run_id for r in runs_of(["table1"])
              if not r.config.autoaugment}
    cells = {(use[1], use[2]): r for r in runs_of(["staleness"]) for use in r.uses if use[0] == "staleness"}
    for batch in ("8k", "32k", "96k"):
        assert cells[("Vanilla", batch)].run_id == table1[("vanilla", batch)]
        assert cells[("DisAdv", batch)].run_id == table1[("disadv", batch)]
        assert cells[("ConAdv tau=1", batch)].run_id == table1[("conadv", batch)]
        tau1 = cells[("ConAdv tau=1", batch)].config
        for tau in (0, 2, 4):
            cfg = cells[(f"ConAdv tau={tau}", batch)].config
            assert cfg.conadv.tau == tau and cfg.replace({"conadv.tau": 1}).run_id() == tau1.run_id()
        noise = cells[("Noise (control)", batch)].config
        assert noise.method == "noise" and noise.attack.epsilon == tau1.attack.epsilon


def test_a_users_own_experiments_folder_imports_the_suites_common(tmp_path, cli_env):
    """CONADV_EXPERIMENTS: a folder anywhere (here without __init__.py), whose files import the suite's
    `experiments.common`, planned by the launcher in a fresh process with nothing added to sys.path."""
    mine = tmp_path / "my_grids"
    mine.mkdir()
    (mine / "widebatch.py").write_text(
        "from experiments.common import batch_grid\n\n"
        "EXPERIMENT = batch_grid(name='widebatch', title='Mine', description='vanilla at 2k and 8k',\n"
        "                        columns=('2k', '8k'), rows={'ResNet-50': ('vanilla', False, (76.0, 75.0))})\n")
    env = {**cli_env, "CONADV_EXPERIMENTS": str(mine)}
    out = subprocess.run([sys.executable, "-m", "conadv_repro.launch", "--list"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "widebatch" in out.stdout and "smoke 2" in out.stdout, out.stdout
    code = ("import sys; from conadv_repro.registry import load_experiment; e = load_experiment('widebatch'); "
            f"print(len(e.cells), {str(tmp_path)!r} in sys.path, any('my_grids' in p for p in sys.path))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split() == ["2", "False", "False"], out.stderr
