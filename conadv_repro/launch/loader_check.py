"""Can a profile's CPUs feed its GPUs? The loader calibrations of benchmarks/loader.py, for `--estimate`.

A loader calibration (benchmarks/calibrations/loader/NAME.json, written by `python benchmarks/loader.py
--save NAME`) holds the images/s one CPU core gives through the suite's ImageNet train loader (Pillow,
224 px), with and without AutoAugment, on the machine it was measured on. A GPU that trains at R images/s
then needs R / (images/s per core) loader cores, which its task's CPUs (`cpus_per_task`, one task per
GPU) must hold beside the main process. The calibrations live in a folder of their own, beside the
GPU calibrations, so that those are never read as loader figures or the other way round. No torch import.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conadv_repro.calibration_files import calibrations_dir, check_header, number, read_calibration, texts
from conadv_repro.errors import UserError

LOADER_SCHEMA = 1
LOADER_FOLDER = "loader"


def loader_calibrations_dir() -> Path:
    """`benchmarks/calibrations/loader/` at the root of the clone (under CONADV_CALIBRATIONS when set)."""
    return calibrations_dir(LOADER_FOLDER)


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


def parse_loader_calibration(data: Any, where: str) -> LoaderCalibration:
    """A loader calibration from its JSON object; every problem is one line naming `where`."""
    data = check_header(data, "loader", LOADER_SCHEMA, where, "python benchmarks/loader.py --save NAME")
    rates = data.get("images_per_s_per_core")
    if not isinstance(rates, dict):
        raise UserError(f"{where}: images_per_s_per_core is missing; allowed: an object with plain and autoaugment")
    rate_of = f"{where}: images_per_s_per_core."
    return LoaderCalibration(per_core={False: number(rates, "plain", rate_of, positive=True),
                                       True: number(rates, "autoaugment", rate_of, positive=True)},
                             path=where, **texts(data, ("machine", "date", "command"), where))


def load_loader_calibration(path: Path) -> LoaderCalibration:
    return parse_loader_calibration(read_calibration(path, "loader calibration"), f"{LOADER_FOLDER}/{path.name}")


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
