"""A run's readable label, e.g. `conadv AA 96k eps=8 s0 9098b1`, for lists a person reads (W&B).

The run id is a hash, right for directories and lookups and unreadable in a list of hundreds. The label
names what tells the cells of the paper's tables apart: the method, AutoAugment, the paper's batch (or
the batch trained, for a free run), epsilon where the method attacks, tau when it is not 1, then every
other field a variation changed (a launcher `--set`, a cell's own override such as Figure 4's trainer
counts), the seed and the first six hex digits of the run id, so two labels never hide two runs.

"Every other field" is found by rebuilding the config from the label's own fields and listing the
hashed fields that differ: the label needs no record of which `--set` made the run.
"""

from __future__ import annotations

from conadv_repro.batch_sizes import format_batch
from conadv_repro.config import FIELDS, METHOD_KEYS, Config, build_config
from conadv_repro.errors import UserError

SHORT_ID = 6


def _uses(cfg: Config, key: str) -> bool:
    keys = METHOD_KEYS.get(cfg.method, ())
    return bool(keys) and key.startswith(keys)


def _identity(cfg: Config) -> dict[str, object]:
    values: dict[str, object] = {"method": cfg.method, "autoaugment": cfg.autoaugment, "scale": cfg.scale,
                                 "paper_batch": cfg.paper_batch, "batch_size": cfg.batch_size, "seed": cfg.seed}
    if _uses(cfg, "attack.epsilon"):
        values["attack.epsilon"] = cfg.attack.epsilon
    if _uses(cfg, "conadv.tau"):
        values["conadv.tau"] = cfg.conadv.tau
    return values


def _value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def variations(cfg: Config) -> list[str]:
    """`key=value` for each hashed field that differs from the run's cell (its label's own fields)."""
    identity = _identity(cfg)
    try:
        cell = build_config(identity).flat()
    except UserError:  # a cell that cannot stand alone (should not happen): name no variation
        return []
    return [f"{key}={_value(value)}" for key, value in cfg.flat().items()
            if FIELDS[key].metadata.get("hashed", True) and key not in identity and value != cell[key]]


def run_label(cfg: Config, run_id: str) -> str:
    """`conadv AA 96k eps=8 s0 9098b1`: the fields that tell cells apart, then seed and short run id."""
    parts = [cfg.method]
    if cfg.autoaugment:
        parts.append("AA")
    parts.append(cfg.paper_batch or f"batch={format_batch(cfg.batch_size)}")
    if _uses(cfg, "attack.epsilon"):
        parts.append(f"eps={_value(cfg.attack.epsilon)}")
    if _uses(cfg, "conadv.tau") and cfg.conadv.tau != 1:
        parts.append(f"tau={cfg.conadv.tau}")
    parts.extend(variations(cfg))
    parts.append(f"s{cfg.seed}")
    parts.append(run_id[:SHORT_ID])
    return " ".join(parts)
