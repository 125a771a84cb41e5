"""What every calibration file of `benchmarks/calibrations/` shares: its folder, its kind and schema, and its
fields checked with one-line errors naming the file. No torch."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conadv_repro.errors import UserError
from conadv_repro.folders import CLONE

CALIBRATIONS_ENV = "CONADV_CALIBRATIONS"


def calibrations_dir(kind: str = "") -> Path:
    """`benchmarks/calibrations/` at the root of the clone (CONADV_CALIBRATIONS overrides it), or its
    subfolder for the calibrations of `kind` (loader, memory)."""
    override = os.environ.get(CALIBRATIONS_ENV)
    base = Path(override) if override else CLONE / "benchmarks" / "calibrations"
    return base / kind if kind else base


def check_header(data: Any, kind: str, schema: int, where: str, writer: str) -> dict[str, Any]:
    """`data` as a calibration of `kind` and `schema`, or a one-line error naming the command that writes one."""
    if not isinstance(data, dict) or data.get("kind") != kind:
        raise UserError(f"{where}: not a {kind} calibration (no \"kind\": \"{kind}\"); allowed: a file written by "
                        f"{writer}")
    if data.get("schema") != schema:
        raise UserError(f"{where}: schema={data.get('schema')!r} is not supported; allowed: {schema}")
    return data


def texts(data: Mapping[str, Any], keys: tuple[str, ...], where: str) -> dict[str, str]:
    out = {}
    for key in keys:
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise UserError(f"{where}: {key}={value!r} is not allowed; allowed: a non-empty string")
        out[key] = value
    return out


def number(data: Mapping[str, Any], key: str, where: str, *, positive: bool = False) -> float:
    value = data.get(key)
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and \
        (value > 0 if positive else value >= 0)
    if not ok:
        raise UserError(f"{where}{key}={value!r} is not allowed; allowed: a number {'>' if positive else '>='} 0")
    return float(value)


def read_calibration(path: Path, what: str) -> Any:
    """The JSON of a calibration file, or a one-line error."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UserError(f"{what} {path} cannot be read ({error.strerror or error})") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{what} {path} is not valid JSON ({error.msg}, line {error.lineno})") from None
