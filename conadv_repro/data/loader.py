"""DataLoaders over a bundle: the training micro-batches of a step range, and fixed-order eval batches.

Training batches come from `MicroBatchSampler` through a DataLoader, in (step, micro) order, wrapped
in a `Lookahead` so that the engine can see the next steps' data (ConAdv attacks batch t+1 while
batch t trains). Each example's augmentation is keyed by (seed, epoch, index), so the result is the
same for any number of workers, any micro-batch size and any resume point. A paired bundle's
micro-batches also carry `originals`, the same examples without AutoAugment.

With `normalise_on_device=True` the workers hand over uint8 images and the micro-batch carries the
`Normalise` that turns them into float: `MicroBatch.to` copies the uint8 batch (a quarter of the bytes
of float32, pinned too when pinning) and normalises it on the device, with the numbers of the CPU path.

An image file that does not decode stops the stream with `UnreadableImage` (path and reason), for any
number of workers: see `_Reporting`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from conadv_repro.data.datasets import DataBundle
from conadv_repro.data.sampler import BatchPlan, Lookahead, MicroBatchKey, MicroBatchSampler
from conadv_repro.data.sources import KeyedTrainSet, Sample, StackedSamples, UnreadableImage, stack_samples
from conadv_repro.data.transforms import Normalise
from conadv_repro.errors import UserError


@dataclass
class MicroBatch:
    """One micro-batch of this rank: normalised inputs, int64 targets, int64 global example indices.

    `originals` (paired bundles only, else None) are the inputs' examples with the same crop and flip
    but without AutoAugment, for the main BatchNorm of the three-way BN option. When `normalise` is set,
    inputs and originals are still uint8 and `to` normalises them after the copy.
    """

    key: MicroBatchKey
    inputs: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor
    originals: torch.Tensor | None = None
    normalise: Normalise | None = None

    def to(
        self, device: torch.device | str, non_blocking: bool = True, channels_last: bool = False
    ) -> MicroBatch:
        """Move inputs, originals (if any) and targets to `device`; uint8 images are normalised there.

        `indices` stay on the CPU: they are keys for seeding per-example randomness in Python, and
        reading them back from a GPU would stall the stream.
        """
        normalise = self.normalise
        # The loader's uint8 batches are channels-last in memory (see `assemble`); without channels_last
        # they become contiguous, as float batches are, so that the network sees the same layout.
        memory_format = torch.channels_last if channels_last else (
            None if normalise is None else torch.contiguous_format)

        def move(images: torch.Tensor) -> torch.Tensor:
            # Copied in its own layout, then laid out on the device: a copy to another layout would be
            # transposed on the host into unpinned memory first, and then copied synchronously.
            moved = images.to(device, non_blocking=non_blocking)
            if memory_format is not None:
                moved = moved.contiguous(memory_format=memory_format)
            return moved if normalise is None else normalise.on_device(moved)

        return MicroBatch(
            key=self.key,
            inputs=move(self.inputs),
            targets=self.targets.to(device, non_blocking=non_blocking),
            indices=self.indices,
            originals=None if self.originals is None else move(self.originals),
        )


def collate(batch: StackedSamples | Sequence[Sample] | UnreadableImage) -> StackedSamples | UnreadableImage:
    """DataLoader's collate_fn: our datasets stack a micro-batch themselves (`__getitems__`); a user's
    dataset without `__getitems__` hands over a list of `(image, label, index)` samples. A batch that met
    an unreadable image is that error (see `_Reporting`), passed on for the main process to raise."""
    if isinstance(batch, (StackedSamples, UnreadableImage)):
        return batch
    return stack_samples(batch)


class _Reporting(Dataset):
    """`dataset` as a DataLoader reads it, except that a batch meeting an unreadable image is the
    `UnreadableImage` itself, returned rather than raised; `_checked` raises it in the main process.

    A worker's raised exception reaches the main process only as its class rebuilt around the worker's
    traceback text (torch's ExceptionWrapper: a page of traceback, and the path no longer a field).
    Returned as the batch, the exception is pickled whole, like any batch. Workers=0 takes the same path.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        return self.dataset[key]

    def __getitems__(self, keys: Sequence[Any]) -> Any:
        getitems = getattr(self.dataset, "__getitems__", None)
        try:
            # What DataLoader's fetcher would do with the dataset itself.
            return getitems(keys) if getitems else [self.dataset[key] for key in keys]
        except UnreadableImage as error:
            return error


def _checked(batch: StackedSamples | UnreadableImage) -> StackedSamples:
    if isinstance(batch, UnreadableImage):
        raise batch
    return batch


def _private_generator() -> torch.Generator:
    # DataLoader draws its workers' base seed from this generator, or else from torch's global RNG, which
    # would make the caller's random numbers depend on how many loaders were built. The base seed only
    # seeds the workers' global RNG, which keyed transforms never read, so a fixed seed is enough.
    return torch.Generator().manual_seed(0)


def _check_workers(workers: int) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise UserError(f"workers {workers!r} is not allowed; allowed: an integer >= 0")


def train_micro_batches(
    bundle: DataBundle,
    plan: BatchPlan,
    *,
    start_step: int,
    end_step: int,
    micro_size: int,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    pin_memory: bool = False,
    normalise_on_device: bool = False,
) -> Lookahead[MicroBatch]:
    """This rank's micro-batches of steps [start_step, end_step), in (step, micro) order.

    `normalise_on_device`: uint8 micro-batches that `MicroBatch.to` normalises, where the train set
    allows it (a `KeyedTrainSet` of a preset, what `make_bundle` builds); others stay normalised float.
    """
    _check_workers(workers)
    if plan.num_examples != bundle.num_train:
        raise UserError(
            f"the batch plan covers {plan.num_examples} examples but {bundle.name} has "
            f"{bundle.num_train} training examples; allowed: a plan built from the bundle"
        )
    paired = bool(getattr(bundle, "paired", False))  # a user's duck-typed bundle may lack the field
    sampler = MicroBatchSampler(plan, start_step, end_step, micro_size, rank=rank, world_size=world_size)
    dataset = bundle.train
    normalise: Normalise | None = None
    if normalise_on_device and isinstance(dataset, KeyedTrainSet) and dataset.can_give_uint8:
        dataset = dataset.as_uint8()
        normalise = dataset.normalise
    loader = DataLoader(
        _Reporting(dataset),
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        collate_fn=collate,
        persistent_workers=workers > 0,
        generator=_private_generator(),
    )

    def micro_batches() -> Iterator[MicroBatch]:
        # DataLoader keeps the sampler's order even with workers, so the keys line up with the batches.
        for key, delivered in zip(sampler.keys(), loader, strict=True):
            batch = _checked(delivered)
            if paired and batch.originals is None:
                raise UserError(
                    f"{bundle.name} is marked paired but its train set gave no originals; allowed: a "
                    "bundle from build_data(..., paired=True)"
                )
            yield MicroBatch(
                key=key,
                inputs=batch.inputs,
                targets=batch.targets,
                indices=batch.indices,
                originals=batch.originals if paired else None,
                normalise=normalise,
            )

    return Lookahead(micro_batches())


class EvalBatches:
    """Fixed-order `(inputs, targets)` batches of an eval split; iterate it as often as needed."""

    def __init__(
        self, dataset: Dataset, batch_size: int, *, workers: int = 0, pin_memory: bool = False
    ) -> None:
        _check_workers(workers)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"eval batch_size {batch_size!r} is not allowed; allowed: an integer >= 1")
        self.loader = DataLoader(
            _Reporting(dataset),
            batch_size=batch_size,
            shuffle=False,
            drop_last=False,
            num_workers=workers,
            pin_memory=pin_memory,
            collate_fn=collate,
            persistent_workers=workers > 0,
            generator=_private_generator(),
        )

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for delivered in self.loader:
            batch = _checked(delivered)
            yield batch.inputs, batch.targets


def eval_batches(
    dataset: Dataset, batch_size: int, *, workers: int = 0, pin_memory: bool = False
) -> EvalBatches:
    """Every example of `dataset` once, in index order, as `(inputs, targets)` batches."""
    return EvalBatches(dataset, batch_size, workers=workers, pin_memory=pin_memory)
