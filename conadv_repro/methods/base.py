"""The method protocol: what the one training loop asks a method at every step.

The loop knows nothing of methods (see docs/architecture.md). At each micro-batch it asks the method for
the *branches* to train on: each a batch of inputs with its targets, the BN it goes through (main or
auxiliary) and its weight in the loss. After each optimizer step it tells the method, which may start
work to run beside the next update (ConAdv's attack on the next batch). A method's pending state goes
into the checkpoint through `state_dict`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from conadv_repro.config import Config
from conadv_repro.data.loader import MicroBatch
from conadv_repro.distributed.context import DistContext


@dataclass
class Branch:
    """One forward pass of a training step: `weight` multiplies the branch's mean loss."""

    name: str
    inputs: Tensor
    targets: Tensor
    bn: str = "main"
    weight: float = 1.0


@dataclass
class MethodContext:
    """What the engine shares with a method: the live network, the device, the input statistics
    (for attacks in pixel units), the look-ahead of the coming micro-batches, and the autocast context."""

    cfg: Config
    model: nn.Module
    device: Any
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    peek: Callable[[int], MicroBatch | None]
    autocast: Callable[[], AbstractContextManager[Any]]
    to_device: Callable[[MicroBatch], MicroBatch]
    dist: DistContext = field(default_factory=DistContext)
    log: Callable[[str], None] = print


class Method:
    """Base class: one clean branch through the main BN, nothing beside the update, no state."""

    name: ClassVar[str] = "base"

    def __init__(self, ctx: MethodContext):
        self.ctx = ctx

    def to_device(self, micro: MicroBatch) -> MicroBatch:
        """`micro` on the device, for `branches`: the loop's one copy of it (a method whose side work
        already copied it, as ConAdv's attack does, hands over that copy)."""
        return self.ctx.to_device(micro)

    def branches(self, micro: MicroBatch) -> list[Branch]:
        """The branches of `micro`, which `to_device` has moved to the device."""
        raise NotImplementedError

    def trained_bn_branches(self) -> tuple[str, ...]:
        """The BN branches the training branches go through (the others get no gradient)."""
        return ("main",)

    def executor_label(self) -> str | None:
        """Where the method's side work runs, for the run's record (None: it has none)."""
        return None

    def begin(self, start_step: int, total_steps: int) -> None:
        """Called once before this process's first step; the weights are those of `start_step`."""

    def after_update(self, step: int) -> None:
        """Called after the optimizer step that ends `step` (the weights are now theta_{step+1})."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"method {self.name} has no state, got keys {sorted(state)}")

    def wait_idle(self) -> None:
        """Block until work started beside the update (if any) has finished; its results are kept."""

    def close(self) -> None:
        """Release threads or streams."""
