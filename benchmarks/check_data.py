"""How fast `--check-data` checks ImageNet's files: files/s on this machine, extrapolated to ImageNet.

Goal: ImageNet's 1,281,167 training + 50,000 validation files in at most 10 minutes on 8 cores.

This script makes a folder in ImageNet's layout (per class 1,200 train/ and 50 val/ files, about ImageNet's
1,281 and 50) of `--files` real JPEGs of ImageNet-like size: a few dozen distinct random-noise JPEGs of
random shapes at quality 90, about 110 KB on average as ImageNet's are, each written again as every
file (own bytes on disk, no links: the check reads only each file's first and last 4 KiB, but where
those pages lie on the disk matters). Then it times, on `--processes` processes (default: every core
this process may use):

- cold: the first check, after the files' pages were synced and dropped from the page cache
  (POSIX_FADV_DONTNEED on each file; no root needed). The folders' and inodes' caches stay warm, and on a
  virtual machine the host may still cache the disk: a lower bound of a cold disk's time;
- warm: the same check again, every page cached;
- one process, warm: how the check scales with processes;
- relaunch: the remembered clean result, i.e. listing and stat-ing every file, reading none.

and extrapolates each to ImageNet's 1,331,167 files on 8 cores, assuming the time is linear in files
and, per process, in cores (true while the storage serves 8 processes' reads as fast as it serves these;
a network filesystem or a disk may not).

    python benchmarks/check_data.py [--files 20000] [--processes N] [--dir FOLDER] [--keep]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from conadv_repro.data.check_files import check_image_files, processes_available

IMAGENET_FILES = 1_281_167 + 50_000
GOAL_S = 600
CORES = 8
TRAIN_PER_CLASS, VAL_PER_CLASS = 1200, 50


def distinct_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """Random-noise JPEGs of ImageNet's typical shapes (a side of about 300-500 px), about 110 KB each."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        width, height = int(rng.integers(280, 460)), int(rng.integers(240, 400))
        pixels = (rng.random((height, width, 3)) * 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def make_tree(root: Path, files: int) -> tuple[int, int]:
    """ROOT/{train,val}/<wnid>/*.JPEG, ImageNet's proportions; (files, bytes) written."""
    images = distinct_jpegs(48)
    classes = max(2, round(files / (TRAIN_PER_CLASS + VAL_PER_CLASS)))
    written = total = 0
    for c in range(classes):
        wnid = f"n{c:08d}"
        for part, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
            folder = root / part / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                data = images[written % len(images)]
                (folder / f"{wnid}_{i}.JPEG").write_bytes(data)
                written += 1
                total += len(data)
    return written, total


def drop_from_page_cache(root: Path) -> None:
    os.sync()  # dirty pages cannot be dropped: write them first
    for folder, _, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def line(what: str, files: int, seconds: float, processes: int) -> str:
    """The measured rate, ImageNet's time on 8 cores (linear in cores), and at this rate with no more cores."""
    rate = files / seconds
    eight = IMAGENET_FILES / (rate * CORES / processes)
    verdict = "within" if eight <= GOAL_S else "OVER"
    return (f"{what:24s} {rate:9,.0f} files/s on {processes} process{'es' if processes > 1 else ''} "
            f"({seconds:6.2f} s) -> ImageNet's {IMAGENET_FILES:,} files on {CORES} cores: {eight / 60:4.1f} min "
            f"({eight:,.0f} s; {verdict} the {GOAL_S // 60}-minute goal); at this rate, no more cores: "
            f"{IMAGENET_FILES / rate / 60:.1f} min")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=0, help="default: every core this process may use")
    parser.add_argument("--dir", type=Path, default=None, help="where to make the folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the folder")
    args = parser.parse_args()
    processes = args.processes or processes_available()
    base = Path(tempfile.mkdtemp(prefix="check-data-", dir=args.dir))
    try:
        root, cache = base / "imagenet", base / "cache"
        files, size = make_tree(root, args.files)
        print(f"{files:,} JPEGs, {size / files / 1000:.0f} kB on average ({size / 2**30:.1f} GiB) in {root}; "
              f"{cpu_name()}, {processes_available()} cores available")
        drop_from_page_cache(root)
        cold = check_image_files(root, processes=processes, use_cache=False)
        warm = check_image_files(root, processes=processes, use_cache=False)
        single = check_image_files(root, processes=1, use_cache=False)
        check_image_files(root, processes=processes, cache_dir=cache)  # remembers the clean result
        relaunch = check_image_files(root, processes=processes, cache_dir=cache)
        assert cold.files == files and not cold.problems and relaunch.remembered, "the check is broken"
        print(line("cold page cache", files, cold.seconds, processes))
        print(line("warm page cache", files, warm.seconds, processes))
        print(line("warm, one process", files, single.seconds, 1))
        print(line("relaunch (list + stat)", files, relaunch.seconds, processes))
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
