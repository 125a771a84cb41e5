"""Rank 0 decides, the other ranks follow: the start-up messages of a multi-process run.

Only rank 0 reads the run directory's state, takes the lock and picks the checkpoint to resume from;
it tells the others in two broadcasts over all ranks: first whether there is anything to train
("build", or "done"/"abort" with a reason), then, once the trainers exist and rank 0 holds the lock,
where to start ("start" with the checkpoint path, or "abort"). Rank 0 sends every message it owes even
when it fails, so that the other ranks stop with its reason instead of waiting for a timeout.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from conadv_repro.distributed.context import DistContext

BUILD, START, DONE, ABORT = "build", "start", "done", "abort"


class Announcer:
    """Rank 0's side. `owed` counts the messages the other ranks still wait for."""

    def __init__(self, ctx: DistContext):
        self.ctx = ctx
        self.owed = 2 if ctx.multi else 0

    def send(self, action: str, **fields: Any) -> None:
        if not self.owed:
            return
        dist.broadcast_object_list([{"action": action, **fields}], src=0)
        self.owed = 0 if action in (DONE, ABORT) else self.owed - 1

    def abort(self, reason: str) -> None:
        """Send ABORT for every message still owed (the others wait for exactly that many)."""
        while self.owed:
            self.send(ABORT, reason=reason)


class FollowerAborted(RuntimeError):
    """Rank 0 could not start the run; its reason is the message."""


def receive(ctx: DistContext) -> dict[str, Any]:
    """A non-zero rank's side: the next message from rank 0 (ABORT raises)."""
    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0)
    message = box[0]
    if message["action"] == ABORT:
        raise FollowerAborted(f"rank 0 stopped the run: {message.get('reason')}")
    return message
