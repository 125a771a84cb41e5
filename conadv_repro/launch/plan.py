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

from conadv_repro.batch_sizes import parse_batch
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
    if what == "imagenet":
        # The class-folder layout too, not only train/ and val/: a wrong one fails every job at its start.
        from conadv_repro.data.imagenet_layout import check_imagenet_layout

        check_imagenet_layout(data_root)
        return
    missing = [part for part in DATA_LAYOUT[what] if not (Path(data_root) / part).is_dir()]
    if missing:
        raise UserError(f"--data-root {data_root} holds no {name} ({', '.join(m + '/' for m in missing)} missing); "
                        "expected DIR/cifar-10-batches-py/")


# Keys that pin a run's layout: --gpus-per-run leaves such a run alone. (conadv.attack_workers does not: the
# GPUs per run are then its workers plus its trainers.)
LAYOUT_KEYS = ("runtime.trainers", "runtime.timed_layout")


def with_gpus(cfg: Config, gpus_per_run: int) -> Config:
    """`cfg` on `gpus_per_run` processes: its attack workers (ConAdv's), the rest trainers. The run id stays:
    the device counts are not part of it, so a relaunch with another count resumes the same run."""
    workers = cfg.conadv.attack_workers if cfg.method == "conadv" else 0
    trainers = gpus_per_run - workers
    if trainers < 1:
        raise UserError(f"--gpus-per-run {gpus_per_run} leaves no trainer beside conadv.attack_workers={workers}; "
                        f"allowed: at least {workers + 1}")
    return cfg.replace({"runtime.trainers": trainers if trainers > 1 else 0})


def expand(experiments: Iterable[Experiment], *, scale: str, runs_dir: Path, sets: Mapping[str, str],
           data_root: str = "", check_data: bool = True, gpus_per_run: int = 0) -> list[PlannedRun]:
    """Every run of the experiments at `scale`, each once, in declaration order. `check_data=False`
    (status, cancel, the analysis) plans without the dataset: its path is not part of a run's id.
    `gpus_per_run` (0: as declared) lays out every run whose cell and `--set`s do not pin a layout."""
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
                if gpus_per_run and not any(key in values for key in LAYOUT_KEYS):
                    cfg = with_gpus(cfg, gpus_per_run)
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


# Text that names a batch size (`32k`): compared as the number it stands for, so `32K` and `32768` match it.
BATCH_TEXT = ("paper_batch", "column")


def _canonical(key: str, value: Any) -> Any:
    """`value` as --only compares it: text without case, as `--set` reads `32K` and `TRUE`; a batch size by
    its number."""
    if not isinstance(value, str):
        return value
    if key in BATCH_TEXT:
        try:
            return parse_batch(value)
        except ValueError:
            pass  # a column that is not a batch size (Table 5's p=3)
    return value.strip().casefold()


def _sort_key(key: str, value: Any) -> tuple[int, float, str]:
    """Numbers and batch sizes by size (1k before 16k), text alphabetically after them."""
    canonical = _canonical(key, value)
    if isinstance(canonical, (int, float)) and not isinstance(canonical, bool):
        return (0, float(canonical), "")
    return (1, 0.0, str(canonical).casefold())


def _matches(run: PlannedRun, key: str, wanted: set[Any]) -> bool:
    """Whether one of the run's values is among `wanted` (values already put through `_canonical`)."""
    if key in LABELS:
        index = LABELS.index(key)
        return any(_canonical(key, use[index]) in wanted for use in run.uses)
    return _canonical(key, run.config.flat()[key]) in wanted


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
        texts = {w.strip() for w in raw.split(",") if w.strip()}
        # _coerce first: a value of the wrong type is its own one-line error.
        wanted = {_canonical(key, w if key in LABELS else _coerce(key, w)) for w in texts}
        kept = [run for run in runs if _matches(run, key, wanted)]
        if not kept:
            present = {str(v): v for run in runs for v in _values(run, key)}
            listed = sorted(present, key=lambda text: _sort_key(key, present[text]))
            raise UserError(f"--only {key}={raw} matches no run; values here: {', '.join(listed) or 'none'}")
        runs = kept
    return runs


def _values(run: PlannedRun, key: str) -> list[Any]:
    if key in LABELS:
        return [use[LABELS.index(key)] for use in run.uses]
    value = run.config.flat()[key]
    return [str(value).lower() if isinstance(value, bool) else value]
