"""Which examples each step trains on: a seeded, resumable, infinite batch plan.

The plan is a pure function of (number of training examples, batch size, seed, step): epoch e is a
permutation keyed by (seed, e), step t takes the t-th slice of B indices of its epoch, and the
remainder of each permutation (N mod B examples) is dropped. The position of a run in its data is
therefore just its step number; a checkpoint needs nothing else to resume mid-epoch exactly.

Layout of one step's batch of B indices across ranks and micro-batches (B = W * M * m):

    [ rank 0: micro 0 | micro 1 | ... | micro M-1 ][ rank 1: micro 0 | ... ] ... [ rank W-1: ... ]

Each rank's shard is contiguous and split into micro-batches of m. Since every random draw is keyed
per example (see `keys.py`), the same step gives the same numbers for any W and m.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

from conadv_repro.data.keys import STREAM_SHUFFLE, example_seed
from conadv_repro.errors import UserError

T = TypeVar("T")

# A sampler item: (global example index, epoch, step, micro-batch index within this rank's shard).
SampleKey = tuple[int, int, int, int]

# Two cached permutations cover a look-ahead that straddles an epoch boundary.
_CACHED_EPOCHS = 2


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{name} {value!r} is not allowed; allowed: an integer >= {minimum}")
    return value


@dataclass(frozen=True)
class BatchPlan:
    """The infinite sequence of global batches of one run; epochs continue past any epoch budget."""

    num_examples: int
    batch_size: int
    seed: int
    # Only for error messages, e.g. "digits"; two plans over the same numbers are the same plan.
    dataset: str = field(default="the dataset", compare=False)
    _permutations: dict[int, torch.Tensor] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        _check_int("num_examples", self.num_examples, 1)
        _check_int("batch_size", self.batch_size, 1)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise UserError(f"seed {self.seed!r} is not allowed; allowed: an integer")
        if self.steps_per_epoch == 0:
            raise UserError(
                f"batch_size {self.batch_size} is larger than the {self.num_examples} training examples "
                f"of {self.dataset}; allowed: batch_size <= {self.num_examples}"
            )

    def __getstate__(self) -> dict[str, object]:
        # A lock cannot be pickled (DataLoader workers, checkpoints); the cache is cheap to rebuild.
        return {
            "num_examples": self.num_examples,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "dataset": self.dataset,
        }

    def __setstate__(self, state: dict[str, object]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_permutations", {})
        object.__setattr__(self, "_lock", threading.Lock())

    @property
    def steps_per_epoch(self) -> int:
        """floor(N / B): the remainder of each epoch's permutation is dropped, so every batch is full."""
        return self.num_examples // self.batch_size

    def epoch_of(self, step: int) -> int:
        """The epoch that step `step` belongs to."""
        return _check_int("step", step, 0) // self.steps_per_epoch

    def _permutation(self, epoch: int) -> torch.Tensor:
        with self._lock:
            cached = self._permutations.get(epoch)
            if cached is not None:
                return cached
        generator = torch.Generator().manual_seed(example_seed(self.seed, epoch, STREAM_SHUFFLE))
        permutation = torch.randperm(self.num_examples, generator=generator, dtype=torch.int64)
        with self._lock:
            self._permutations[epoch] = permutation
            while len(self._permutations) > _CACHED_EPOCHS:
                # Dicts keep insertion order: drop the oldest epoch.
                self._permutations.pop(next(iter(self._permutations)))
        return permutation

    def epoch_permutation(self, epoch: int) -> torch.Tensor:
        """All N example indices of `epoch` in training order (a fresh copy the caller may modify)."""
        return self._permutation(_check_int("epoch", epoch, 0)).clone()

    def indices(self, step: int) -> torch.Tensor:
        """The int64 global example indices of step `step`'s whole batch, in layout order."""
        epoch, within = divmod(_check_int("step", step, 0), self.steps_per_epoch)
        start = within * self.batch_size
        return self._permutation(epoch)[start : start + self.batch_size].clone()

    def micros_per_rank(self, micro_size: int, world_size: int = 1) -> int:
        """How many micro-batches of `micro_size` each of `world_size` ranks runs per step."""
        _check_int("micro_size", micro_size, 1)
        _check_int("world_size", world_size, 1)
        if self.batch_size % world_size:
            raise UserError(
                f"batch_size {self.batch_size} does not split over world_size {world_size}; "
                f"allowed: a world_size that divides {self.batch_size}"
            )
        shard = self.batch_size // world_size
        if shard % micro_size:
            raise UserError(
                f"micro_size {micro_size} does not divide the per-rank batch of {shard} "
                f"(batch_size {self.batch_size} / world_size {world_size}); allowed: a divisor of {shard}"
            )
        return shard // micro_size

    def micro_indices(
        self, step: int, micro: int, micro_size: int, rank: int = 0, world_size: int = 1
    ) -> torch.Tensor:
        """The indices of micro-batch `micro` of rank `rank` at step `step` (see the module's layout)."""
        micros = self.micros_per_rank(micro_size, world_size)
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is not allowed; allowed: 0 <= rank < world_size {world_size}")
        if not 0 <= micro < micros:
            raise UserError(f"micro {micro} is not allowed; allowed: 0 <= micro < {micros}")
        start = (rank * micros + micro) * micro_size
        return self.indices(step)[start : start + micro_size]


@dataclass(frozen=True)
class MicroBatchKey:
    """Where a micro-batch sits in the run: `micro` counts micro-batches within this rank's step."""

    step: int
    micro: int
    epoch: int


class MicroBatchSampler:
    """A `batch_sampler` for DataLoader: this rank's micro-batches of steps [start_step, end_step).

    Each yielded micro-batch is a list of `(global_index, epoch, step, micro)` tuples, so the train
    dataset can key each example's augmentation without knowing anything about the loop.
    """

    def __init__(
        self,
        plan: BatchPlan,
        start_step: int,
        end_step: int,
        micro_size: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        _check_int("start_step", start_step, 0)
        _check_int("end_step", end_step, start_step)
        self.micros = plan.micros_per_rank(micro_size, world_size)
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is not allowed; allowed: 0 <= rank < world_size {world_size}")
        self.plan = plan
        self.start_step = start_step
        self.end_step = end_step
        self.micro_size = micro_size
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        return (self.end_step - self.start_step) * self.micros

    def keys(self) -> Iterator[MicroBatchKey]:
        """The key of every micro-batch, in the order `__iter__` yields them."""
        for step in range(self.start_step, self.end_step):
            epoch = self.plan.epoch_of(step)
            for micro in range(self.micros):
                yield MicroBatchKey(step=step, micro=micro, epoch=epoch)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        shard = self.micros * self.micro_size
        for step in range(self.start_step, self.end_step):
            epoch = self.plan.epoch_of(step)
            mine = self.plan.indices(step)[self.rank * shard : (self.rank + 1) * shard].tolist()
            for micro in range(self.micros):
                chunk = mine[micro * self.micro_size : (micro + 1) * self.micro_size]
                yield [(index, epoch, step, micro) for index in chunk]


class Lookahead(Generic[T]):
    """An iterator that can show its upcoming items without consuming them.

    ConAdv attacks step t+1's data while step t trains, so the engine peeks at the next batches; the
    underlying sampler is continuous across epochs, so peeking crosses epoch boundaries freely.
    """

    def __init__(self, items: Iterable[T]) -> None:
        self._source = iter(items)
        self._buffer: deque[T] = deque()
        self._exhausted = False

    def __iter__(self) -> Lookahead[T]:
        return self

    def __next__(self) -> T:
        if self._buffer:
            return self._buffer.popleft()
        if self._exhausted:
            raise StopIteration
        try:
            return next(self._source)
        except StopIteration:
            self._exhausted = True
            raise

    def peek(self, k: int = 0) -> T | None:
        """The k-th upcoming item (0 = what `next` returns next), or None if the items end before it."""
        _check_int("k", k, 0)
        while len(self._buffer) <= k and not self._exhausted:
            try:
                self._buffer.append(next(self._source))
            except StopIteration:
                self._exhausted = True
        return self._buffer[k] if k < len(self._buffer) else None
