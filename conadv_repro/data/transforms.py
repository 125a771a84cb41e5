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

torchvision's random transforms draw from torch's global CPU generator, so `keyed_call` runs one with
that generator seeded per example (and restored afterwards); then an example's augmentation depends only
on its key, not on which worker or micro-batch happens to process it.

The loader works in two halves: `augment` (the random, per-image steps, on uint8) and `Normalise`
(elementwise, so it can run on a whole batch, and after the copy to the device on uint8 batches: see
`MicroBatch.to`); the per-image `__call__` is the two halves in a row and gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from PIL import Image

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
        self._on_device: dict[str, tuple[torch.Tensor, ...]] = {}

    def _check(self, image: torch.Tensor) -> None:
        if image.dtype != torch.uint8 or image.dim() not in (3, 4) or image.shape[-3] != self.mean.shape[0]:
            raise UserError(
                f"image of dtype {image.dtype} and shape {tuple(image.shape)} cannot be normalised; "
                f"allowed: uint8 with {self.mean.shape[0]} channel(s), shaped (C,H,W) or (N,C,H,W)"
            )

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        self._check(image)
        return image.to(torch.float32).div(255.0).sub(self.mean).div(self.std)

    def fill(self, out: torch.Tensor, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Write `images` (uint8 (C,H,W), any strides) into the float32 batch `out`, normalised.

        The same three operations as `__call__`, in place, one image at a time so that an image stays in
        the cache between them; the numbers are those of `__call__`.
        """
        for slot, image in zip(out, images, strict=True):
            slot.copy_(image)
            slot.div_(255.0).sub_(self.mean).div_(self.std)
        return out

    def on_device(self, images: torch.Tensor) -> torch.Tensor:
        """`__call__` for a uint8 batch already on its device (a CPU batch gets exactly `__call__`).

        On a GPU, dividing by a Python number multiplies by its reciprocal (one rounding more than the
        CPU's division), so there 255 is a tensor on the device, which divides as the CPU does.
        """
        if images.device.type == "cpu":
            return self(images)
        self._check(images)
        key = str(images.device)
        if key not in self._on_device:
            self._on_device[key] = tuple(
                t.to(images.device) for t in (torch.tensor(255.0), self.mean, self.std)
            )
        scale, mean, std = self._on_device[key]
        return images.to(torch.float32).div(scale).sub(mean).div(std)

    def __getstate__(self) -> dict[str, Any]:
        # Device copies stay in the process that made them (a spawned loader worker must not get them).
        return {**self.__dict__, "_on_device": {}}


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

    def augment(self, image: ImageInput) -> torch.Tensor:
        """The augmentation steps only: a uint8 (C,H,W) tensor, possibly a view of the source's memory."""
        for step in self.steps:
            image = step(image)
        return _as_tensor(image)

    def __call__(self, image: ImageInput) -> torch.Tensor:
        return self.normalise(self.augment(image))

    @property
    def can_pair(self) -> bool:
        """Whether AutoAugment is the last step, so `PairedTransform` can split it off the geometric ones."""
        return bool(self.steps) and isinstance(self.steps[-1], _tv_transforms().AutoAugment)

    def __repr__(self) -> str:
        steps = ", ".join(type(step).__name__ for step in self.steps) or "no augmentation"
        return f"ImageTransform({steps}; random={self.random})"


def _tv_transforms() -> Any:
    # Imported on first use: torchvision's import pulls in torch._dynamo (about 3 s on a CPU), and the
    # embedded digits without AutoAugment, the suite's smoke runs and attack workers, never need it.
    from torchvision import transforms

    return transforms


def _as_tensor(image: ImageInput) -> torch.Tensor:
    if isinstance(image, Image.Image):
        from torchvision.transforms.functional import pil_to_tensor

        return pil_to_tensor(image)
    return image


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

    def augment(self, image: ImageInput) -> tuple[torch.Tensor, torch.Tensor]:
        """`(augmented, original)` as uint8 (C,H,W) tensors, before normalisation."""
        for step in self.geometric:
            image = step(image)
        # Copied before AutoAugment runs: the original is then safe from any in-place change to `image`
        # (for in-memory data, a view of the whole split). A PIL image's tensor is a copy already.
        original = image.clone() if isinstance(image, torch.Tensor) else _as_tensor(image)
        return _as_tensor(self.autoaugment(image)), original

    def __call__(self, image: ImageInput) -> tuple[torch.Tensor, torch.Tensor]:
        augmented, original = self.augment(image)
        return self.normalise(augmented), self.normalise(original)

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
        T = _tv_transforms()
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
    T = _tv_transforms()
    return TransformPair(
        train=_train([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()], mean, std, autoaugment),
        eval=ImageTransform([], mean, std, random=False),
    )


def imagenet_preset(
    image_size: int, mean: Sequence[float], std: Sequence[float], *, autoaugment: bool = False
) -> TransformPair:
    """ResNet-50 v1.5's recipe (torchvision's classification reference); works on PIL or uint8 tensors."""
    resize = int(image_size * 256 / 224)
    T = _tv_transforms()
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
    """Apply `transform` with torch's global CPU generator seeded by `seed`, then restore the caller's state.

    Only the CPU default generator: torchvision's transforms draw from it alone (torch.rand, torch.randint
    and Tensor.uniform_ without a generator, on CPU tensors). `torch.manual_seed` would also seed every
    CUDA generator, and lazily (a stack trace per call) before CUDA starts: a few hundred microseconds an
    image, and, in a process that trains on CUDA without loader workers, the training's CUDA generator
    re-seeded by every image. Transforms that declare `random = False` skip the seeding; anything else
    (a user's transform) is assumed random.
    """
    if not getattr(transform, "random", True):
        return transform(image)
    generator = torch.default_generator
    state = generator.get_state()
    generator.manual_seed(seed)
    try:
        return transform(image)
    finally:
        generator.set_state(state)
