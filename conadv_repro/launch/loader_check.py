"""Can a profile's CPUs feed its GPUs? The loader calibrations of benchmarks/loader.py, for `--estimate`.

A loader calibration (benchmarks/calibrations/loader/NAME.json, written by `python benchmarks/loader.py
--save NAME`) holds the images/s one CPU core gives through the suite's ImageNet train loader (Pillow,
224 px), with and without AutoAugment, on the machine it was measured on. A GPU that trains at R images/s
then needs R / (images/s per core) loader cores, which its task's CPUs (`cpus_per_task`, one task per
GPU) must hold beside the main process. The calibrations live in a folder of their own, beside the
GPU calibrations, so that those are never read as loader figures or the other way round. No torch import.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conadv_repro.errors import UserError

LOADER_SCHEMA = 1
LOADER_FOLDER = "loader"
CALIBRATIONS_ENV = "CONADV_CALIBRATIONS"  # the folder of the GPU calibrations (conadv_repro/throughput_model.py)


def loader_calibrations_dir() -> Path:
    """`benchmarks/calibrations/loader/` at the root of the clone (under CONADV_CALIBRATIONS when set)."""
    override = os.environ.get(CALIBRATIONS_ENV)
    base = Path(override) if override else Path(__file__).resolve().parents[2] / "benchmarks" / "calibrations"
    return base / LOADER_FOLDER


@dataclass(frozen=True)
class LoaderCalibration:
    machine: str
    per_core: Mapping[bool, float]  # autoaugment -> images/s per CPU core
    date: str
    command: str
    path: str

    def cores_per_gpu(self, images_per_s: float, autoaugment: bool) -> float:
        """Loader cores that keep one GPU at `images_per_s`."""
        return images_per_s / self.per_core[autoaugment]

    def describe(self) -> str:
        return f"loader calibration {self.path}, measured on {self.machine}, {self.date}"


def _rate(data: Mapping[str, Any], key: str, where: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UserError(f"{where}: images_per_s_per_core.{key}={value!r} is not allowed; allowed: a number > 0")
    return float(value)


def parse_loader_calibration(data: Any, where: str) -> LoaderCalibration:
    """A loader calibration from its JSON object; every problem is one line naming `where`."""
    if not isinstance(data, dict) or data.get("kind") != "loader":
        raise UserError(f"{where}: not a loader calibration (no \"kind\": \"loader\"); allowed: a file written "
                        "by python benchmarks/loader.py --save NAME")
    if data.get("schema") != LOADER_SCHEMA:
        raise UserError(f"{where}: schema={data.get('schema')!r} is not supported; allowed: {LOADER_SCHEMA}")
    rates = data.get("images_per_s_per_core")
    if not isinstance(rates, dict):
        raise UserError(f"{where}: images_per_s_per_core is missing; allowed: an object with plain and autoaugment")
    texts = {}
    for key in ("machine", "date", "command"):
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise UserError(f"{where}: {key}={value!r} is not allowed; allowed: a non-empty string")
        texts[key] = value
    return LoaderCalibration(per_core={False: _rate(rates, "plain", where), True: _rate(rates, "autoaugment", where)},
                             path=where, **texts)


def load_loader_calibration(path: Path) -> LoaderCalibration:
    shown = f"{LOADER_FOLDER}/{path.name}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UserError(f"loader calibration {path} cannot be read ({error.strerror or error})") from None
    except json.JSONDecodeError as error:
        raise UserError(f"loader calibration {path} is not valid JSON ({error.msg}, line {error.lineno})") from None
    return parse_loader_calibration(data, shown)


def find_loader_calibration(folder: Path | None = None) -> LoaderCalibration | None:
    """The newest loader calibration (by date, then file name), or None when there is none."""
    folder = loader_calibrations_dir() if folder is None else folder
    found = [load_loader_calibration(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    return max(found, key=lambda c: (c.date, c.path)) if found else None


def feed_line(profile_name: str, cpus_per_task: int, images_per_s: float, autoaugment: bool, what: str,
              calibration: LoaderCalibration | None) -> str:
    """One line: whether `cpus_per_task` CPUs (one task per GPU) feed a GPU at `images_per_s`."""
    if calibration is None:
        return (f"loader: not checked (no loader calibration in {loader_calibrations_dir()}; measure one with "
                "python benchmarks/loader.py --save NAME)")
    need = calibration.cores_per_gpu(images_per_s, autoaugment)
    spare = max(cpus_per_task - 1, 0)  # one CPU runs the training process itself
    verdict = "enough" if need <= spare else "too few: the GPUs will wait for data"
    warning = "" if need <= spare else "warning: "
    return (f"{warning}loader: profile {profile_name} gives {cpus_per_task} CPUs per GPU ({spare} for loader workers "
            f"beside the training process); the loader needs {need:.1f} per GPU at the projected "
            f"{images_per_s:,.0f} images/s ({what}; {calibration.per_core[autoaugment]:.1f} images/s per core "
            f"{'with' if autoaugment else 'without'} AutoAugment, {calibration.describe()}): {verdict}")
