"""The datasets a run can train on, each with fixed train / validation / test splits.

Splits never depend on the run seed, so a new seed (or later work) never changes a training set:
the validation split is held out of the official training set by a fixed `RandomState(0)` draw and
is what learning-rate sweeps select on; the test split is only reported.

- `digits` (the default; embedded, no download): scikit-learn's 1797 8x8 handwritten digits, resized
  once to `image_size` (16), split 1257 train / 180 val / 360 test.
- `cifar10`: torchvision's CIFAR-10 under `root`; 45000 train / 5000 val / the official 10000 test.
- `imagenet`: ILSVRC-2012 as class folders under `root`; train minus 3 images per class / those
  3 per class / the official 50000 validation images as test.
- `pkg.module:build`: a user's own dataset (see `load_user_dataset`).

`paired=True` (AutoAugment only) gives every training example both views, for the official code's
three-way BatchNorm: the AutoAugment image as today plus the same crop without AutoAugment.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib
import importlib.util
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from conadv_repro.data.imagenet_layout import check_imagenet_layout
from conadv_repro.data.sources import (
    EvalSet,
    FileImages,
    ImageSource,
    KeyedTrainSet,
    TensorImages,
    file_decoder,
)
from conadv_repro.data.transforms import (
    ImageTransform,
    PairedTransform,
    TransformPair,
    cifar10_preset,
    digits_preset,
    imagenet_preset,
)
from conadv_repro.errors import UserError

# Fixed split sizes; changing one changes every training set built from it.
DIGITS_TEST, DIGITS_VAL = 360, 180
CIFAR10_VAL = 5000
# 3 per class (3,000 of 1,281,167) keeps floor(N / batch), the steps of an epoch, what it is on the full
# training set at every batch size of the paper from 4k to 96k (at 32k and 96k only 3,215 images spare).
IMAGENET_VAL_PER_CLASS = 3
SPLIT_SEED = 0

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_LAYOUT = "ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG"


@dataclass
class DataBundle:
    """Everything the engine needs to know about a dataset.

    `train` takes `(global_index, epoch, step, micro)` items (see `MicroBatchSampler`); `train_eval`
    (the train split without augmentation, for the generalisation gap), `val` and `test` take plain
    int indices. All return `(image, label, index)`; images are float, normalised by `mean` / `std`
    (per channel, in [0, 1] pixel units), so valid inputs lie in `input_range()`. When `paired`,
    `train` items are `(image, label, index, original)`: `original` is the same example with the
    same crop and flip but without AutoAugment (see `PairedTransform`).
    """

    name: str
    train: Dataset
    train_eval: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_train: int
    train_in_memory: bool = False
    autoaugment: bool = False
    seed: int = 0
    paired: bool = False

    def input_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images of pixels 0 and 1, shaped (1,C,1,1): where an attack must clip."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return (0.0 - mean) / std, (1.0 - mean) / std


def make_bundle(
    name: str,
    *,
    train: ImageSource,
    val: ImageSource,
    test: ImageSource,
    transforms: TransformPair,
    num_classes: int,
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    seed: int,
    autoaugment: bool = False,
) -> DataBundle:
    """Wrap three split sources in the keyed train set and the eval sets (also for users' builders)."""
    return DataBundle(
        name=name,
        train=KeyedTrainSet(train, transforms.train, seed),
        train_eval=EvalSet(train, transforms.eval),
        val=EvalSet(val, transforms.eval),
        test=EvalSet(test, transforms.eval),
        num_classes=num_classes,
        in_channels=len(mean),
        image_size=image_size,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        num_train=len(train),
        train_in_memory=isinstance(train, TensorImages),
        autoaugment=autoaugment,
        seed=seed,
    )


def fixed_split(n: int, held_out: Sequence[int]) -> list[np.ndarray]:
    """Split range(n) into parts of the sizes `held_out` plus the rest, each sorted.

    The parts are consecutive slices of one `numpy.random.RandomState(0)` permutation, which numpy
    keeps identical across versions, and never depend on a run's seed.
    """
    if sum(held_out) >= n:
        raise UserError(
            f"{n} examples cannot hold out {sum(held_out)}; allowed: more than {sum(held_out)} examples"
        )
    order = np.random.RandomState(SPLIT_SEED).permutation(n)
    bounds = np.cumsum([0, *held_out])
    parts = [order[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
    return [np.sort(part) for part in [*parts, order[bounds[-1] :]]]


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    # float64 so the statistics do not depend on summation order.
    pixels = images.to(torch.float64).div(255.0).transpose(0, 1).reshape(images.shape[1], -1)
    return tuple(pixels.mean(1).tolist()), tuple(pixels.std(1, unbiased=False).tolist())


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as `load_digits()` gives them: images (1797, 8, 8) float64 in 0..16, labels.

    Read from the CSV that scikit-learn ships, found without importing scikit-learn (its import takes
    about 3 s on a CPU, longer than a smoke run's training); `load_digits` where that file is not found.
    A test checks that both give the same arrays.
    """
    spec = importlib.util.find_spec("sklearn")
    csv = None
    if spec is not None and spec.submodule_search_locations:
        csv = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if csv is not None and csv.is_file():
        with gzip.open(csv) as handle:
            data = np.loadtxt(handle, delimiter=",")
        return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    from sklearn.datasets import load_digits

    raw = load_digits()
    return raw.images, raw.target


@lru_cache(maxsize=4)
def _digits_images(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    raw_images, raw_labels = _digits_arrays()
    # Pixel values are 0..16; scale them to the usual 0..255.
    images = torch.from_numpy(np.rint(raw_images * (255.0 / 16.0))).to(torch.float32).unsqueeze(1)
    if image_size != images.shape[-1]:
        # Resized once here, not per item, so that __getitem__ is only indexing and normalising.
        images = torch.nn.functional.interpolate(
            images, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
        )
    images = images.round().clamp(0, 255).to(torch.uint8).contiguous()
    return images, torch.from_numpy(raw_labels).to(torch.int64)


def build_digits(root: str, image_size: int, *, autoaugment: bool = False, seed: int = 0) -> DataBundle:
    """scikit-learn's bundled digits (no network), resized to `image_size` (default 16) once at load."""
    size = image_size or 16
    images, labels = _digits_images(size)
    test, val, train = (
        torch.from_numpy(part) for part in fixed_split(len(labels), (DIGITS_TEST, DIGITS_VAL))
    )
    mean, std = _channel_stats(images[train])
    return make_bundle(
        "digits",
        train=TensorImages(images[train], labels[train]),
        val=TensorImages(images[val], labels[val]),
        test=TensorImages(images[test], labels[test]),
        transforms=digits_preset(mean, std, autoaugment=autoaugment),
        num_classes=10,
        image_size=size,
        mean=mean,
        std=std,
        seed=seed,
        autoaugment=autoaugment,
    )


def build_cifar10(root: str, image_size: int, *, autoaugment: bool = False, seed: int = 0) -> DataBundle:
    """torchvision's CIFAR-10 under `root` (never downloaded here), kept in memory as uint8."""
    from torchvision.datasets import CIFAR10

    if image_size not in (0, 32):
        raise UserError(f"image_size {image_size} is not supported for cifar10; allowed: 32 (or 0 for 32)")
    how = (
        f'get it on a machine with internet with: python -c "import torchvision; '
        f"torchvision.datasets.CIFAR10('{root or 'ROOT'}', download=True)\" and pass that folder as root"
    )
    if not root:
        raise UserError(f"cifar10 needs root=<folder holding cifar-10-batches-py>; {how}")
    try:
        official_train = CIFAR10(root, train=True, download=False)
        official_test = CIFAR10(root, train=False, download=False)
    except RuntimeError as error:
        raise UserError(f"cifar10 not found at root '{root}' ({error}); {how}") from None

    def as_tensors(split: CIFAR10) -> tuple[torch.Tensor, torch.Tensor]:
        # (N,H,W,C) numpy -> (N,C,H,W) uint8 tensor, so items skip PIL entirely.
        images = torch.from_numpy(np.asarray(split.data)).permute(0, 3, 1, 2).contiguous()
        return images, torch.tensor(split.targets, dtype=torch.int64)

    images, labels = as_tensors(official_train)
    val, train = (torch.from_numpy(part) for part in fixed_split(len(labels), (CIFAR10_VAL,)))
    return make_bundle(
        "cifar10",
        train=TensorImages(images[train], labels[train]),
        val=TensorImages(images[val], labels[val]),
        test=TensorImages(*as_tensors(official_test)),
        transforms=cifar10_preset(CIFAR10_MEAN, CIFAR10_STD, autoaugment=autoaugment),
        num_classes=10,
        image_size=32,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        seed=seed,
        autoaugment=autoaugment,
    )


def _imagenet_val_split(
    targets: np.ndarray, num_classes: int, classes: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out a fixed IMAGENET_VAL_PER_CLASS training images of every class; returns (train, val)."""
    rng = np.random.RandomState(SPLIT_SEED)
    # One stable sort instead of a scan per class: 1000 scans of 1.28M targets would take seconds.
    by_class = np.argsort(targets, kind="stable")
    counts = np.bincount(targets, minlength=num_classes)
    ends = np.cumsum(counts)
    held_out = []
    for label in range(num_classes):
        members = by_class[ends[label] - counts[label] : ends[label]]
        if len(members) <= IMAGENET_VAL_PER_CLASS:
            raise UserError(
                f"imagenet class '{classes[label]}' has {len(members)} training images; allowed: more than "
                f"{IMAGENET_VAL_PER_CLASS} ({IMAGENET_VAL_PER_CLASS} per class are held out for validation)"
            )
        held_out.append(members[rng.permutation(len(members))[:IMAGENET_VAL_PER_CLASS]])
    val = np.sort(np.concatenate(held_out))
    train = np.setdiff1d(np.arange(len(targets)), val, assume_unique=True)
    return train, val


def build_imagenet(
    root: str, image_size: int, *, autoaugment: bool = False, seed: int = 0, decoder: str = "pil"
) -> DataBundle:
    """ILSVRC-2012 in class folders: ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG.

    The official validation images come as one flat folder; move each into its class folder first
    (for example with `valprep.sh` from github.com/soumith/imagenetloader.torch). They are the test
    split here; the validation split is IMAGENET_VAL_PER_CLASS (3) training images per class, held out of train.
    `decoder` (the config's `data_decoder`): pil, as torchvision's ImageFolder, torchvision (torchvision.io) or
    torchcodec (TorchCodec, EXIF orientation applied).
    """
    decode = file_decoder(decoder)
    from torchvision.datasets import ImageFolder

    size = image_size or 224
    if not root:
        # Path("") is the working directory: without this, the layout check below would look there.
        raise UserError(
            "data=imagenet needs data_root=DIR, the folder holding train/<wnid>/ and val/<wnid>/ "
            "(e.g. data_root=/data/imagenet)"
        )
    folders = {part: Path(root) / part for part in ("train", "val")}
    check_imagenet_layout(root, flag="data_root")  # what ImageFolder would say only as "no class folder"
    try:
        official_train, official_val = (ImageFolder(str(folder)) for folder in folders.values())
    except FileNotFoundError as error:
        raise UserError(
            f"imagenet: no images under '{root}' ({error}); expected the layout {IMAGENET_LAYOUT}"
        ) from None
    if official_train.classes != official_val.classes:
        raise UserError(
            f"imagenet: the class folders of '{folders['val']}' differ from those of "
            f"'{folders['train']}'; allowed: the same <wnid> folders in both"
        )
    samples = official_train.samples
    targets = np.asarray(official_train.targets, dtype=np.int64)
    num_classes = len(official_train.classes)
    train, val = _imagenet_val_split(targets, num_classes, official_train.classes)
    return make_bundle(
        "imagenet",
        train=FileImages([samples[i] for i in train], decode, decoder),
        val=FileImages([samples[i] for i in val], decode, decoder),
        test=FileImages(official_val.samples, decode, decoder),
        transforms=imagenet_preset(size, IMAGENET_MEAN, IMAGENET_STD, autoaugment=autoaugment),
        num_classes=num_classes,
        image_size=size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        seed=seed,
        autoaugment=autoaugment,
    )


Builder = Callable[..., DataBundle]

# The one list of dataset names; error messages and the CLI read it from here.
DATASETS: dict[str, Builder] = {
    "digits": build_digits,
    "cifar10": build_cifar10,
    "imagenet": build_imagenet,
}

_BUNDLE_FIELDS = (
    "train",
    "train_eval",
    "val",
    "test",
    "num_classes",
    "in_channels",
    "image_size",
    "mean",
    "std",
    "num_train",
)


def _allowed() -> str:
    return ", ".join(DATASETS) + ", or an import path pkg.module:build"


def load_user_dataset(path: str, root: str, image_size: int, *, autoaugment: bool, seed: int) -> DataBundle:
    """Build a user's dataset from the import path `pkg.module:build`.

    Contract: `build(root: str, image_size: int) -> DataBundle` (`image_size` 0 means its default). If
    `build` also takes keyword arguments `autoaugment` and `seed`, they are passed; it should then key
    its train augmentation by the seed, which `make_bundle` does for it. The returned bundle must follow
    `DataBundle`'s item formats: `train[(global_index, epoch, step, micro)]` and `split[i]` both give
    `(normalised float CHW image, int label, index)`. `build_data(..., paired=True)` pairs the
    bundle afterwards (see `with_pairs`), so `build` never sees it; that needs `make_bundle` with the
    autoaugment preset.
    """
    module_name, _, attribute = path.partition(":")
    try:
        target: object = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError, ValueError) as error:
        raise UserError(f"cannot load dataset '{path}' ({error}); allowed: {_allowed()}") from None
    if not callable(target):
        raise UserError(f"dataset '{path}' is not callable; allowed: a function build(root, image_size)")
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    extra: dict[str, object] = {}
    for name, value in (("autoaugment", autoaugment), ("seed", seed)):
        if name in parameters or takes_kwargs:
            extra[name] = value
    if autoaugment and "autoaugment" not in extra:
        raise UserError(f"dataset '{path}' does not take autoaugment; allowed: autoaugment=False for it")
    bundle = target(root, image_size, **extra)
    missing = [name for name in _BUNDLE_FIELDS if not hasattr(bundle, name)]
    if missing:
        raise UserError(
            f"dataset '{path}' returned {type(bundle).__name__} without {', '.join(missing)}; "
            "allowed: a DataBundle"
        )
    return bundle


def with_pairs(bundle: DataBundle, name: str) -> DataBundle:
    """`bundle` with a train set that also yields each example's un-AutoAugmented view.

    Done after building, so builders (users' too) need not know of pairing: any bundle whose train set
    is a `KeyedTrainSet` with an AutoAugment preset (what `make_bundle` gives) can pair. The eval sets
    and the unpaired view's numbers are unchanged.
    """
    train = getattr(bundle, "train", None)
    if isinstance(train, KeyedTrainSet) and train.paired and isinstance(bundle, DataBundle):
        return dataclasses.replace(bundle, paired=True)
    transform = getattr(train, "transform", None)
    if not (
        isinstance(bundle, DataBundle)
        and isinstance(train, KeyedTrainSet)
        and isinstance(transform, ImageTransform)
        and transform.can_pair
    ):
        raise UserError(
            f"dataset '{name}' cannot give paired views: its train set is not a KeyedTrainSet whose "
            "transform ends in AutoAugment; allowed: paired=false for it, or a builder that passes "
            "autoaugment to make_bundle's preset"
        )
    paired = KeyedTrainSet(train.source, PairedTransform(transform), train.seed)
    return dataclasses.replace(bundle, train=paired, paired=True)


def build_data(
    name: str,
    *,
    root: str = "",
    image_size: int = 0,
    autoaugment: bool = False,
    seed: int = 0,
    paired: bool = False,
    decoder: str = "pil",
) -> DataBundle:
    """Build dataset `name` (see the module docstring); `image_size` 0 means the dataset's default.

    `paired=True` needs `autoaugment=True`: the original is the image without AutoAugment, so without
    it the two views would be the same. `decoder` other than pil is for imagenet (its image files).
    """
    if decoder != "pil" and name != "imagenet":
        raise UserError(
            f"decoder {decoder!r} applies to imagenet (image files), not to dataset '{name}'; allowed: pil"
        )
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 0:
        raise UserError(
            f"image_size {image_size!r} is not allowed; allowed: a positive integer, or 0 for the default"
        )
    if paired and not autoaugment:
        raise UserError(
            "paired views need autoaugment=true (the original is the image without AutoAugment); "
            "allowed: paired=false, or paired=true with autoaugment=true"
        )
    if name in DATASETS:
        # Only a decoder other than the default is passed, so builders without the argument keep working.
        extra = {"decoder": decoder} if decoder != "pil" else {}
        bundle = DATASETS[name](root, image_size, autoaugment=autoaugment, seed=seed, **extra)
    elif ":" in name:
        bundle = load_user_dataset(name, root, image_size, autoaugment=autoaugment, seed=seed)
    else:
        raise UserError(f"unknown dataset '{name}'; allowed: {_allowed()}")
    return with_pairs(bundle, name) if paired else bundle
