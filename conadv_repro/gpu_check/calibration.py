"""Section 3: the calibration file that `python -m conadv_repro.launch ... --estimate` reads.

The format is conadv_repro/throughput_model.py's (its docstring); it is written here as plain JSON because the
package never imports analysis/ (a test loads the file through the model's loader). One GPU measures the
per-example compute of every method at one micro-batch; the costs that need several ranks (the weight
broadcast to attack workers, the adversarial examples' transfer, the gradient all-reduce) are written as
null, "not measured", with the reason under `not_measured`: the model then assumes a link and says so in
every estimate and figure that uses one (`benchmarks/throughput.py --save` on two GPUs measures them).
"""

from __future__ import annotations

import datetime
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from conadv_repro.atomic import atomic_write_json
from conadv_repro.errors import UserError
from conadv_repro.gpu_check.plan import Plan
from conadv_repro.gpu_check.report import Report
from conadv_repro.gpu_check.speed import SpeedResult, precision
from conadv_repro.gpu_check.synthetic import CLASSES
from conadv_repro.model.resnet import TORCHVISION

SCHEMA = 1
FOLDER = Path("benchmarks") / "calibrations"
NEEDS_RANKS = "needs two ranks, one GPU each (benchmarks/throughput.py --save on two GPUs measures it)"
NOT_MEASURED = ("broadcast_s", "transfer_s_per_example", "allreduce_bytes_per_s")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def default_path(device_name: str) -> Path:
    """benchmarks/calibrations/<gpu>-gpu-check.json from a clone's root, else in the working directory."""
    folder = FOLDER if FOLDER.is_dir() else Path(".")
    return folder / f"{slug(device_name)}-gpu-check.json"


def check_writable(path: Path, option: str = "--calibration-out") -> None:
    """Fail before the minutes of measurement rather than when their result cannot be written."""
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder; give a file name such as {path / 'mygpu.json'}")
    if not path.parent.is_dir():
        raise UserError(f"{option} {path}: the folder {path.parent} does not exist")
    try:
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as error:
        raise UserError(f"{option} {path}: cannot write in {path.parent} ({error.strerror or error})") from None


def calibration_data(plan: Plan, result: SpeedResult, argv: list[str]) -> dict[str, Any]:
    """The calibration of the largest micro-batch measured (per-example costs vary least there)."""
    micro = max(result.median_s)
    med = result.median_s[micro]
    device = "cuda" if plan.device == "cuda" else "cpu"
    if result.cfg is None:
        raise ValueError("a speed result without its config")
    model = result.cfg.model
    stem = model.stem
    if stem == "auto" and model.name in TORCHVISION and model.input_size < 64:
        stem = "imagenet"  # the engine's auto; the model's loader would read auto at < 64 px as cifar
    return {
        "schema": SCHEMA,
        "machine": f"{result.device_name}, {os.cpu_count()} cores, {device.upper()}, one device",
        "device": device, "device_name": result.device_name,
        "model": model.name, "width": model.width, "stem": stem, "in_channels": 3, "num_classes": CLASSES,
        "image_size": model.input_size, "params": result.params, "weights_bytes": result.weights_bytes,
        "batch": micro,
        "command": " ".join(["python -m conadv_repro.gpu_check", *argv]),
        "date": datetime.date.today().isoformat(),
        "per_example_s": {"vanilla": med["vanilla"] / micro, "train_only": med["train_only"] / micro,
                          "attack": med["attack"] / micro, "disadv": med["disadv"] / micro,
                          "conadv_concurrent": med["conadv"] / micro},
        **dict.fromkeys(NOT_MEASURED),
        "not_measured": dict.fromkeys(NOT_MEASURED, NEEDS_RANKS),
        "settings": f"{precision(result.cfg)}, micro-batch {micro} a step, ConAdv on the {result.executor} "
                    "executor, synthetic data on the device",
    }


def calibration_section(plan: Plan, report: Report, result: SpeedResult, path: Path | None,
                        argv: list[str] | None = None) -> Path | None:
    report.section("3 calibration: what --estimate reads")
    if not result.median_s:
        report.skip("calibration", "the speed section measured nothing")
        return None
    if path is None:
        report.skip("calibration file", "CPU smoke: not written unless --calibration-out PATH is given")
        return None
    data = calibration_data(plan, result, sys.argv[1:] if argv is None else argv)

    def write() -> str:
        atomic_write_json(path, data)
        per = data["per_example_s"]
        return (f"wrote {path}: {data['model']} at {data['image_size']} px, batch {data['batch']}, vanilla "
                f"{1 / per['vanilla']:,.0f} images/s; {', '.join(NOT_MEASURED)} not measured (one device)")

    report.check("the calibration file is written", write)
    return path
