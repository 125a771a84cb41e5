"""Synthetic ImageNet-shaped data made on the device, for the speed section.

The speed section measures the GPU, not the input pipeline (at 224 px the JPEG loader, not the GPU,
usually bounds ResNet-50): a small pool of random batches is generated once on the device and served again and
again, in the engine's own `MicroBatch` form, through the same look-ahead the engine's loader gives
(ConAdv attacks the micro-batch it peeks at). The example indices stay distinct across steps, so the
attack's keyed noise is computed as in a real run.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset

from conadv_repro.config import Config
from conadv_repro.data.datasets import IMAGENET_MEAN, IMAGENET_STD, DataBundle
from conadv_repro.data.loader import MicroBatch
from conadv_repro.data.sampler import Lookahead, MicroBatchKey
from conadv_repro.engine.trainer import Trainer

CLASSES = 1000
TRAIN_EXAMPLES = 1_278_167  # ImageNet's training set less the validation split: an epoch's length only
POOL = 2  # distinct batches: no two consecutive steps see the same tensor


class _NoDataset(Dataset):
    def __len__(self) -> int:
        return 0

    def __getitem__(self, index: int) -> None:
        raise IndexError("the speed section's data are synthetic; it has no dataset to read")


def synthetic_bundle(image_size: int) -> DataBundle:
    """Shapes and statistics of ImageNet at `image_size`, without images (the stream brings them)."""
    none = _NoDataset()
    return DataBundle(name="synthetic", train=none, train_eval=none, val=none, test=none, num_classes=CLASSES,
                      in_channels=3, image_size=image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                      num_train=TRAIN_EXAMPLES)


def batch_pool(micro: int, image_size: int, device: torch.device, *, channels_last: bool,
               seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`POOL` (inputs, targets) pairs on `device`: images uniform in [0, 1], standardised as ImageNet's."""
    generator = torch.Generator(device=device).manual_seed(seed)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    pool = []
    for _ in range(POOL):
        pixels = torch.rand((micro, 3, image_size, image_size), device=device, generator=generator)
        inputs = (pixels - mean) / std
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        targets = torch.randint(0, CLASSES, (micro,), device=device, generator=generator)
        pool.append((inputs, targets))
    return pool


def micro_batches(pool: list[tuple[torch.Tensor, torch.Tensor]], *, start_step: int,
                  accumulation: int) -> Iterator[MicroBatch]:
    """Endless micro-batches of steps start_step, start_step + 1, ... in (step, micro) order."""
    micro = pool[0][1].shape[0]
    step, served = start_step, 0
    while True:
        for index in range(accumulation):
            inputs, targets = pool[served % len(pool)]
            first = (step * accumulation + index) * micro
            yield MicroBatch(key=MicroBatchKey(step=step, micro=index, epoch=0), inputs=inputs, targets=targets,
                             indices=torch.arange(first, first + micro))
            served += 1
        step += 1


class SyntheticTrainer(Trainer):
    """The engine's Trainer, fed from a pool of synthetic batches on its device instead of a loader."""

    def __init__(self, cfg: Config):
        super().__init__(cfg, bundle=synthetic_bundle(cfg.model.input_size), log=lambda _m: None)
        self.pool = batch_pool(self.derived.micro_batch, self.bundle.image_size, self.device,
                               channels_last=self.channels_last, seed=cfg.seed)

    def open_batches(self, start_step: int) -> None:
        self.batches = Lookahead(micro_batches(self.pool, start_step=start_step,
                                               accumulation=self.derived.accumulation))
        self.method.begin(start_step, self.derived.total_steps)
