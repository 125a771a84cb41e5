"""Map-style datasets over a split's raw images: the keyed train set and the plain eval set.

A *source* holds one split's raw examples (uint8 tensors in memory, or image files) and knows nothing
of transforms. The train set applies the random train transform keyed per example; the eval set
applies the deterministic eval transform. Both return `(image, label, index)`, so a batch always
carries the global indices that keyed randomness (augmentation, attack noise) needs. A paired train
set (see `PairedTransform`) appends the un-AutoAugmented view: `(image, label, index, original)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import torch
from torch.utils.data import Dataset

from conadv_repro.data.keys import STREAM_AUGMENT, example_seed
from conadv_repro.data.sampler import SampleKey
from conadv_repro.data.transforms import PairedTransform, Transform, keyed_call


class ImageSource(Protocol):
    """One split's raw examples: `load(i)` gives a uint8 CHW tensor or a PIL image, and an int label."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[Any, int]: ...


class TensorImages:
    """A split held in memory as uint8 images (N,C,H,W) and int64 labels (N,)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or labels.shape != (images.shape[0],):
            raise ValueError(
                f"TensorImages wants uint8 (N,C,H,W) images and (N,) labels, got "
                f"{images.dtype} {tuple(images.shape)} and {tuple(labels.shape)}"
            )
        self.images = images
        self.labels = labels.to(torch.int64)

    def __len__(self) -> int:
        return self.images.shape[0]

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


class FileImages:
    """A split of image files read on demand, e.g. the `samples` of a torchvision ImageFolder."""

    def __init__(self, samples: Sequence[tuple[str, int]], loader: Callable[[str], Any]) -> None:
        self.samples = list(samples)
        self.loader = loader

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        return self.loader(path), label


# An item: (image, label, index), or (image, label, index, original) from a paired train set.
Sample = tuple[torch.Tensor, int, int] | tuple[torch.Tensor, int, int, torch.Tensor]


class StackedSamples(NamedTuple):
    """A collated batch: inputs (N,C,H,W) float, targets (N,) int64, global indices (N,) int64, and
    for a paired train set the originals (N,C,H,W) float (the inputs without AutoAugment), else None."""

    inputs: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor
    originals: torch.Tensor | None = None


def stack_samples(samples: Sequence[Sample]) -> StackedSamples:
    """Collate a list of samples, all plain `(image, label, index)` or all paired (with `original`)."""
    widths = {len(sample) for sample in samples}
    if len(widths) != 1 or not widths <= {3, 4}:
        raise ValueError(f"samples of {sorted(widths)} fields cannot be stacked; allowed: all 3 or all 4")
    columns = list(zip(*samples, strict=True))
    return StackedSamples(
        torch.stack(columns[0]),
        torch.tensor(columns[1], dtype=torch.int64),
        torch.tensor(columns[2], dtype=torch.int64),
        torch.stack(columns[3]) if len(columns) == 4 else None,
    )


def _batched_path(source: ImageSource, transform: object) -> bool:
    # In memory and nothing random or geometric: one indexing + one normalisation for the whole batch.
    # A paired transform is never batchable (it runs AutoAugment), and must not take this path anyway.
    return (
        isinstance(source, TensorImages)
        and not isinstance(transform, PairedTransform)
        and getattr(transform, "batchable", False)
    )


class KeyedTrainSet(Dataset):
    """The training split: item `(global_index, epoch, step, micro)` -> `(image, label, global_index)`.

    The train transform is seeded by `example_seed(seed, epoch, global_index, STREAM_AUGMENT)`, so an
    example's augmentation in an epoch is the same whichever worker, micro-batch or rank loads it, and
    reloading a batch (ConAdv attacks step t+1's batch one step early) reproduces it exactly.

    With a `PairedTransform` the items are `(image, label, global_index, original)`, `image` being
    bit-identical to the unpaired set's under the same key.
    """

    def __init__(self, source: ImageSource, transform: Transform | PairedTransform, seed: int) -> None:
        self.source = source
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.source)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.source, TensorImages)

    @property
    def paired(self) -> bool:
        return isinstance(self.transform, PairedTransform)

    def __getitem__(self, key: SampleKey) -> Sample:
        index, epoch = key[0], key[1]
        image, label = self.source.load(index)
        seed = example_seed(self.seed, epoch, index, STREAM_AUGMENT)
        if isinstance(self.transform, PairedTransform):
            augmented, original = keyed_call(self.transform, image, seed)
            return augmented, label, index, original
        return keyed_call(self.transform, image, seed), label, index

    def __getitems__(self, keys: Sequence[SampleKey]) -> StackedSamples:
        """What DataLoader calls for a whole micro-batch; identical to stacking `self[key]` per key."""
        if _batched_path(self.source, self.transform):
            assert isinstance(self.source, TensorImages)
            indices = torch.tensor([key[0] for key in keys], dtype=torch.int64)
            return StackedSamples(
                self.transform(self.source.images[indices]), self.source.labels[indices], indices
            )
        return stack_samples([self[key] for key in keys])


class EvalSet(Dataset):
    """An evaluation split (train_eval, val or test): item `i` -> `(image, label, i)`."""

    def __init__(self, source: ImageSource, transform: Transform) -> None:
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image, label = self.source.load(index)
        return self.transform(image), label, index

    def __getitems__(self, indices: Sequence[int]) -> StackedSamples:
        if _batched_path(self.source, self.transform):
            assert isinstance(self.source, TensorImages)
            index = torch.tensor(list(indices), dtype=torch.int64)
            return StackedSamples(self.transform(self.source.images[index]), self.source.labels[index], index)
        return stack_samples([self[i] for i in indices])
