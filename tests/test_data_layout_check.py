"""The launcher refuses an ImageNet --data-root in the wrong layout before submitting anything.

Fake trees of empty *.JPEG files: the check only lists folders, it never reads an image.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conadv_repro.data.imagenet_layout import IMG_EXTENSIONS, check_imagenet_layout
from conadv_repro.errors import UserError
from conadv_repro.launch.plan import check_data_root
from tests.helpers import run_cli

CLASSES = ("n01440764", "n01443537", "n01484850")


def imagenet_tree(root: Path, train: tuple[str, ...] = CLASSES, val: tuple[str, ...] = CLASSES,
                  images: int = 2) -> Path:
    """ROOT/{train,val}/<wnid>/*.JPEG with `images` empty files per class."""
    for part, classes in (("train", train), ("val", val)):
        (root / part).mkdir(parents=True, exist_ok=True)
        for name in classes:
            (root / part / name).mkdir()
            for i in range(images):
                (root / part / name / f"{name}_{i}.JPEG").touch()
    return root


def refusal(root: Path) -> str:
    with pytest.raises(UserError) as caught:
        check_imagenet_layout(root)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_the_extensions_are_torchvisions():
    # A copy, so that the launcher starts without importing torch; ImageFolder is what the runs load with.
    from torchvision.datasets.folder import IMG_EXTENSIONS as TORCHVISION

    assert tuple(IMG_EXTENSIONS) == tuple(TORCHVISION)


def test_a_good_tree_passes(tmp_path):
    root = imagenet_tree(tmp_path / "imagenet")
    (root / "val" / CLASSES[0] / "a.png").touch()  # any extension ImageFolder takes, in any case
    (root / "train" / "README.txt").touch()  # a stray file beside the class folders is ignored, as by ImageFolder
    check_imagenet_layout(root)
    check_data_root("paper", str(root))


def test_an_image_only_in_a_subfolder_of_a_class_counts(tmp_path):
    # ImageFolder walks each class folder, so an image one level down is an image of that class.
    root = imagenet_tree(tmp_path / "imagenet")
    first = root / "train" / CLASSES[0]
    for image in first.iterdir():
        image.unlink()
    (first / "part1").mkdir()
    (first / "part1" / "x.JPEG").touch()
    check_imagenet_layout(root)


def test_a_flat_val_is_refused_with_how_to_sort_it(tmp_path):
    root = imagenet_tree(tmp_path / "imagenet", val=())
    for i in range(1, 6):
        (root / "val" / f"ILSVRC2012_val_{i:08d}.JPEG").touch()
    message = refusal(root)
    assert f"{root / 'val'} holds 5 images directly and no class folders" in message
    assert "expected DIR/val/<wnid>/*.JPEG" in message
    assert "valprep.sh" in message and "ground truth" in message


def test_images_beside_the_class_folders_are_refused(tmp_path):
    # A valprep.sh stopped half-way: ImageFolder would leave the loose images out of the split without a word.
    root = imagenet_tree(tmp_path / "imagenet")
    (root / "val" / "ILSVRC2012_val_00000001.JPEG").touch()
    message = refusal(root)
    assert f"{root / 'val'} holds 1 image directly beside its 3 class folders" in message
    assert "valprep.sh" in message


def test_a_class_only_in_train_is_refused_naming_it(tmp_path):
    root = imagenet_tree(tmp_path / "imagenet", train=(*CLASSES, "n09999999"))
    message = refusal(root)
    assert "train/ and val/ hold different classes: 1 only in train/ (n09999999)" in message
    assert "only in val/" not in message and "expected the same <wnid> folders in both" in message


def test_many_differing_classes_are_counted_and_a_few_named(tmp_path):
    extra = tuple(f"n0900000{i}" for i in range(5))
    root = imagenet_tree(tmp_path / "imagenet", val=(*CLASSES, *extra), images=0)
    message = refusal(root)
    assert "5 only in val/ (n09000000, n09000001, n09000002, ... (5 in all))" in message


def test_an_empty_class_is_refused_naming_it(tmp_path):
    root = imagenet_tree(tmp_path / "imagenet")
    for image in (root / "val" / CLASSES[1]).iterdir():
        image.unlink()
    (root / "val" / CLASSES[1] / "notes.txt").touch()  # not an image
    message = refusal(root)
    assert f"1 class folder holds no image (val/{CLASSES[1]}); expected at least one image (.jpg," in message


def test_missing_train_is_refused(tmp_path):
    root = tmp_path / "imagenet"
    (root / "val").mkdir(parents=True)
    assert refusal(root) == (f"--data-root {root} holds no ImageNet (train/ missing); "
                             "expected DIR/train/<wnid>/ and DIR/val/<wnid>/")


def test_a_file_instead_of_a_folder_is_refused(tmp_path):
    root = imagenet_tree(tmp_path / "imagenet", train=())
    (root / "train").rmdir()
    (root / "train").write_text("")
    assert f"({root / 'train'} is a file, not a folder)" in refusal(root)
    assert "is a file, not a folder" in refusal(root / "train")
    # A class "folder" that is a file is no class: val/ then holds one class fewer than train/.
    root = imagenet_tree(tmp_path / "other")
    for image in (root / "val" / CLASSES[2]).iterdir():
        image.unlink()
    (root / "val" / CLASSES[2]).rmdir()
    (root / "val" / CLASSES[2]).touch()
    assert f"1 only in train/ ({CLASSES[2]})" in refusal(root)


def test_a_train_of_tar_files_is_refused_with_how_to_extract_it(tmp_path):
    root = imagenet_tree(tmp_path / "imagenet", train=())
    (root / "train" / f"{CLASSES[0]}.tar").touch()
    message = refusal(root)
    assert "holds 1 .tar files and no class folders" in message and "extract each <wnid>.tar" in message


def test_cifar10s_check_is_unchanged(tmp_path):
    with pytest.raises(UserError, match=r"holds no CIFAR-10 \(cifar-10-batches-py/ missing\)"):
        check_data_root("cifar10", str(tmp_path))
    (tmp_path / "cifar-10-batches-py").mkdir()
    check_data_root("cifar10", str(tmp_path))


def test_the_launcher_refuses_a_flat_val_in_one_line(tmp_path, cli_env):
    root = imagenet_tree(tmp_path / "imagenet", val=())
    (root / "val" / "ILSVRC2012_val_00000001.JPEG").touch()
    runs = tmp_path / "runs"
    out = run_cli(["-m", "conadv_repro.launch", "table1", "--scale", "paper", "--data-root", str(root), "--dry-run",
                   "--runs-dir", str(runs), "--cluster", "local"], cli_env, tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --data-root "), out.stderr
    assert "no class folders" in lines[0] and "valprep.sh" in lines[0] and "Traceback" not in out.stderr
    assert not runs.exists()
