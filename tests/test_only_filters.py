"""`--only` values read as `--set` reads them (case aside, `32K` is 32k), and the values listed when
nothing matches are in order of size."""

from __future__ import annotations

from pathlib import Path

import pytest

from conadv_repro.errors import UserError
from conadv_repro.launch.plan import PlannedRun, apply_filters, expand
from conadv_repro.registry import load_experiments


def figure2_runs(tmp_path: Path) -> list[PlannedRun]:
    return expand(load_experiments(["figure2"]), scale="smoke", runs_dir=tmp_path, sets={}, check_data=False)


@pytest.mark.parametrize("only", [
    ["paper_batch=32K"], ["paper_batch=32k"], ["paper_batch=32768"], ["column=32K"],
    ["paper_batch=32K", "method=VANILLA", "row=resnet-50"], ["paper_batch=32K", "autoaugment=TRUE"],
])
def test_only_values_ignore_case_and_read_batch_sizes(tmp_path, only):
    kept = apply_filters(figure2_runs(tmp_path), only)
    assert kept and {run.config.paper_batch for run in kept} == {"32k"}
    assert len(kept) == (1 if len(only) > 1 else 2)


def test_batch_size_takes_the_k_suffix_in_either_case(tmp_path):
    runs = figure2_runs(tmp_path)
    # At the smoke scale 1k, 4k and 8k all train batch 8; 256k trains 256.
    assert {r.config.paper_batch for r in apply_filters(runs, ["batch_size=8"])} == {"1k", "4k", "8k"}
    assert apply_filters(runs, ["batch_size=256"]) == apply_filters(runs, ["paper_batch=256K"])


def test_values_of_a_miss_are_listed_by_size(tmp_path):
    runs = figure2_runs(tmp_path)
    with pytest.raises(UserError) as caught:
        apply_filters(runs, ["paper_batch=3k"])
    assert str(caught.value) == ("--only paper_batch=3k matches no run; values here: "
                                 "1k, 4k, 8k, 16k, 32k, 64k, 96k, 128k, 256k")
    with pytest.raises(UserError, match="values here: 8, 16, 32, 64, 96, 128, 256$"):
        apply_filters(runs, ["batch_size=1k"])
    with pytest.raises(UserError, match="values here: 1k, 4k, 8k, 16k, 32k, 64k, 96k, 128k, 256k$"):
        apply_filters(runs, ["column=2K"])
    with pytest.raises(UserError, match="values here: ResNet-50, ResNet-50\\+AA$"):
        apply_filters(runs, ["row=VGG"])


def test_a_value_of_the_wrong_type_is_still_its_own_error(tmp_path):
    with pytest.raises(UserError, match="autoaugment='maybe' is not true or false"):
        apply_filters(figure2_runs(tmp_path), ["autoaugment=maybe"])
