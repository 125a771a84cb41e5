"""ImageNet input on the CPU: the suite's train loader against torchvision's plain ImageFolder + DataLoader.

It builds an ImageNet-shaped JPEG folder (ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG) from
crops of the two photographs scikit-learn ships, 300-500 px a side for the most part, at the JPEG
quality that brings the mean file near ImageNet's (about 110 KB), then times, in alternating rounds of
one run, the loaders that a training run would otherwise use:

- ours: `conadv_repro.data.loader.train_micro_batches` over the imagenet bundle (keyed augmentation).
- plain: torchvision's `ImageFolder` + `DataLoader(shuffle=True)` with the same transforms:
  RandomResizedCrop(224) + RandomHorizontalFlip [+ AutoAugment] + ToTensor + Normalize.

Both deliver the same work: float32 (N,3,224,224) batches, normalised. Rows with and without AutoAugment,
for each worker count; every round builds a new loader (its workers start and end inside the round),
and every process runs one torch thread, so that a worker is a core. Printed per row: the median
images/s of each side and images per CPU-second (main process and workers: steadier than wall-clock
time on a shared machine), plain/ours from each round's pair (the goal: at most 1.05) with its spread
over the rounds, and the cores a GPU needs at 3,000 images/s. Two more tables: uint8 batches normalised
on the device (what a CUDA run does) against float32 ones, and the decoders (Pillow, torchvision.io's
libjpeg-turbo, TorchCodec's when installed, nvJPEG when there is a GPU). The figures and the machine they
were measured on: docs/loader.md.

    python benchmarks/loader.py                          # about 4 minutes on 2 cores
    python benchmarks/loader.py --rounds 9 --workers 0,4,8 --save mycluster-node

`--save NAME` writes benchmarks/calibrations/loader/NAME.json: the suite loader's images per CPU-second
(with and without AutoAugment) on this machine, which `--estimate` reads to say whether a profile's CPUs
can feed its GPUs.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler
from torchvision import transforms as T

from conadv_repro.atomic import atomic_write_json
from conadv_repro.data.datasets import IMAGENET_MEAN, IMAGENET_STD, IMAGENET_VAL_PER_CLASS, build_data
from conadv_repro.data.loader import train_micro_batches
from conadv_repro.data.sampler import BatchPlan
from conadv_repro.data.sources import TORCHCODEC_INSTALL, file_decoder, torchcodec_missing
from conadv_repro.errors import (
    OneLineParser,
    UserError,
    calibration_name,
    check_writable_folder,
    cli_entry,
    count_at_least,
)
from conadv_repro.launch.loader_check import LOADER_SCHEMA, loader_calibrations_dir
from conadv_repro.machine import cpu_name

IMAGENET_MEAN_BYTES = 110_000  # ILSVRC-2012 train: about 140 GB over 1,281,167 files
GPU_IMAGES_PER_S = 3000  # a fast GPU's ResNet-50 training rate, for the cores-per-GPU figure
CLASSES = 10
SIZE = 224
MARKER = "loader-benchmark.json"


# ------------------------------------------------------------------------------------ the folder


def photographs() -> list[Image.Image]:
    from sklearn.datasets import load_sample_images

    return [Image.fromarray(array) for array in load_sample_images().images]  # china, flower: 427 x 640


def random_crop(photos: list[Image.Image], rng: np.random.RandomState) -> Image.Image:
    """A crop of a photograph, rescaled to mostly 300-500 px a side (ImageNet's typical sizes)."""
    photo = photos[rng.randint(len(photos))]
    low, high = (300, 500) if rng.rand() < 0.9 else (180, 640)
    width, height = rng.randint(low, high + 1, size=2)
    scale = rng.uniform(0.8, 1.25)  # below 1 upsamples (smoother), above downsamples (more detail)
    crop_w, crop_h = min(photo.width, int(width / scale)), min(photo.height, int(height / scale))
    x, y = rng.randint(photo.width - crop_w + 1), rng.randint(photo.height - crop_h + 1)
    image = photo.crop((x, y, x + crop_w, y + crop_h)).resize((int(width), int(height)), Image.BICUBIC)
    return image.transpose(Image.FLIP_LEFT_RIGHT) if rng.rand() < 0.5 else image


def jpeg_bytes(image: Image.Image, quality: int) -> int:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.tell()


def pick_quality(photos: list[Image.Image]) -> int:
    """The JPEG quality whose mean file size on a probe of crops is nearest ImageNet's."""
    rng = np.random.RandomState(1)
    probe = [random_crop(photos, rng) for _ in range(24)]
    sizes = {q: float(np.mean([jpeg_bytes(image, q) for image in probe])) for q in range(85, 101)}
    return min(sizes, key=lambda q: abs(sizes[q] - IMAGENET_MEAN_BYTES))


def build_folder(root: Path, train_per_class: int) -> dict[str, Any]:
    """ROOT/train/<wnid>/*.JPEG (train_per_class + the held-out 3 each) and ROOT/val/<wnid>/*.JPEG."""
    spec = {"classes": CLASSES, "train_per_class": train_per_class}
    marker = root / MARKER
    if marker.is_file():
        built = json.loads(marker.read_text(encoding="utf-8"))
        if {k: built.get(k) for k in spec} == spec:
            return built
    if root.exists() and any(root.iterdir()) and not marker.is_file():
        raise UserError(f"--root {root} is not empty and was not made by this benchmark; allowed: a new or "
                        "empty folder, or one this benchmark built")
    for part in ("train", "val"):
        shutil.rmtree(root / part, ignore_errors=True)
    photos = photographs()
    quality = pick_quality(photos)
    rng = np.random.RandomState(0)
    sizes = []
    for part, count in (("train", train_per_class + IMAGENET_VAL_PER_CLASS), ("val", 1)):
        for label in range(CLASSES):
            folder = root / part / f"n{label:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                path = folder / f"n{label:08d}_{k}.JPEG"
                random_crop(photos, rng).save(path, format="JPEG", quality=quality)
                sizes.append(path.stat().st_size)
    built = {**spec, "quality": quality, "files": len(sizes), "mean_bytes": float(np.mean(sizes))}
    marker.write_text(json.dumps(built), encoding="utf-8")
    return built


# ------------------------------------------------------------------------------------ the loaders


def plain_transform(autoaugment: bool) -> T.Compose:
    steps: list[Any] = [T.RandomResizedCrop(SIZE, antialias=True), T.RandomHorizontalFlip()]
    if autoaugment:
        steps.append(T.AutoAugment(T.AutoAugmentPolicy.IMAGENET))
    return T.Compose([*steps, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


@dataclass
class Side:
    """One loader of a row: `batches(images)` yields the inputs of a freshly built loader. Per round:
    images/s of wall-clock time, and images per CPU-second of the main process and its workers."""

    name: str
    batches: Callable[[int], Generator[torch.Tensor, None, None]]
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def ours(root: Path, autoaugment: bool, workers: int, batch: int, *, uint8: bool = False, move: bool = False,
         decoder: str = "pil") -> Callable[[int], Generator[torch.Tensor, None, None]]:
    """The suite's loader; `move`: each batch copied to the device as the engine does (uint8: normalised there)."""
    bundle = build_data("imagenet", root=str(root), image_size=SIZE, autoaugment=autoaugment, seed=0,
                        decoder=decoder)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")

    plan = BatchPlan(bundle.num_train, batch, seed=0, dataset="imagenet")
    epochs = itertools.count()

    def batches(images: int) -> Generator[torch.Tensor, None, None]:
        # A new epoch each round: new keyed draws (crops, AutoAugment's operations), as plain's global RNG
        # gives it, so that both sides average over the augmentations' varying costs.
        start = next(epochs) * plan.steps_per_epoch
        stream = train_micro_batches(bundle, plan, start_step=start, end_step=start + images // batch, micro_size=batch,
                                     workers=workers, normalise_on_device=uint8,
                                     pin_memory=move and device.type == "cuda")
        for micro in stream:
            yield micro.to(device, channels_last=device.type == "cuda").inputs if move else micro.inputs

    return batches


def plain(root: Path, autoaugment: bool, workers: int, batch: int) -> Callable[[int], Generator[torch.Tensor, None, None]]:
    dataset = torchvision.datasets.ImageFolder(str(root / "train"), transform=plain_transform(autoaugment))

    def batches(images: int) -> Generator[torch.Tensor, None, None]:
        # shuffle=True over exactly the images timed, so that its workers decode nothing beyond them.
        sampler = RandomSampler(dataset, num_samples=images // batch * batch)
        for inputs, _ in DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True):
            yield inputs

    return batches


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its ended, joined children (loader workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def timed(side: Side, images: int, check: Callable[[torch.Tensor], None] | None) -> None:
    """One round: build the loader, take its batches, end its workers; record images/s and per CPU-second.

    Wall-clock rates on a shared machine move with whatever else runs; the CPU-seconds count only the
    work of this loader (its workers are counted once they have ended, which they have when it returns).
    """
    count = 0
    cpu, start = cpu_seconds(), time.perf_counter()
    stream = side.batches(images)
    for inputs in stream:
        if check is not None:
            check(inputs)
            check = None
        count += inputs.shape[0]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    stream.close()  # an exhausted DataLoader has ended its workers; this makes sure of it before the next side
    side.wall.append(count / seconds)
    side.cpu.append(count / (cpu_seconds() - cpu))


def float_batch(batch: int) -> Callable[[torch.Tensor], None]:
    def check(inputs: torch.Tensor) -> None:
        ok = inputs.dtype == torch.float32 and tuple(inputs.shape) == (batch, 3, SIZE, SIZE)
        if not ok or float(inputs.min()) < -2.2 or float(inputs.max()) > 2.7:
            raise RuntimeError(f"not the same work: a batch of {inputs.dtype} {tuple(inputs.shape)}, values "
                               f"{float(inputs.min()):.2f}..{float(inputs.max()):.2f}")
    return check


def run_rounds(rows: list[list[Side]], rounds: int, images: int, batch: int) -> None:
    """Every row's sides, round after round, the order of the sides swapped every other round."""
    check = float_batch(batch)
    for number in range(rounds):
        for sides in rows:
            for side in sides if number % 2 == 0 else reversed(sides):
                timed(side, images, check if number == 0 else None)
        print(f"  round {number + 1}/{rounds} done", flush=True)


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def paired(first: list[float], second: list[float]) -> list[float]:
    """second/first of each round: the two sides ran back to back, so the machine's drift cancels."""
    return [b / a for a, b in zip(first, second, strict=True)]


# ------------------------------------------------------------------------------------ decoders


def decode_rates(files: list[Path], rounds: int) -> dict[str, list[float]]:
    """Decode only (file to RGB pixels), images per CPU-second; nvJPEG in batches of 32 on a GPU, per second."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file

    pil = file_decoder("pil")
    to_pil = file_decoder("torchvision")
    ways: dict[str, Callable[[], None]] = {
        "pil (Pillow, ImageFolder's loader)": lambda: [pil(str(p)) for p in files],
        "torchvision.io decode_image (CPU)": lambda: [decode_image(read_file(str(p)), mode=ImageReadMode.RGB)
                                                     for p in files],
        "data_decoder=torchvision (decode_image + to PIL)": lambda: [to_pil(str(p)) for p in files],
    }
    if torchcodec_missing() is None:
        from torchcodec.decoders import decode_image as codec_decode_image

        codec_to_pil = file_decoder("torchcodec")
        ways["torchcodec decode_image (CPU)"] = lambda: [codec_decode_image(str(p), mode="RGB") for p in files]
        ways["data_decoder=torchcodec (decode_image + to PIL)"] = lambda: [codec_to_pil(str(p)) for p in files]
    if torch.cuda.is_available():
        encoded = [read_file(str(p)) for p in files]

        def nvjpeg() -> None:
            for start in range(0, len(encoded), 32):
                decode_jpeg(encoded[start:start + 32], mode=ImageReadMode.RGB, device="cuda")
            torch.cuda.synchronize()

        nvjpeg()  # the first call initialises nvJPEG
        ways["nvJPEG decode_jpeg(device='cuda'), batches of 32"] = nvjpeg
    rates: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, fn in ways.items():
            start = time.perf_counter() if name.startswith("nvJPEG") else time.process_time()
            fn()
            end = time.perf_counter() if name.startswith("nvJPEG") else time.process_time()
            rates[name].append(len(files) / (end - start))
    return rates


# ------------------------------------------------------------------------------------ main


def worker_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 0,1,2") from None
    if not counts or any(c < 0 for c in counts) or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; allowed: distinct integers >= 0, e.g. 0,1,2")
    return counts


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=None,
                        help="folder for the JPEG tree (built there, or reused if this benchmark built it); "
                             "default: a temporary folder, removed at the end")
    parser.add_argument("--rounds", type=count_at_least(1), default=7, help="alternating rounds (median and spread)")
    parser.add_argument("--images", type=count_at_least(1), default=192, help="images per loader and round")
    parser.add_argument("--batch", type=count_at_least(1), default=32, help="images per batch")
    parser.add_argument("--workers", type=worker_counts, default=[0, 1, 2], help="loader worker counts, e.g. 0,1,2")
    parser.add_argument("--save", type=calibration_name, default=None,
                        help="write benchmarks/calibrations/loader/NAME.json (the suite loader's images per CPU-second)")
    args = parser.parse_args(argv)
    if args.images < args.batch:
        raise UserError(f"--images {args.images} is less than one batch of --batch {args.batch}; allowed: "
                        f"--images >= --batch")
    save_to = None if args.save is None else loader_calibrations_dir() / f"{args.save}.json"
    if save_to is not None:
        check_writable_folder(save_to.parent, "--save")
    torch.set_num_threads(1)  # as in a loader worker: one process, one core
    machine = f"{cpu_name()}, {os.cpu_count()} cores"
    temporary = None
    if args.root is None:
        temporary = tempfile.TemporaryDirectory(prefix="loader-benchmark-")
        root = Path(temporary.name)
    else:
        root = args.root
    try:
        train_per_class = -(-args.images // CLASSES)
        built = build_folder(root, train_per_class)
        print(f"machine: {machine}; torch {torch.__version__}, torchvision {torchvision.__version__}; one torch "
              f"thread per process")
        print(f"folder: {built['files']} JPEGs in {CLASSES} classes, quality {built['quality']}, mean "
              f"{built['mean_bytes']:,.0f} bytes per image (ImageNet: about {IMAGENET_MEAN_BYTES:,}); "
              f"{args.images // args.batch * args.batch} images per loader and round, batch {args.batch}, "
              f"{args.rounds} rounds")
        summary = measure(root, args)
    finally:
        if temporary is not None:
            temporary.cleanup()
    if save_to is not None:
        rates = summary["per_core"]
        atomic_write_json(save_to, {
            "schema": LOADER_SCHEMA, "kind": "loader", "machine": machine, "cpu": cpu_name(),
            "cores": os.cpu_count(), "image_size": SIZE, "decoder": "pil",
            "images_per_s_per_core": {"plain": rates[False], "autoaugment": rates[True]},
            "per_core_from_workers": summary["per_core_workers"], "mean_file_bytes": built["mean_bytes"],
            "batch": args.batch, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "command": "python benchmarks/loader.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "date": datetime.date.today().isoformat()})
        print(f"loader calibration written to {save_to}")
    return 0


def measure(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    batch, rounds, images, counts = args.batch, args.rounds, args.images, args.workers
    rows: dict[tuple[bool, int], list[Side]] = {}
    for autoaugment in (False, True):
        for workers in counts:
            rows[(autoaugment, workers)] = [Side("ours", ours(root, autoaugment, workers, batch)),
                                            Side("plain", plain(root, autoaugment, workers, batch))]
    # The second table: uint8 to the device against float32, without AutoAugment, with the most workers.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    uint8_rows = {workers: [Side("float32", ours(root, False, workers, batch, move=True)),
                            Side("uint8", ours(root, False, workers, batch, uint8=True, move=True))]
                  for workers in (max(counts),)}
    decoder_row = [Side("pil", ours(root, False, min(counts), batch)),
                   Side("torchvision", ours(root, False, min(counts), batch, decoder="torchvision"))]
    if torchcodec_missing() is None:
        decoder_row.append(Side("torchcodec", ours(root, False, min(counts), batch, decoder="torchcodec")))
    print("timing (each round: every row, both sides, a new loader each) ...", flush=True)
    run_rounds([*rows.values(), *uint8_rows.values(), decoder_row], rounds, images, batch)

    med = statistics.median
    print(f"\ntable 1: same work (float32 normalised batches of {batch}), median of {rounds} rounds; "
          "plain/ours from each round's pair, spread = min-max over the rounds")
    print(f"{'AutoAugment':11s} {'workers':>7s} | {'images/s: ours':>14s} {'plain':>7s} {'plain/ours':>10s} "
          f"{'spread':>10s} | {'images/CPU-s: ours':>18s} {'plain':>7s} {'plain/ours':>10s} {'spread':>10s} | "
          f"{'cores/GPU at 3k':>15s}")
    worst = 0.0
    for (autoaugment, workers), (mine, theirs) in rows.items():
        wall, cpu = paired(mine.wall, theirs.wall), paired(mine.cpu, theirs.cpu)
        worst = max(worst, med(wall))
        print(f"{'yes' if autoaugment else 'no':11s} {workers:>7d} | {med(mine.wall):>14.1f} {med(theirs.wall):>7.1f} "
              f"{med(wall):>10.3f} {spread(wall):>10s} | {med(mine.cpu):>18.1f} {med(theirs.cpu):>7.1f} "
              f"{med(cpu):>10.3f} {spread(cpu):>10s} | {GPU_IMAGES_PER_S / med(mine.cpu):>15.1f}")
    print(f"goal: plain/ours (images/s) at most 1.05 in every row; worst {worst:.3f}: "
          f"{'met' if worst <= 1.05 else 'MISSED'}. cores/GPU: {GPU_IMAGES_PER_S:,} images/s over ours' images "
          "per CPU-second (main process and workers)")

    print(f"\ntable 2: batches copied to the {device} as the engine does: uint8, normalised there (the engine's "
          "path on CUDA), against float32 normalised in the loader; no AutoAugment")
    print(f"{'workers':>7s} | {'images/s: float32':>17s} {'uint8':>7s} {'uint8/float32':>13s} {'spread':>10s} | "
          f"bytes per image copied: float32 {3 * SIZE * SIZE * 4:,}, uint8 {3 * SIZE * SIZE:,}")
    for workers, (as_float, as_uint8) in uint8_rows.items():
        ratios = paired(as_float.wall, as_uint8.wall)
        print(f"{workers:>7d} | {med(as_float.wall):>17.1f} {med(as_uint8.wall):>7.1f} {med(ratios):>13.3f} "
              f"{spread(ratios):>10s} |")
    if device == "cpu":
        print("(no GPU here: the main process normalises the uint8 batch on the CPU, the work a GPU would do)")

    files = sorted((root / "train").rglob("*.JPEG"))[:96]
    decoders = decode_rates(files, rounds)
    print(f"\ntable 3: decoders, {len(files)} files, decode only: images per CPU-second (nvJPEG: per second); "
          "median, spread")
    for name, rates in decoders.items():
        print(f"  {name:52s} {statistics.median(rates):>8.1f}  {spread(rates)}")
    if not torch.cuda.is_available():
        print("  nvJPEG: no GPU here (measured when CUDA is available)")
    if torchcodec_missing() is not None:
        print(f"  torchcodec: not measured, it does not load here ({torchcodec_missing()}); {TORCHCODEC_INSTALL}")
    pil_side, *other_sides = decoder_row
    for other in other_sides:
        ratios = paired(pil_side.wall, other.wall)
        print(f"  the suite's loader, {min(counts)} workers, no AutoAugment: data_decoder=pil {med(pil_side.wall):.1f}, "
              f"{other.name} {med(other.wall):.1f} images/s ({other.name}/pil {med(ratios):.3f}, {spread(ratios)})")

    # Images per CPU-second for the calibration: the row with one worker when measured (the batch goes
    # through shared memory as in training), else the one with the fewest.
    source = 1 if 1 in counts else min(counts)
    rates = {aa: med(rows[(aa, source)][0].cpu) for aa in (False, True)}
    for aa, rate in rates.items():
        print(f"ours {'with' if aa else 'without'} AutoAugment: {rate:.1f} images per CPU-second ({source} "
              f"workers): {GPU_IMAGES_PER_S / rate:.1f} cores per GPU at {GPU_IMAGES_PER_S:,} images/s")
    return {"per_core": rates, "per_core_workers": source}


if __name__ == "__main__":
    sys.exit(main())
