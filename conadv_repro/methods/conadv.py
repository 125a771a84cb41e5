"""ConAdv (the paper's section 3.3, Algorithm 1): the adversarial examples of step t come from the stale
weights theta_(t-tau), so the attack no longer has to wait for the update before it.

    step t:  update theta_t on clean_t (main BN) + adv_t (aux BN), where adv_t = attack(clean_t; theta_(t-tau))
             beside it: attack the next micro-batch with its own stale weights

The first tau steps use theta_0 (there is nothing older); the look-ahead runs across epoch boundaries
(the data order is a pure function of the step).

The pending state is a set of weight snapshots, not images: theta_s for the steps s whose examples are
still to come (tau + 1 of them). A snapshot holds everything the attack reads (parameters and BN
buffers). The adversarial micro-batches of a step are computed from its snapshot as they are needed,
so memory stays at one adversarial micro-batch, and a checkpoint holds the snapshots, from which a
resumed run recomputes exactly the same examples (the attack's noise is keyed per example).

While micro-batch j trains, the executor attacks the micro-batch after it (j + 1, or micro-batch 0 of
the next step) when its snapshot exists: always for tau >= 1; within a step for tau = 0, which makes
ConAdv(tau=0) DisAdv on a copy of the weights. That attack copies the micro-batch to the device (on the
executor's stream), and the update trains on the same copy (`to_device`): one copy per micro-batch.
"""

from __future__ import annotations

import copy
from collections import deque
from concurrent.futures import Future
from typing import Any

import torch
from torch import Tensor, nn

from conadv_repro.concurrency.executors import executor_name, make_executor
from conadv_repro.data.loader import MicroBatch
from conadv_repro.data.sampler import MicroBatchKey
from conadv_repro.methods.adversarial import AdversarialMethod
from conadv_repro.methods.base import Branch, MethodContext
from conadv_repro.model.split_bn import move_pending_statistics


class ConAdv(AdversarialMethod):
    name = "conadv"

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        self.tau = ctx.cfg.conadv.tau
        self.moves_running_stats = ctx.cfg.attack.bn_mode == "train_moving"
        # Made at the first attack: evaluating a run (no training) needs no thread and no CUDA stream.
        self._executor: Any = None
        self.snapshots: dict[int, nn.Module] = {}
        self._spares: list[nn.Module] = []
        self.pending: dict[MicroBatchKey, Future[Any]] = {}
        # Adversarial micro-batches whose attack has been waited for by `to_device`, for `branches`.
        self._ready: dict[MicroBatchKey, Tensor] = {}
        # (step, micro, the step of the weights the attack used): evidence of staleness, for tests and logs.
        self.trace: deque[tuple[int, int, int]] = deque(maxlen=4096)
        self._take_snapshot(0)

    @property
    def executor(self) -> Any:
        if self._executor is None:
            self._executor = make_executor(self.ctx.cfg.conadv.executor, self.ctx.device,
                                           moves_running_stats=self.moves_running_stats)
        return self._executor

    def executor_label(self) -> str:
        return executor_name(self.ctx.cfg.conadv.executor, self.ctx.device,
                             moves_running_stats=self.moves_running_stats)

    # ----------------------------------------------------------------- snapshots
    def source_step(self, step: int) -> int:
        return max(step - self.tau, 0)

    def _take_snapshot(self, step: int) -> None:
        """Copy the live weights (theta_step) into a snapshot module (a spare one when there is one)."""
        live = self.ctx.model
        if self._spares:
            snap = self._spares.pop()
            with torch.no_grad():
                for dst, src in zip(_tensors(snap), _tensors(live), strict=True):
                    dst.copy_(src)
        else:
            snap = copy.deepcopy(live)
            for p in snap.parameters():
                p.requires_grad_(False)  # the attack needs input gradients only
                p.grad = None
        self.snapshots[step] = snap

    def after_update(self, step: int) -> None:
        self._take_snapshot(step + 1)
        oldest_needed = self.source_step(step + 1)
        for s in [s for s in self.snapshots if s < oldest_needed]:
            self._spares.append(self.snapshots.pop(s))

    # ----------------------------------------------------------------- attacks
    def _attack(self, micro: MicroBatch) -> Tensor:
        """Attack `micro` (on the device) with the weights of its source step (on the executor's thread/stream)."""
        key = micro.key
        source = self.source_step(key.step)
        snapshot = self.snapshots[source]
        adv = self.adversarial(snapshot, micro)
        if self.moves_running_stats:  # sequential executor only: the live network's statistics move
            move_pending_statistics(snapshot, self.ctx.model)
        self.trace.append((key.step, key.micro, source))
        return adv

    def _prefetch_next(self) -> None:
        if not self.executor.concurrent:
            return
        upcoming = self.ctx.peek(0)
        if upcoming is None or upcoming.key in self.pending:
            return
        if self.source_step(upcoming.key.step) not in self.snapshots:
            return  # tau = 0 across a step boundary: its weights do not exist yet
        self.pending[upcoming.key] = self.executor.submit(lambda: self._move_and_attack(upcoming))

    def _move_and_attack(self, micro: MicroBatch) -> tuple[Tensor, MicroBatch]:
        moved = self.ctx.to_device(micro)
        return self._attack(moved), moved

    def to_device(self, micro: MicroBatch) -> MicroBatch:
        """The copy the attack made when it ran ahead (waiting for it), else a new one."""
        future = self.pending.pop(micro.key, None)
        if future is None:
            return self.ctx.to_device(micro)
        adv, moved = self.executor.wait(future)
        self._ready[micro.key] = adv
        return moved

    def branches(self, micro: MicroBatch) -> list[Branch]:
        adv = self._ready.pop(micro.key, None)
        if adv is None:
            future = self.pending.pop(micro.key, None)
            adv = self.executor.wait(future)[0] if future is not None else self._attack(micro)
        self._prefetch_next()
        return self.make_branches(micro, adv)

    # ----------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"tau": self.tau, "snapshots": {s: m.state_dict() for s, m in self.snapshots.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("tau") != self.tau:
            raise ValueError(f"checkpoint was written with conadv.tau={state.get('tau')}, not {self.tau}")
        self._drain()
        self._spares.extend(self.snapshots.values())
        self.snapshots = {}
        for step, weights in state["snapshots"].items():
            self._take_snapshot(int(step))
            self.snapshots[int(step)].load_state_dict(weights)

    def wait_idle(self) -> None:
        for future in list(self.pending.values()):
            future.exception()  # waits; a failure is raised later, by the step that needs the result

    def _drain(self) -> None:
        for future in self.pending.values():
            future.result()
        self.pending.clear()
        self._ready.clear()

    def close(self) -> None:
        try:
            self._drain()
        finally:
            if self._executor is not None:
                self._executor.close()


def _tensors(model: nn.Module) -> list[Tensor]:
    return [*model.parameters(), *model.buffers()]
