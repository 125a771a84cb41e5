"""`landscape.json` in a run directory: one entry per key, written atomically.

A key is everything that decides a measurement's numbers: the settings (measures, examples,
micro-batch, seeds, tolerances, alphas, the other run of --between and its checkpoint), the version of
the measurement code (`VERSION`) and the checkpoint's identity (file, step, SHA-256). The same key again
reuses its entry instead of measuring again; a new checkpoint (the run finished after a measurement with
--allow-unfinished) or other settings add an entry. The file is read again just before each write, so
entries another process wrote meanwhile are kept (two writers at the same instant can still lose one).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from conadv_repro.atomic import atomic_write_json
from conadv_repro.errors import UserError

LANDSCAPE_FILE = "landscape.json"
FORMAT = "conadv-landscape/1"


def canonical(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


def key_id(key: dict[str, Any]) -> str:
    """A short name of a key for messages (its entry is found by the whole key, not by this)."""
    return hashlib.sha256(canonical(key).encode("utf-8")).hexdigest()[:12]


def read_entries(run_dir: Path) -> list[dict[str, Any]]:
    """The entries of `run_dir`'s landscape.json ([] when there is none); a file that is not one is refused
    rather than overwritten."""
    path = Path(run_dir) / LANDSCAPE_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as error:
        raise UserError(f"{path} cannot be read ({error.strerror or error})") from None
    try:
        data = json.loads(text)
    except ValueError as error:
        raise UserError(f"{path} is not JSON ({error}); move it away to measure again") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), list):
        raise UserError(f"{path} is not a landscape file of this release (format {FORMAT}); move it away to "
                        "measure again")
    return [entry for entry in data["entries"] if isinstance(entry, dict) and isinstance(entry.get("key"), dict)]


def find(entries: list[dict[str, Any]], key: dict[str, Any]) -> dict[str, Any] | None:
    wanted = canonical(key)
    return next((entry for entry in entries if canonical(entry["key"]) == wanted), None)


def store(run_dir: Path, entry: dict[str, Any]) -> Path:
    """Add `entry` to `run_dir`'s landscape.json, replacing the entry of the same key if there is one."""
    entries = read_entries(run_dir)
    wanted = canonical(entry["key"])
    kept = [e for e in entries if canonical(e["key"]) != wanted]
    path = Path(run_dir) / LANDSCAPE_FILE
    atomic_write_json(path, {"format": FORMAT, "entries": [*kept, entry]})
    return path


__all__ = ["FORMAT", "LANDSCAPE_FILE", "find", "key_id", "read_entries", "store"]
