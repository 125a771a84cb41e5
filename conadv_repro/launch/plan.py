"""From declared grids to plain run configs: expand, vary (`--set`), filter (`--only`), deduplicate.

A run's directory is `<runs>/<scale>/<run id>`: a run shared by several experiments (Table 1's vanilla
runs are also Table 2's, Table 4's and Figure 2's) has one config, one id, one directory, and is
trained once. Its `scale` and `paper_batch` are part of its id, so two paper columns that map to the
same trained batch at a small scale stay two runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conadv_repro.config import (
    FIELDS,
    METHOD_KEYS,
    METHOD_SPECIFIC,
    Config,
    _coerce,
    build_config,
    parse_overrides,
)
from conadv_repro.errors import UserError
from conadv_repro.presets import LAUNCH_SCALES, SCALE_SEEDS, scale_batch
from conadv_repro.registry import Experiment

LABELS = ("experiment", "row", "column")


@dataclass
class PlannedRun:
    config: Config
    run_dir: Path
    uses: list[tuple[str, str, str]] = field(default_factory=list)  # (experiment, row, column)

    @property
    def run_id(self) -> str:
        return self.config.run_id()

    def labels(self) -> dict[str, Any]:
        cfg = self.config
        epsilon = cfg.attack.epsilon if METHOD_KEYS.get(cfg.method) else None
        return {"method": cfg.method, "autoaugment": cfg.autoaugment, "paper_batch": cfg.paper_batch,
                "batch_size": cfg.batch_size, "epsilon": epsilon, "seed": cfg.seed, "scale": cfg.scale}


def applies_to(key: str, method: str, autoaugment: bool = False) -> bool:
    """A `--set` key changes only the runs that use it (the methods with an attack, and for
    bn.three_way the AutoAugment ones among them), so the other runs' ids stay put."""
    if not key.startswith(METHOD_SPECIFIC):
        return True
    prefixes = METHOD_KEYS.get(method, ())
    if key == "bn.three_way":
        return bool(prefixes) and autoaugment
    return key.startswith(prefixes) if prefixes else False


def check_scale(scale: str) -> None:
    if scale not in LAUNCH_SCALES:
        raise UserError(f"--scale {scale!r} is not allowed; allowed: {', '.join(LAUNCH_SCALES)}")


DATA_LAYOUT = {"imagenet": ("train", "val"), "cifar10": ("cifar-10-batches-py",)}


def check_data_root(scale: str, data_root: str) -> None:
    """The dataset a scale needs is where the user says, before anything is submitted."""
    what = {"paper": "imagenet", "cifar10": "cifar10"}.get(scale)
    if what is None:
        return
    name = "ImageNet" if what == "imagenet" else "CIFAR-10"
    if not data_root:
        raise UserError(f"--scale {scale} needs the {name} folder: add --data-root DIR")
    missing = [part for part in DATA_LAYOUT[what] if not (Path(data_root) / part).is_dir()]
    if missing:
        raise UserError(f"--data-root {data_root} holds no {name} ({', '.join(m + '/' for m in missing)} missing); expected "
                        + ("DIR/train/<wnid>/ and DIR/val/<wnid>/" if what == "imagenet"
                           else "DIR/cifar-10-batches-py/"))


def expand(experiments: Iterable[Experiment], *, scale: str, runs_dir: Path, sets: Mapping[str, str],
           data_root: str = "", check_data: bool = True) -> list[PlannedRun]:
    """Every run of the experiments at `scale`, each once, in declaration order. `check_data=False`
    (status, cancel, the analysis) plans without the dataset: its path is not part of a run's id."""
    check_scale(scale)
    if check_data:
        check_data_root(scale, data_root or str(sets.get("data_root", "")))
    runs: dict[str, PlannedRun] = {}
    for experiment in experiments:
        for cell in experiment.cells:
            for seed in SCALE_SEEDS.get(scale, (0,)):
                values: dict[str, Any] = {"scale": scale, "paper_batch": cell.paper_batch,
                                          "batch_size": scale_batch(scale, cell.paper_batch), **cell.overrides,
                                          **cell.scale_overrides.get(scale, {})}
                if seed:
                    values["seed"] = seed
                if data_root:
                    values["data_root"] = data_root
                method = str(values.get("method", "vanilla"))
                aa = bool(values.get("autoaugment", False))
                values.update({k: v for k, v in sets.items() if applies_to(k, method, aa)})
                cfg = build_config(values)
                run_id = cfg.run_id()
                if run_id not in runs:
                    runs[run_id] = PlannedRun(cfg, runs_dir / scale / run_id)
                runs[run_id].uses.append((experiment.name, cell.row, cell.column))
    return list(runs.values())


def parse_sets(items: Iterable[str]) -> dict[str, str]:
    """`--set key=value` items: config keys only (checked here, typed by build_config later)."""
    sets = parse_overrides(items)
    for key in sets:
        if key in ("scale", "paper_batch", "batch_size", "method", "autoaugment"):
            raise UserError(f"--set {key}=... is not allowed: the grid decides it (use --scale, --only)")
    return sets


def _matches(run: PlannedRun, key: str, wanted: set[str]) -> bool:
    if key in LABELS:
        index = LABELS.index(key)
        return any(use[index] in wanted for use in run.uses)
    value = run.config.flat()[key]
    return value in {_coerce(key, w) for w in wanted}


def apply_filters(runs: list[PlannedRun], items: Iterable[str]) -> list[PlannedRun]:
    """`--only key=v1,v2`: keep runs whose config field (or label: experiment, row, column) is one of
    the values; several filters all apply. A key or value that matches nothing is a user error."""
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not raw:
            raise UserError(f"--only {item!r} is not key=value[,value...] (e.g. method=conadv)")
        if key not in FIELDS and key not in LABELS:
            raise UserError(f"--only key {key!r} is unknown; allowed: {', '.join(LABELS)}, or a config key "
                            "such as method, autoaugment, paper_batch, attack.epsilon, seed")
        wanted = {w.strip() for w in raw.split(",") if w.strip()}
        if key not in LABELS:
            for w in wanted:
                _coerce(key, w)  # a value of the wrong type is its own one-line error
        kept = [run for run in runs if _matches(run, key, wanted)]
        if not kept:
            present = sorted({str(v) for run in runs for v in _values(run, key)})
            raise UserError(f"--only {key}={raw} matches no run; values here: {', '.join(present) or 'none'}")
        runs = kept
    return runs


def _values(run: PlannedRun, key: str) -> list[Any]:
    if key in LABELS:
        return [use[LABELS.index(key)] for use in run.uses]
    value = run.config.flat()[key]
    return [str(value).lower() if isinstance(value, bool) else value]
