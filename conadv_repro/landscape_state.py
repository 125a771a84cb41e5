"""Whether a run is measured: the launcher's side of the landscape, without torch.

An experiment declares the measurement of its runs as data, `settings={"landscape": {...}}` (registry.py):

    {"measures": ["eigenvalue", "trace"],       # names of landscape/settings.MEASURES, not "between"
     "examples": 64 or {"smoke": 64, ...},      # optional: the sample (per scale; default by dataset)
     "micro_batch": 128 or {"paper": 32}}       # optional (per scale; default 128)

and, apart, the line between two of its finished runs that `launch between` measures (launch/between.py):

    settings={"between": {"row": ROW, "seed": S, "from": COLUMN, "to": COLUMN}}

`check_declaration` refuses another shape when the registry loads the experiment. `declared_for` resolves it
at one scale into plain data that travels in a job (launch/submit.RunSpec). `is_measured` says whether a
finished run's landscape.json holds the entry of exactly that key, and `measure_key` is the one definition
of a key (landscape/measure.py builds its entries with it). The launcher's status and planning call this
module, so it imports neither torch nor the engine: landscape/settings.py and store.py are torch-free.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conadv_repro.atomic import atomic_write_json, read_json_dict
from conadv_repro.errors import UserError
from conadv_repro.landscape import store
from conadv_repro.landscape.settings import (
    DEFAULT_MICRO_BATCH,
    MEASURES,
    POWER_MAX_ITERATIONS,
    TRACE_PROBES,
    Settings,
    default_examples,
)

SETTING = "landscape"  # the key of Experiment.settings
DECLARED_KEYS = ("measures", "examples", "micro_batch")
LAUNCHABLE = tuple(m for m in MEASURES if m != "between")  # between needs a second run, named by hand
ERROR_FILE = "landscape_error.json"  # the last failed measurement of the launcher's job, until one succeeds
FINAL_CHECKPOINT = "final.pt"  # engine/checkpoint.FINAL_NAME, named here without importing the engine


def check_declaration(experiment: str, value: Any) -> None:
    """Refuse a `landscape` setting of another shape, in one line naming the experiment."""
    where = f"experiment {experiment}: settings['{SETTING}']"
    if not isinstance(value, Mapping):
        raise UserError(f"{where} is {type(value).__name__}; allowed: a dict with keys {', '.join(DECLARED_KEYS)}")
    unknown = [key for key in value if key not in DECLARED_KEYS]
    if unknown:
        raise UserError(f"{where} has unknown key {unknown[0]!r}; allowed: {', '.join(DECLARED_KEYS)}")
    measures = value.get("measures")
    if not isinstance(measures, (list, tuple)) or not measures or not all(isinstance(m, str) for m in measures):
        raise UserError(f"{where}['measures'] must be a non-empty list of names; allowed: {', '.join(LAUNCHABLE)}")
    bad = [m for m in measures if m not in LAUNCHABLE]
    if bad:
        raise UserError(f"{where}: unknown measure {bad[0]!r}; allowed: {', '.join(LAUNCHABLE)}")
    for key in ("examples", "micro_batch"):
        given = value.get(key)
        counts = list(given.values()) if isinstance(given, Mapping) else [given]
        if given is not None and not all(_positive(n) for n in counts):
            raise UserError(f"{where}['{key}'] must be an integer >= 1 or a dict of scale -> integer >= 1")


BETWEEN = "between"  # the key of Experiment.settings declaring a line between two runs
BETWEEN_KEYS = ("row", "seed", "from", "to")


def check_between(experiment: str, value: Any, rows: tuple[str, ...], columns: tuple[str, ...]) -> None:
    """Refuse a `between` setting of another shape, or naming no row or column of the experiment, in one line."""
    where = f"experiment {experiment}: settings['{BETWEEN}']"
    if not isinstance(value, Mapping) or sorted(value) != sorted(BETWEEN_KEYS):
        raise UserError(f"{where} must be a dict with keys {', '.join(BETWEEN_KEYS)}")
    if value["row"] not in rows:
        raise UserError(f"{where} row {value['row']!r} is not one of its rows ({', '.join(rows)})")
    for end in ("from", "to"):
        if value[end] not in columns:
            raise UserError(f"{where} {end} {value[end]!r} is not one of its columns ({', '.join(columns)})")
    if value["from"] == value["to"]:
        raise UserError(f"{where} goes from {value['from']!r} to itself; allowed: two different columns")
    if not isinstance(value["seed"], int) or isinstance(value["seed"], bool) or value["seed"] < 0:
        raise UserError(f"{where} seed {value['seed']!r} must be an integer >= 0")


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def declared_for(settings: Mapping[str, Any], scale: str) -> dict[str, Any] | None:
    """An experiment's declared measurement at `scale` as plain data (None: it declares none); the
    examples are None where the dataset's default applies."""
    value = settings.get(SETTING)
    if value is None:
        return None
    examples = value.get("examples")
    if isinstance(examples, Mapping):
        examples = examples.get(scale)
    micro_batch = value.get("micro_batch", DEFAULT_MICRO_BATCH)
    if isinstance(micro_batch, Mapping):
        micro_batch = micro_batch.get(scale, DEFAULT_MICRO_BATCH)
    measures = [m for m in MEASURES if m in value["measures"]]  # the order they run in (settings.py)
    return {"measures": measures, "examples": examples, "micro_batch": int(micro_batch)}


def settings_of(declared: Mapping[str, Any], data: str) -> Settings:
    examples = declared.get("examples") or default_examples(data)
    return Settings(measures=tuple(declared["measures"]), examples=int(examples),
                    micro_batch=int(declared.get("micro_batch", DEFAULT_MICRO_BATCH)))


def measure_key(settings: Settings, checkpoint: Mapping[str, Any], between: Mapping[str, Any] | None) -> dict[str, Any]:
    """The key of a landscape entry: settings and code version, the checkpoint's identity, and the other run
    of --between with its checkpoint (None without). Its one definition (store.py explains keys)."""
    return {**settings.as_key(), "checkpoint": dict(checkpoint), "between": None if between is None else dict(between)}


# (size, mtime_ns) -> SHA-256 of a final.pt already hashed by this process: status hashes each once.
_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """A file's SHA-256, once per process for a given (path, size, mtime): a checkpoint's identity."""
    stat = path.stat()
    memo = (str(path), stat.st_size, stat.st_mtime_ns)
    if memo not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _HASHES[memo] = digest.hexdigest()
    return _HASHES[memo]


def checkpoint_stat(path: Path) -> list[int]:
    """[size, mtime_ns] of a checkpoint file: while they are unchanged, its stored SHA-256 still holds."""
    stat = Path(path).stat()
    return [stat.st_size, stat.st_mtime_ns]


def is_measured(run_dir: Path, declared: Mapping[str, Any], data: str) -> bool:
    """Whether `run_dir`'s landscape.json has the entry of `declared` for the run's final.pt (the key as
    landscape/measure.py writes it). An unreadable landscape.json counts as not measured: the measurement
    refuses it too, and says why."""
    try:
        entries = store.read_entries(run_dir)
    except UserError:
        return False
    settings = settings_of(declared, data)
    final = Path(run_dir) / "checkpoints" / FINAL_CHECKPOINT
    for entry in entries:
        checkpoint = entry["key"].get("checkpoint")
        if not isinstance(checkpoint, dict) or checkpoint.get("file") != FINAL_CHECKPOINT:
            continue
        # Settings first (cheap), the checkpoint's hash only for an entry that matches them.
        if store.find([entry], measure_key(settings, checkpoint, None)) is None or not final.is_file():
            continue
        # A status over a grid must not read every final.pt (hundreds of MB each at the paper scale): the file's
        # size and mtime vouch for the hash stored with the entry, as make trusts timestamps; else hash it.
        if entry.get("checkpoint_stat") == checkpoint_stat(final) or checkpoint.get("sha256") == file_sha256(final):
            return True
    return False


def read_error(run_dir: Path) -> dict[str, Any] | None:
    """The launcher's last failed measurement of `run_dir` ({"error", "time", "settings"}), or None."""
    return read_json_dict(Path(run_dir) / ERROR_FILE)


def write_error(run_dir: Path, declared: Mapping[str, Any], error: str, when: float) -> None:
    atomic_write_json(Path(run_dir) / ERROR_FILE, {"error": error, "time": when, "settings": dict(declared)})


def clear_error(run_dir: Path) -> None:
    (Path(run_dir) / ERROR_FILE).unlink(missing_ok=True)


# The measurement's cost in forward+backward passes over the sample, for --estimate. Assumed, not measured:
# a Hessian-vector product (double backward) ~ 3 passes (docs/landscape.md, Cost); power iteration at most POWER_MAX_ITERATIONS
# products (twice for eigenvalue when label smoothing makes the training loss differ from cross-entropy);
# the trace one product per probe; epsilon-sharpness one gradient per ascent step plus one; a slice 21
# forward passes (~1/3 of a pass each); and one forward pass at the start.
HVP_PASSES = 3.0
FORWARD_PASS = 1.0 / 3.0


def assumed_passes(declared: Mapping[str, Any], label_smoothing: float) -> float:
    settings = settings_of(declared, "")
    per = {"eigenvalue": HVP_PASSES * POWER_MAX_ITERATIONS * (2 if label_smoothing else 1),
           "trace": HVP_PASSES * TRACE_PROBES, "adaptive": HVP_PASSES * POWER_MAX_ITERATIONS,
           "epsilon": settings.ascent_steps + 1.0, "slice": FORWARD_PASS * len(settings.slice_alphas)}
    return FORWARD_PASS + sum(per[m] for m in settings.measures)


__all__ = ["BETWEEN", "ERROR_FILE", "FINAL_CHECKPOINT", "SETTING", "assumed_passes", "check_between", "check_declaration",
           "clear_error", "declared_for",
           "is_measured", "measure_key", "read_error", "settings_of", "write_error"]
