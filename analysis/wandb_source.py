"""Runs read back from W&B instead of the run records (`make_tables.py --source wandb`).

The API object is built only here, only when asked: it needs a server and a login. Each W&B run of the
suite carries its run id and flat config in its config and the final metrics in its summary; its name is
a readable label (`conadv AA 96k eps=8 s0 9098b1`) and is never read back.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from conadv_repro.errors import UserError

SUMMARY_METRICS = ("test_top1", "test_top5", "train_top1", "train_top5", "train_top1_running", "test_loss")


def _logged_in() -> bool:
    from conadv_repro.tracking import api_key_configured

    return api_key_configured()


def load_wandb(entity: str, project: str, scale: str) -> pd.DataFrame:
    if not entity or not project:
        raise UserError("--source wandb needs --entity E and --project P")
    if not _logged_in():
        raise UserError("--source wandb needs a W&B login: run `wandb login` (or set WANDB_API_KEY)")
    try:
        import wandb

        api = wandb.Api()
        runs = api.runs(f"{entity}/{project}", filters={"config.scale": scale}, per_page=500)
        rows = [_row(run) for run in runs]
    except UserError:
        raise
    except Exception as error:
        raise UserError(f"cannot read W&B project {entity}/{project}: {type(error).__name__}: {error}") from None
    frame = pd.DataFrame([r for r in rows if r is not None])
    if not frame.empty:
        # Several attempts of one run (offline runs synced later) are several W&B runs: keep the last.
        frame = frame.sort_values("created").drop_duplicates("run_id", keep="last")
    return frame


def _row(run: Any) -> dict[str, Any] | None:
    config = dict(run.config)
    summary = dict(run.summary)
    # The run id is in the config; the W&B name is a label for people and never read back as an id.
    run_id = config.get("run_id")
    if not run_id:
        return None
    status = summary.get("status") or ("finished" if summary.get("test_top1") is not None else run.state)
    row = {"run_id": run_id, "run_dir": config.get("run_dir"), "status": status, "created": run.created_at,
           **{k: v for k, v in config.items() if k not in ("run_id", "run_dir")}}
    row.update({key: summary.get(key) for key in SUMMARY_METRICS})
    if row.get("train_top1") is not None and row.get("test_top1") is not None:
        row["gap"] = row["train_top1"] - row["test_top1"]
    return row
