"""Is an ImageNet data root in the class-folder layout the runs load? Checked by the launcher before anything
is submitted (`--data-root`), and by a run before it builds its dataset (`data_root=`).

`--scale paper` submits 28 jobs for Table 1 alone; each opens ROOT/train and ROOT/val with torchvision's
ImageFolder when it starts. A root in the wrong layout (most often ImageNet's raw validation set, 50,000
JPEGs directly in val/) would make every one of them fail with "Couldn't find any class folder", after
waiting in the queue. So the launcher refuses it here, once, with one line saying what to fix.

It costs directory listings, never a read of an image: each of train/ and val/ is listed once, and each
class folder is listed only up to its first image, so a real ImageNet (2 x 1,000 class folders,
1.33M files) is checked in a moment. No torch import: the launcher starts without one. Messages name the
option the user typed (`flag`).
"""

from __future__ import annotations

import os
from pathlib import Path

from conadv_repro.errors import UserError

# torchvision.datasets.folder.IMG_EXTENSIONS, the extensions ImageFolder (conadv_repro.data.datasets.
# build_imagenet) accepts, compared lowercased as it does. A copy, so that the launcher need not import
# torch; tests/test_data_layout_check.py keeps it equal to torchvision's.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

PARTS = ("train", "val")
EXPECTED = "DIR/train/<wnid>/ and DIR/val/<wnid>/"
SHOWN = 3  # names listed in a message; the count says how many there are in all

VAL_HINT = ("sort them into one folder per class first, e.g. with valprep.sh from the PyTorch ImageNet "
            "example, or from the devkit's validation ground truth")
TRAIN_HINT = "extract each <wnid>.tar into its own folder train/<wnid>/ first"


def _named(flag: str, root: Path) -> str:
    """The root as the user gave it: `--data-root D` to the launcher, `data_root=D` in a config."""
    return f"{flag} {root}" if flag.startswith("--") else f"{flag}={root}"


def is_image(name: str) -> bool:
    """Whether ImageFolder would take a file of this name as an image."""
    return name.lower().endswith(IMG_EXTENSIONS)


def _listing(folder: Path, flag: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as error:
        raise UserError(f"{flag}: cannot list {folder} ({error.strerror or error})") from None


def _is_dir(entry: os.DirEntry[str]) -> bool:
    # Follows symlinks, as ImageFolder's find_classes does: a class folder may be a link into another disk.
    try:
        return entry.is_dir()
    except OSError:
        return False


def _some(names: list[str]) -> str:
    # The first few names: with 1,000 classes a full list would not be one readable line.
    more = f", ... ({len(names)} in all)" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def has_image(folder: Path) -> bool:
    """Whether `folder` holds at least one image, stopping at the first one found.

    ImageFolder also takes images from sub-folders of a class folder (it walks it, following links), so
    those are looked into too, but only when the class folder itself holds none: in the usual layout a
    class folder is listed only up to its first image."""
    pending = [folder]
    while pending:
        below = []
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if _is_dir(entry):
                        below.append(Path(entry.path))
                    elif is_image(entry.name):
                        return True
        except OSError:
            continue  # an unreadable folder holds no image ImageFolder could load
        pending.extend(below)
    return False


def class_folders(root: Path, part: str, flag: str = "--data-root") -> list[str]:
    """The sorted class folders of ROOT/PART, or the UserError saying what the folder holds instead."""
    folder = root / part
    entries = _listing(folder, flag)
    classes = sorted(entry.name for entry in entries if _is_dir(entry))
    images = sum(1 for entry in entries if is_image(entry.name))
    if classes and images:
        # ImageFolder reads class folders only: these images would leave the split without a word (a
        # valprep.sh stopped half-way looks like this).
        raise UserError(f"{_named(flag, root)}: {folder} holds {images:,} image{'s' if images != 1 else ''} "
                        f"directly beside its {len(classes):,} class folders, which ImageFolder would leave out; "
                        "expected every image in "
                        f"DIR/{part}/<wnid>/" + (f": {VAL_HINT}" if part == "val" else ""))
    if classes:
        return classes
    tars = sum(1 for entry in entries if entry.name.lower().endswith(".tar"))
    if part == "val" and images:
        # ImageNet's raw validation set: the one mistake that is almost always made, so say how to fix it.
        raise UserError(f"{_named(flag, root)}: {folder} holds {images:,} images directly and no class folders "
                        f"(ImageNet's raw validation layout); expected DIR/val/<wnid>/*.JPEG: {VAL_HINT}")
    if part == "train" and tars:
        raise UserError(f"{_named(flag, root)}: {folder} holds {tars:,} .tar files and no class folders; "
                        f"expected DIR/train/<wnid>/*.JPEG: {TRAIN_HINT}")
    what = f"{images:,} images directly and no class folders" if images else "no class folders"
    raise UserError(f"{_named(flag, root)}: {folder} holds {what}; expected DIR/{part}/<wnid>/*.JPEG")


def check_imagenet_layout(data_root: str | Path, flag: str = "--data-root") -> None:
    """Refuse a `--data-root` that ImageFolder could not load as ROOT/train/<wnid>/ and ROOT/val/<wnid>/.

    Checked in order, each a one-line UserError naming the path and what is expected: train/ and val/
    are folders; each holds class folders (a flat val/ gets how to sort it); both hold the same classes;
    every class folder holds at least one image (an extension of IMG_EXTENSIONS)."""
    root = Path(data_root)
    if root.exists() and not root.is_dir():
        raise UserError(f"{_named(flag, root)} is a file, not a folder; expected {EXPECTED}")
    files = [part for part in PARTS if (root / part).exists() and not (root / part).is_dir()]
    if files:
        raise UserError(f"{_named(flag, root)} holds no ImageNet ({', '.join(str(root / f) for f in files)} "
                        f"is a file, not a folder); expected {EXPECTED}")
    missing = [part for part in PARTS if not (root / part).is_dir()]
    if missing:
        # The wording the launcher has always used for a wrong path (tests and docs/bad-input.md quote it).
        raise UserError(f"{_named(flag, root)} holds no ImageNet ({', '.join(m + '/' for m in missing)} missing); "
                        f"expected {EXPECTED}")

    train, val = (class_folders(root, part, flag) for part in PARTS)
    if train != val:
        # ImageFolder numbers classes in sorted order, so two different sets would mislabel every image.
        only_train = sorted(set(train) - set(val))
        only_val = sorted(set(val) - set(train))
        differ = [f"{len(names)} only in {part}/ ({_some(names)})"
                  for part, names in (("train", only_train), ("val", only_val)) if names]
        raise UserError(f"{_named(flag, root)}: train/ and val/ hold different classes: {'; '.join(differ)}; "
                        "expected the same <wnid> folders in both")

    # train/ first, then val/, each in sorted order: the first empty classes named are the ones a sorted
    # listing of the tree shows first.
    empty = [f"{part}/{name}" for part in PARTS for name in train if not has_image(root / part / name)]
    if empty:
        raise UserError(f"{_named(flag, root)}: {len(empty)} class folder{'s' if len(empty) > 1 else ''} "
                        f"hold{'' if len(empty) > 1 else 's'} no image ({_some(empty)}); expected at least one "
                        f"image ({', '.join(IMG_EXTENSIONS)}) in each")
