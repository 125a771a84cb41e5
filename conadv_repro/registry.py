"""The paper's experiments as data: each table or figure is a grid of cells declared once in
`experiments/` at the repository root, with the paper's number for each cell.

A cell names the paper's row and column, the paper batch size it stands for, the config overrides
that make it (method, AutoAugment, epsilon, ...), and the paper's values. Expanding a grid at a
scale gives plain run configs (`conadv_repro.launch.plan`); a run shared by several experiments has
one config and one id and is trained once.

This module imports no torch, so planning, status and the analysis stay fast.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conadv_repro.errors import UserError
from conadv_repro.folders import CLONE, clone_package, folder_package

EXPERIMENTS_ENV = "CONADV_EXPERIMENTS"
# The package a CONADV_EXPERIMENTS folder is imported as (the suite's own folder is `experiments`).
USER_EXPERIMENTS = "conadv_user_experiments"
ORDER = ("table1", "table2", "table3", "table4", "table5", "figure2", "figure4")


@dataclass(frozen=True)
class Cell:
    """One cell of a paper table or one point of a figure."""

    row: str
    column: str
    paper_batch: str
    overrides: Mapping[str, Any]
    paper: Mapping[str, float] = field(default_factory=dict)
    # Overrides applied only at one scale (scale -> dotted key -> value), after `overrides`: e.g. Figure 4's
    # device counts, one trainer per 64 examples at the paper scale and one trainer on a small machine.
    scale_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    description: str
    cells: tuple[Cell, ...]
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    metrics: tuple[str, ...] = ("test_top1",)
    kind: str = "table"
    notes: tuple[str, ...] = ()
    # Values of the experiment that the analysis reads (e.g. Table 3's target top-1 per scale), and what the
    # launcher does for its runs: `timed` (they measure time), `landscape` (measured after training, see
    # conadv_repro/landscape_state.py).
    settings: Mapping[str, Any] = field(default_factory=dict)


def experiments_dir() -> Path:
    """`experiments/` at the root of the clone (the suite is used from a clone with an editable install);
    CONADV_EXPERIMENTS overrides it."""
    override = os.environ.get(EXPERIMENTS_ENV)
    if override:
        return Path(override)
    return CLONE / "experiments"


def _package() -> str:
    """The package name the experiment files are imported under (see `conadv_repro.folders`)."""
    folder = experiments_dir().resolve()
    suite = CLONE / "experiments"
    if folder == suite.resolve():
        clone_package("experiments")
        return "experiments"
    if suite.is_dir():
        clone_package("experiments")  # a user's experiment files may import the suite's experiments.common
    folder_package(USER_EXPERIMENTS, folder)
    return USER_EXPERIMENTS


def _import(name: str) -> Experiment:
    folder = experiments_dir()
    module = importlib.import_module(f"{_package()}.{name}")
    experiment = getattr(module, "EXPERIMENT", None)
    if not isinstance(experiment, Experiment):
        raise UserError(f"{folder / (name + '.py')} defines no EXPERIMENT")
    if "landscape" in experiment.settings:  # a bad declaration is refused here, not by a job after training
        from conadv_repro.landscape_state import check_declaration

        check_declaration(experiment.name, experiment.settings["landscape"])
    if "between" in experiment.settings:
        from conadv_repro.landscape_state import check_between

        check_between(experiment.name, experiment.settings["between"], experiment.rows, experiment.columns)
    return experiment


def experiment_names() -> list[str]:
    folder = experiments_dir()
    if not folder.is_dir():
        raise UserError(f"no experiments folder at {folder}; run from a clone of the repository "
                        f"(or set {EXPERIMENTS_ENV})")
    found = sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_") and p.stem != "common")
    return [n for n in ORDER if n in found] + [n for n in found if n not in ORDER]


def load_experiment(name: str) -> Experiment:
    names = experiment_names()
    if name not in names:
        raise UserError(f"unknown experiment {name!r}; allowed: {', '.join(names)}, all")
    return _import(name)


def load_experiments(names: list[str]) -> list[Experiment]:
    """The experiments named (`all` = every one), in the paper's order, each once."""
    wanted: list[str] = []
    for name in names:
        for n in (experiment_names() if name == "all" else [name]):
            if n not in wanted:
                wanted.append(n)
    return [load_experiment(n) for n in wanted]
