"""Map-style datasets over a split's raw images: the keyed train set and the plain eval set.

A *source* holds one split's raw examples (uint8 tensors in memory, or image files) and knows nothing
of transforms. The train set applies the random train transform keyed per example; the eval set
applies the deterministic eval transform. Both return `(image, label, index)`, so a batch always
carries the global indices that keyed randomness (augmentation, attack noise) needs. A paired train
set (see `PairedTransform`) appends the un-AutoAugmented view: `(image, label, index, original)`.
"""

from __future__ import annotations

import copy
import functools
import math
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import torch
from PIL import Image
from torch.utils.data import Dataset, get_worker_info

from conadv_repro.data.keys import STREAM_AUGMENT, example_seed
from conadv_repro.data.sampler import SampleKey
from conadv_repro.data.transforms import ImageTransform, Normalise, PairedTransform, Transform, keyed_call
from conadv_repro.errors import OneLineFailure, UserError


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


class UnreadableImage(OneLineFailure):
    """An image file its decoder cannot read (truncated, empty, not an image): the run stops on it.

    No image is skipped or replaced: a training set with a hole in it is another run than its config
    says. It pickles as `(path, reason)`, so it crosses from a DataLoader worker intact (see
    data/loader.py), rather than as the worker's traceback text that torch re-raises.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"unreadable image {self.path}: {self.reason}"


# How a message names the decoder; the key is the config's data_decoder.
DECODER_LABELS = {"pil": "PIL", "torchvision": "torchvision.io", "torchcodec": "TorchCodec"}
# torchvision's C++ errors start "decode_jpeg, /build/path/decode_jpeg.cpp:171, "; the user needs the rest.
_SOURCE_LOCATION = re.compile(r"^\w+, \S+\.(?:cpp|cc|cxx|h|hpp):\d+, ")
# Pillow names the file it was handed as "<_io.BufferedReader name='...'>"; the line names it already.
_FILE_OBJECT = re.compile(r"\s*<_io\.\w+ name=.*?>")


def decoder_complaint(error: BaseException, path: str, decoder: str | None = None) -> str:
    """The decoder's error as one short line without the path (the message names it once), e.g.
    "cannot identify image file (PIL)"."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = _FILE_OBJECT.sub("", _SOURCE_LOCATION.sub("", lines[0] if lines else ""))
    for form in (repr(path), f'"{path}"', path):
        text = text.replace(form, "")
    text = " ".join(text.split()).strip(" :,") or type(error).__name__
    label = DECODER_LABELS.get(decoder, decoder) if decoder else None
    return f"{text} ({label})" if label else text


class FileImages:
    """A split of image files read on demand, e.g. the `samples` of a torchvision ImageFolder.

    `decoder` names the loader in the message of a file it cannot read (a `data_decoder` value).
    """

    def __init__(
        self, samples: Sequence[tuple[str, int]], loader: Callable[[str], Any], decoder: str | None = None
    ) -> None:
        self.samples = list(samples)
        self.loader = loader
        self.decoder = decoder

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        try:
            return self.loader(path), label
        except MemoryError:
            raise  # the machine's trouble, not the file's
        except Exception as error:  # each decoder has its own error types (OSError, RuntimeError, ...)
            raise UnreadableImage(path, decoder_complaint(error, path, self.decoder)) from error


DECODERS = ("pil", "torchvision", "torchcodec")
TORCHCODEC_INSTALL = "pip install -e '.[torchcodec]'"

_noted: set[str] = set()


def _note_once(key: str, line: str) -> None:
    # Once per process, not per image: loader workers forked after the note inherit `_noted`.
    if key not in _noted:
        _noted.add(key)
        print(line, file=sys.stderr, flush=True)


@functools.cache
def torchcodec_missing() -> str | None:
    """Why TorchCodec cannot decode here (not installed, or fails to load), or None when it can."""
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception as exc:  # a wheel built for another torch fails to load with OSError or RuntimeError
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def _rgb_pil(decoded: torch.Tensor) -> Image.Image:
    return Image.fromarray(decoded.permute(1, 2, 0).numpy(), mode="RGB")


def torchvision_decode(path: str) -> Image.Image:
    """An image file as an RGB PIL image, decoded by torchvision.io (libjpeg-turbo, libpng, ...).

    `decode_image` reads the format from the file's first bytes, so a PNG named .JPEG (ImageNet has
    one) decodes; ImageReadMode.RGB turns greyscale and CMYK JPEGs into RGB. The PIL image it gives
    keeps the augmentation the Pillow path runs, so only the decoder differs. EXIF orientation is not
    applied (torchvision's default), as Pillow's `convert("RGB")` does not apply it either.
    """
    from torchvision.io import ImageReadMode, decode_image, read_file

    decoded = decode_image(read_file(path), mode=ImageReadMode.RGB)
    return _rgb_pil(decoded)


def torchcodec_decode(path: str) -> Image.Image:
    """An image file as an RGB PIL image, decoded by TorchCodec on the CPU (libjpeg-turbo, libpng, ...).

    Like `torchvision_decode` (the format read from the file's bytes; greyscale and CMYK become RGB;
    uint8), except that TorchCodec always applies the EXIF orientation, with no option to skip it:
    a photo tagged as rotated comes out upright, transposed relative to pil and torchvision. That is
    why it is a decoder of its own, with its own run id.
    """
    from torchcodec.decoders import decode_image

    decoded = decode_image(path, mode="RGB")
    if decoded.dim() == 4:  # an animated WebP/GIF/AVIF gives all its frames; Pillow's loader takes the first
        decoded = decoded[0]
    return _rgb_pil(decoded)


def file_decoder(name: str) -> Callable[[str], Any]:
    """The decode function of `data_decoder`: pil is torchvision's ImageFolder loader (Pillow, RGB)."""
    if name == "pil":
        from torchvision.datasets.folder import default_loader

        return default_loader
    if name == "torchvision":
        try:
            from torchvision.io import decode_image, read_file  # noqa: F401
        except ImportError:
            # Deprecated in torchvision 0.29, to be removed: say so here, not once per image in the workers.
            import torchvision

            raise UserError(
                f"data_decoder=torchvision needs torchvision.io's image decoders, which torchvision "
                f"{torchvision.__version__} no longer ships; allowed: data_decoder=pil, or data_decoder=torchcodec "
                f"({TORCHCODEC_INSTALL}; it applies EXIF orientation, so it is another run id)"
            ) from None
        _note_once("torchvision", "note: data_decoder=torchvision decodes with torchvision.io (deprecated since "
                   "torchvision 0.29); its successor is data_decoder=torchcodec (" + TORCHCODEC_INSTALL +
                   "), another run id because it turns EXIF-rotated images upright")
        return torchvision_decode
    if name == "torchcodec":
        missing = torchcodec_missing()
        if missing is not None:
            raise UserError(f"data_decoder=torchcodec needs TorchCodec, which does not load here ({missing}); "
                            f"install it: {TORCHCODEC_INSTALL}")
        return torchcodec_decode
    raise UserError(f"data_decoder={name!r} is not allowed; allowed: {', '.join(DECODERS)}")


# An item: (image, label, index), or (image, label, index, original) from a paired train set.
Sample = tuple[torch.Tensor, int, int] | tuple[torch.Tensor, int, int, torch.Tensor]


class StackedSamples(NamedTuple):
    """A collated batch: inputs (N,C,H,W) float, targets (N,) int64, global indices (N,) int64, and
    for a paired train set the originals (N,C,H,W) float (the inputs without AutoAugment), else None.
    From a train set built with `uint8=True` the images are uint8, not yet normalised."""

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


def _ours(transform: object) -> bool:
    """Whether `transform` is one of the suite's presets, which split into augment + normalise."""
    return isinstance(transform, (ImageTransform, PairedTransform))


def new_batch(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised batch; in a loader worker, in shared memory.

    A worker's batch travels to the main process through shared memory, and a tensor made elsewhere is
    copied there on the way (a whole extra pass over the batch); torch's default_collate allocates
    there for the same reason.
    """
    if get_worker_info() is None:
        return torch.empty(tuple(shape), dtype=dtype)
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    storage = torch.UntypedStorage._new_shared(nbytes)
    return torch.empty((0,), dtype=dtype).set_(storage, 0, tuple(shape))


def assemble(images: Sequence[torch.Tensor], normalise: Normalise | None) -> torch.Tensor:
    """One batch (N,C,H,W) from uint8 (C,H,W) images of one size: float32 normalised by `normalise`, or
    uint8 as they are when it is None (normalised later, on the device).

    A uint8 batch is laid out channels-last (N,H,W,C in memory): a decoded image is H,W,C already, so
    each image is one plain copy, and a channels-last network on the GPU takes the batch as it is.
    """
    count, (channels, height, width) = len(images), images[0].shape
    if normalise is None:
        out = new_batch((count, height, width, channels), torch.uint8).permute(0, 3, 1, 2)
        for slot, image in zip(out, images, strict=True):
            slot.copy_(image)
        return out
    return normalise.fill(new_batch((count, channels, height, width), torch.float32), images)


def index_tensor(values: Sequence[int]) -> torch.Tensor:
    """int64 labels or indices of a batch, in shared memory in a worker like the images."""
    out = new_batch((len(values),), torch.int64)
    out.copy_(torch.as_tensor(values, dtype=torch.int64))
    return out


class KeyedTrainSet(Dataset):
    """The training split: item `(global_index, epoch, step, micro)` -> `(image, label, global_index)`.

    The train transform is seeded by `example_seed(seed, epoch, global_index, STREAM_AUGMENT)`, so an
    example's augmentation in an epoch is the same whichever worker, micro-batch or rank loads it, and
    reloading a batch (ConAdv attacks step t+1's batch one step early) reproduces it exactly.

    With a `PairedTransform` the items are `(image, label, global_index, original)`, `image` being
    bit-identical to the unpaired set's under the same key. With `uint8=True` (see `as_uint8`) the
    images are the uint8 images before normalisation, which `MicroBatch.to` then does on the device.
    """

    def __init__(
        self, source: ImageSource, transform: Transform | PairedTransform, seed: int, *, uint8: bool = False
    ) -> None:
        if uint8 and not _ours(transform):
            raise ValueError(f"{transform!r} is not a preset of the suite, so it cannot give uint8 images")
        self.source = source
        self.transform = transform
        self.seed = seed
        self.uint8 = uint8

    def __len__(self) -> int:
        return len(self.source)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.source, TensorImages)

    @property
    def paired(self) -> bool:
        return isinstance(self.transform, PairedTransform)

    @property
    def can_give_uint8(self) -> bool:
        """Whether the transform is a preset of the suite (a user's transform normalises itself)."""
        return _ours(self.transform)

    def as_uint8(self) -> KeyedTrainSet:
        """This train set giving uint8 images, the same examples before `normalise` (see `MicroBatch.to`)."""
        out = copy.copy(self)
        out.uint8 = True
        return out

    @property
    def normalise(self) -> Normalise:
        """The transform's `Normalise` (the preset's last step), for a uint8 train set's batches."""
        return self.transform.normalise  # type: ignore[union-attr]

    def _seed(self, key: SampleKey) -> int:
        return example_seed(self.seed, key[1], key[0], STREAM_AUGMENT)

    def _augmented(self, key: SampleKey) -> tuple[Any, int]:
        """(uint8 image, or (augmented, original) for a paired set; label) of a preset, unnormalised."""
        image, label = self.source.load(key[0])
        augment = self.transform.augment  # type: ignore[union-attr]
        if not getattr(self.transform, "random", True):
            return augment(image), label
        return keyed_call(augment, image, self._seed(key)), label

    def __getitem__(self, key: SampleKey) -> Sample:
        index = key[0]
        if self.uint8:
            image, label = self._augmented(key)
            if isinstance(self.transform, PairedTransform):
                return image[0], label, index, image[1]
            return image, label, index
        image, label = self.source.load(index)
        seed = self._seed(key)
        if isinstance(self.transform, PairedTransform):
            augmented, original = keyed_call(self.transform, image, seed)
            return augmented, label, index, original
        return keyed_call(self.transform, image, seed), label, index

    def __getitems__(self, keys: Sequence[SampleKey]) -> StackedSamples:
        """What DataLoader calls for a whole micro-batch; identical to stacking `self[key]` per key."""
        if _batched_path(self.source, self.transform):
            assert isinstance(self.source, TensorImages)
            indices = torch.tensor([key[0] for key in keys], dtype=torch.int64)
            images = self.source.images[indices]
            return StackedSamples(
                images if self.uint8 else self.transform(images), self.source.labels[indices], indices
            )
        if not _ours(self.transform):
            return stack_samples([self[key] for key in keys])
        normalise = None if self.uint8 else self.normalise
        # A preset: augment each image (keyed), then normalise the batch in place, allocated once.
        images, labels = zip(*(self._augmented(key) for key in keys), strict=True)
        indices = index_tensor([key[0] for key in keys])
        if isinstance(self.transform, PairedTransform):
            augmented, originals = zip(*images, strict=True)
            return StackedSamples(
                assemble(augmented, normalise), index_tensor(labels), indices, assemble(originals, normalise)
            )
        return StackedSamples(assemble(images, normalise), index_tensor(labels), indices)


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
        if not isinstance(self.transform, ImageTransform):
            return stack_samples([self[i] for i in indices])
        loaded = [self.source.load(i) for i in indices]
        images = [self.transform.augment(image) for image, _ in loaded]
        return StackedSamples(
            assemble(images, self.transform.normalise),
            index_tensor([label for _, label in loaded]),
            index_tensor(list(indices)),
        )
