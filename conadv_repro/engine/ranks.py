"""The ranks of a multi-process run other than rank 0: trainers that follow, and attack workers.

Rank 0 leads (engine/run.py): it alone touches the run directory, and tells the others whether and
where to start (distributed/handshake.py). A following trainer runs exactly rank 0's steps (the same
collectives in the same order) and writes nothing; evaluation is rank 0's alone (the weights and BN
statistics are identical on every trainer).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist

from conadv_repro.config import Config
from conadv_repro.distributed.context import DistContext
from conadv_repro.distributed.handshake import DONE, receive
from conadv_repro.engine.checkpoint import load_checkpoint_file
from conadv_repro.engine.trainer import Diverged, Trainer


def is_transport_error(error: BaseException) -> bool:
    """A failure of a collective or transfer (a peer died or timed out), not a bug of this rank."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        key in text for key in ("gloo", "nccl", "connection closed", "connection reset", "timed out", "timeout"))


def transport_reason(error: BaseException) -> str:
    """The first sentence of a transport error, without the backend's source location."""
    lines = str(error).strip().splitlines()
    text = re.sub(r"^\[[^\]]*\]\s*", "", lines[0]) if lines else type(error).__name__
    return text.split(". ")[0][:300]


def follow(cfg: Config, ctx: DistContext, log: Callable[[str], None]) -> dict[str, Any]:
    message = receive(ctx)
    if message["action"] == DONE:
        return {"status": message.get("status")}
    if ctx.role == "attacker":
        from conadv_repro.distributed.attack_worker import AttackWorker

        worker = AttackWorker(cfg, ctx, log=log)
        message = receive(ctx)
        if message["action"] == DONE:
            return {"status": message.get("status")}
        return worker.run(int(message["step"]))
    trainer = Trainer(cfg, log=log, dist=ctx)
    try:
        message = receive(ctx)
        if message["action"] == DONE:
            return {"status": message.get("status")}
        if message.get("checkpoint"):
            trainer.load_state_dict(load_checkpoint_file(Path(message["checkpoint"])))
        if trainer.step != int(message["step"]):
            raise RuntimeError(f"{ctx.name()} resumed at step {trainer.step}, rank 0 at {message['step']}")
        trainer.open_batches(trainer.step)
        for step in range(trainer.step, trainer.derived.total_steps):
            out = trainer.train_step(step, trainer.step_batches(step))
            trainer.step = step + 1
            if out["stop"]:
                return {"status": "stopped"}
        return {"status": "finished"}
    except Diverged:
        return {"status": "diverged"}
    finally:
        trainer.close()
