"""ConAdv with dedicated attack workers, the trainers' side (the workers' side: distributed/attack_worker.py).

The same method as ConAdv (methods/conadv.py), with the attack moved off the trainers: the adversarial
examples of step t arrive from the workers, attacked with theta_(t-tau), and trainer 0 broadcasts each
new theta right after its update. The weight snapshots are still kept, for the checkpoint only: they are
exactly what the workers need to resume (distributed/attack_link.py).
"""

from __future__ import annotations

from typing import Any

from conadv_repro.data.loader import MicroBatch
from conadv_repro.distributed.attack_link import AdversarialReceiver, WeightsSender, weights_numel
from conadv_repro.methods.base import Branch, MethodContext
from conadv_repro.methods.conadv import ConAdv


class ConAdvWithWorkers(ConAdv):
    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        self.sender: WeightsSender | None = None
        self.receiver: AdversarialReceiver | None = None
        self._current: Any = None

    def executor_label(self) -> str:
        return "workers"

    def begin(self, start_step: int, total_steps: int) -> None:
        ctx = self.ctx
        self.sender = WeightsSender(ctx.dist, ctx.device, start_step, total_steps, self.tau,
                                    weights_numel(ctx.model))
        self.receiver = AdversarialReceiver(ctx.dist, ctx.device, ctx.cfg.batch_size, start_step, total_steps)
        for step in sorted(self.snapshots):
            self.sender.offer(step, self.snapshots[step])

    def branches(self, micro: MicroBatch) -> list[Branch]:
        if self.receiver is None:
            raise RuntimeError("ConAdv with attack workers: begin() was not called before the first step")
        adv_batch = self.receiver.batch(micro.key.step, tuple(micro.inputs.shape[1:])) \
            if micro.key.micro == 0 else self._current
        self._current = adv_batch
        size = micro.inputs.shape[0]
        adv = adv_batch[micro.key.micro * size: (micro.key.micro + 1) * size]
        self.trace.append((micro.key.step, micro.key.micro, self.source_step(micro.key.step)))
        return self.make_branches(micro, adv)

    def after_update(self, step: int) -> None:
        super().after_update(step)
        if self.sender is not None:
            self.sender.offer(step + 1, self.ctx.model)

    def timings(self) -> dict[str, Any]:
        return {"weights_broadcast_issue_s": self.sender.seconds if self.sender else 0.0,
                "weights_broadcast_bytes": self.sender.sent_bytes if self.sender else 0,
                "adversarial_wait_s": self.receiver.waiting.seconds if self.receiver else 0.0}

    def close(self) -> None:
        try:
            if self.sender is not None and self.receiver is not None:
                self._shut_down_workers(self.sender, self.receiver)
        finally:
            super().close()

    def _shut_down_workers(self, sender: WeightsSender, receiver: AdversarialReceiver) -> None:
        """The trainers' side of a stop (distributed/attack_link.py): take in what the workers have in flight,
        then STOP (trainer 0), so that no transfer is left pending. After a normal end nothing is in flight."""
        last = receiver.consumed
        if last >= receiver.total - 1:
            sender.wait()
            return
        taken = receiver.drain(sender.last_sent + self.tau)
        sender.stop()
        sender.wait()
        self.ctx.log(f"{self.ctx.dist.name()}: stopped after step {last + 1}; drained {taken} in-flight "
                     f"adversarial batch{'es' if taken != 1 else ''} of the attack workers, then told them to stop")
