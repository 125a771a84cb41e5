"""Transform presets: uint8 image (CHW tensor or PIL) -> float CHW tensor normalised per channel.

Each preset is the usual recipe for its dataset:

- digits (embedded): no augmentation, for train or eval.
- cifar10: train = RandomCrop(32, padding=4) + RandomHorizontalFlip; eval = none.
- imagenet (ResNet-50 v1.5, torchvision's reference recipe): train = RandomResizedCrop(size) +
  RandomHorizontalFlip; eval = Resize(size * 256 / 224) + CenterCrop(size).

`autoaugment=True` appends torchvision's AutoAugment (ImageNet policy) to the train augmentation,
on uint8 images and before the conversion to float, as torchvision's classification references do.
This is the paper's augmentation: section 3.1 trains on the augmented image instead of the original.
`PairedTransform` gives both views of one draw, for the official code's three-way BatchNorm (main BN
on the original, auxiliary BNs on the AutoAugment and the adversarial image).

torchvision's random transforms draw from torch's global RNG, so `keyed_call` runs one under a forked
RNG seeded per example; then an example's augmentation depends only on its key, not on which worker
or micro-batch happens to process it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as F

from conadv_repro.errors import UserError

ImageInput = torch.Tensor | Image.Image
Transform = Callable[[Any], torch.Tensor]
R = TypeVar("R")


class Normalise:
    """uint8 [0, 255] -> float32 (x / 255 - mean) / std, for one image (C,H,W) or a batch (N,C,H,W).

    The same three elementwise operations run whether it gets one image or a whole batch, so the
    loader's batched fast path gives bit-identical results to the per-image path.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std) or not mean or any(s <= 0 for s in std):
            raise UserError(
                f"mean {tuple(mean)} / std {tuple(std)} are not allowed; allowed: one positive "
                "std per channel and as many means"
            )
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if image.dtype != torch.uint8 or image.dim() not in (3, 4) or image.shape[-3] != self.mean.shape[0]:
            raise UserError(
                f"image of dtype {image.dtype} and shape {tuple(image.shape)} cannot be normalised; "
                f"allowed: uint8 with {self.mean.shape[0]} channel(s), shaped (C,H,W) or (N,C,H,W)"
            )
        return image.to(torch.float32).div(255.0).sub(self.mean).div(self.std)


class ImageTransform:
    """A preset: optional augmentation steps on the uint8 image, then `Normalise`.

    `random` says whether calling it draws random numbers (so `keyed_call` must seed it); `batchable`
    says it is only the normalisation, so it can run on a whole (N,C,H,W) uint8 batch at once.
    """

    def __init__(
        self,
        steps: Sequence[Callable[[Any], Any]],
        mean: Sequence[float],
        std: Sequence[float],
        *,
        random: bool,
    ) -> None:
        self.steps = list(steps)
        self.normalise = Normalise(mean, std)
        self.random = random

    @property
    def batchable(self) -> bool:
        return not self.steps

    def __call__(self, image: ImageInput) -> torch.Tensor:
        for step in self.steps:
            image = step(image)
        return self.normalise(_as_tensor(image))

    @property
    def can_pair(self) -> bool:
        """Whether AutoAugment is the last step, so `PairedTransform` can split it off the geometric ones."""
        return bool(self.steps) and isinstance(self.steps[-1], T.AutoAugment)

    def __repr__(self) -> str:
        steps = ", ".join(type(step).__name__ for step in self.steps) or "no augmentation"
        return f"ImageTransform({steps}; random={self.random})"


def _as_tensor(image: ImageInput) -> torch.Tensor:
    return F.pil_to_tensor(image) if isinstance(image, Image.Image) else image


class PairedTransform:
    """A train transform ending in AutoAugment, giving `(augmented, original)` from one random draw.

    The geometric steps run once and their uint8 result is the original; AutoAugment then runs on
    it. AutoAugment is the last random step of the train transform, so under `keyed_call` it draws
    exactly what the unpaired transform draws: `augmented` is bit-identical to `train(image)`, and
    `original` has the same crop and flip, without AutoAugment.
    """

    random = True
    batchable = False  # geometric steps and AutoAugment work per image

    def __init__(self, train: ImageTransform) -> None:
        if not train.can_pair:
            raise ValueError(f"{train!r} does not end in AutoAugment, so it has no un-augmented view")
        self.geometric = train.steps[:-1]
        self.autoaugment = train.steps[-1]
        self.normalise = train.normalise

    def __call__(self, image: ImageInput) -> tuple[torch.Tensor, torch.Tensor]:
        for step in self.geometric:
            image = step(image)
        # Normalised before AutoAugment runs: the float copy is safe from any in-place change to `image`
        # (for in-memory data, a view of the whole split).
        original = self.normalise(_as_tensor(image))
        augmented = self.normalise(_as_tensor(self.autoaugment(image)))
        return augmented, original

    def __repr__(self) -> str:
        steps = ", ".join(type(step).__name__ for step in self.geometric) or "no augmentation"
        return f"PairedTransform({steps}; then AutoAugment)"


@dataclass(frozen=True)
class TransformPair:
    """A dataset's train transform (may be random) and eval transform (always deterministic)."""

    train: ImageTransform
    eval: ImageTransform


def _train(
    steps: list[Callable[[Any], Any]], mean: Sequence[float], std: Sequence[float], autoaugment: bool
) -> ImageTransform:
    if autoaugment:
        steps = [*steps, T.AutoAugment(T.AutoAugmentPolicy.IMAGENET)]
    return ImageTransform(steps, mean, std, random=bool(steps))


def digits_preset(mean: Sequence[float], std: Sequence[float], *, autoaugment: bool = False) -> TransformPair:
    """The embedded digits: tiny images that geometric augmentation would mostly destroy."""
    return TransformPair(
        train=_train([], mean, std, autoaugment),
        eval=ImageTransform([], mean, std, random=False),
    )


def cifar10_preset(
    mean: Sequence[float], std: Sequence[float], *, autoaugment: bool = False
) -> TransformPair:
    """CIFAR-10's standard recipe (He et al. 2016): pad-and-crop plus horizontal flip."""
    return TransformPair(
        train=_train([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()], mean, std, autoaugment),
        eval=ImageTransform([], mean, std, random=False),
    )


def imagenet_preset(
    image_size: int, mean: Sequence[float], std: Sequence[float], *, autoaugment: bool = False
) -> TransformPair:
    """ResNet-50 v1.5's recipe (torchvision's classification reference); works on PIL or uint8 tensors."""
    resize = int(image_size * 256 / 224)
    return TransformPair(
        train=_train(
            [T.RandomResizedCrop(image_size, antialias=True), T.RandomHorizontalFlip()],
            mean,
            std,
            autoaugment,
        ),
        eval=ImageTransform(
            [T.Resize(resize, antialias=True), T.CenterCrop(image_size)], mean, std, random=False
        ),
    )


def keyed_call(transform: Callable[[Any], R], image: ImageInput, seed: int) -> R:
    """Apply `transform` with torch's global RNG seeded by `seed`, leaving the caller's RNG untouched.

    Transforms that declare `random = False` skip the fork, which costs more than normalising a small
    image; anything else (a user's transform) is assumed random.
    """
    if not getattr(transform, "random", True):
        return transform(image)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(image)
