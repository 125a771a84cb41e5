"""Datasets, transforms and loaders: fixed splits, keyed augmentation, clear errors. No network."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conadv_repro.data.datasets import (
    DATASETS,
    DataBundle,
    build_data,
    fixed_split,
    make_bundle,
)
from conadv_repro.data.loader import MicroBatch, eval_batches, train_micro_batches
from conadv_repro.data.sampler import BatchPlan, MicroBatchKey
from conadv_repro.data.sources import TensorImages
from conadv_repro.data.transforms import digits_preset
from conadv_repro.errors import UserError


def _all(dataset: torch.utils.data.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = zip(*eval_batches(dataset, 512), strict=True)
    return torch.cat(inputs), torch.cat(targets)


def _by_index(batches: list[MicroBatch]) -> dict[tuple[int, int], torch.Tensor]:
    """(epoch, global index) -> image, over all micro-batches."""
    return {
        (batch.key.epoch, int(i)): image
        for batch in batches
        for i, image in zip(batch.indices, batch.inputs, strict=True)
    }


def test_digits_splits_are_fixed_and_disjoint() -> None:
    test, val, train = fixed_split(1797, (360, 180))
    assert (len(train), len(val), len(test)) == (1257, 180, 360)
    assert len(set(train) | set(val) | set(test)) == 1797
    # Pinned: numpy keeps RandomState(0) stable, and a changed split would change every training set.
    assert (test[:5].tolist(), int(test.sum())) == ([4, 5, 6, 9, 14], 310906)
    assert (val[:5].tolist(), int(val.sum())) == ([1, 2, 22, 27, 42], 156358)

    bundle = build_data("digits")
    assert (bundle.num_train, len(bundle.train), len(bundle.val), len(bundle.test)) == (1257, 1257, 180, 360)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 1, 16)
    assert bundle.train_in_memory and len(DATASETS) >= 3
    other_seed = build_data("digits", seed=5)
    for split in ("train_eval", "val", "test"):
        a, b = _all(getattr(bundle, split)), _all(getattr(other_seed, split))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_digits_read_from_the_shipped_file_are_load_digits(monkeypatch) -> None:
    from sklearn.datasets import load_digits

    from conadv_repro.data import datasets

    images, labels = datasets._digits_arrays()
    raw = load_digits()
    assert np.array_equal(images, raw.images) and np.array_equal(labels, raw.target)
    # Without the file (another scikit-learn layout), load_digits itself.
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: None)
    images, labels = datasets._digits_arrays()
    assert np.array_equal(images, raw.images) and np.array_equal(labels, raw.target)


def test_a_digits_run_imports_neither_torchvision_nor_sklearn(tmp_path: Path) -> None:
    # Each costs about 3 s of a fresh process (smoke jobs, ranks, attack workers); AutoAugment still loads it.
    import subprocess

    code = ("import sys\n"
            "from conadv_repro.config import config_from_overrides\n"
            "from conadv_repro.engine.run import run_training\n"
            "cfg = config_from_overrides(['steps=2', 'model.width=4', 'runtime.device=cpu', 'method=conadv'])\n"
            f"run_training(cfg, {str(tmp_path / 'run')!r}, log=lambda m: None)\n"
            "print(sorted(m for m in ('torchvision', 'sklearn') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "WANDB_MODE": "disabled"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_digits_shapes_and_normalisation() -> None:
    bundle = build_data("digits")
    image, label, index = bundle.train[(7, 0, 0, 0)]
    assert image.shape == (1, 16, 16) and image.dtype == torch.float32
    assert isinstance(label, int) and index == 7
    inputs, targets = _all(bundle.train_eval)
    assert inputs.shape == (1257, 1, 16, 16) and set(targets.tolist()) == set(range(10))
    assert abs(float(inputs.mean())) < 1e-4 and abs(float(inputs.std()) - 1) < 1e-3
    low, high = bundle.input_range()
    assert float(inputs.min()) >= float(low) - 1e-5 and float(inputs.max()) <= float(high) + 1e-5
    for size in (8, 28):
        other = build_data("digits", image_size=size)
        assert other.test[0][0].shape == (1, size, size)


def test_fast_path_equals_per_item_path() -> None:
    bundle = build_data("digits", seed=3)
    plan = BatchPlan(bundle.num_train, 64, seed=3)
    batches = list(train_micro_batches(bundle, plan, start_step=0, end_step=2, micro_size=32))
    assert [b.key for b in batches][:2] == [MicroBatchKey(0, 0, 0), MicroBatchKey(0, 1, 0)]
    for batch in batches:
        items = [
            bundle.train[(int(i), batch.key.epoch, batch.key.step, batch.key.micro)] for i in batch.indices
        ]
        assert torch.equal(batch.inputs, torch.stack([item[0] for item in items]))
        assert batch.targets.tolist() == [item[1] for item in items]
    moved = batches[0].to("cpu", channels_last=True)
    assert moved.inputs.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(moved.inputs, batches[0].inputs)


def test_autoaugment_is_keyed_per_example() -> None:
    bundle = build_data("digits", autoaugment=True, seed=7)
    plan = BatchPlan(bundle.num_train, 24, seed=7)  # 52 steps per epoch; steps 51..53 cross into epoch 1

    def load(b: DataBundle, micro_size: int, workers: int) -> dict[tuple[int, int], torch.Tensor]:
        return _by_index(
            list(
                train_micro_batches(
                    b, plan, start_step=51, end_step=53, micro_size=micro_size, workers=workers
                )
            )
        )

    torch.manual_seed(99)
    expected_draw = torch.rand(3)
    torch.manual_seed(99)
    reference = load(bundle, 24, 0)
    assert torch.equal(torch.rand(3), expected_draw)  # the caller's RNG is untouched
    assert len(reference) == 48 and {epoch for epoch, _ in reference} == {0, 1}
    for other in (
        load(bundle, 4, 0),
        load(bundle, 8, 2),
        load(build_data("digits", autoaugment=True, seed=7), 12, 0),
    ):
        assert other.keys() == reference.keys()
        assert all(torch.equal(other[key], reference[key]) for key in reference)
    clean = build_data("digits", seed=7)
    indices = range(40)
    epoch0 = [bundle.train[(i, 0, 0, 0)][0] for i in indices]
    epoch1 = [bundle.train[(i, 1, 0, 0)][0] for i in indices]
    assert any(not torch.equal(a, b) for a, b in zip(epoch0, epoch1, strict=True))
    assert any(not torch.equal(a, clean.train[(i, 0, 0, 0)][0]) for i, a in zip(indices, epoch0, strict=True))
    assert all(torch.equal(a, bundle.train[(i, 0, 5, 1)][0]) for i, a in zip(indices, epoch0, strict=True))
    other_seed = build_data("digits", autoaugment=True, seed=8)
    assert any(
        not torch.equal(a, other_seed.train[(i, 0, 0, 0)][0]) for i, a in zip(indices, epoch0, strict=True)
    )


def test_lookahead_of_loader_matches_next() -> None:
    bundle = build_data("digits")
    plan = BatchPlan(bundle.num_train, 600, seed=0)  # 2 steps per epoch
    ahead = train_micro_batches(bundle, plan, start_step=1, end_step=3, micro_size=300)
    peeked = ahead.peek(2)
    assert peeked is not None and peeked.key == MicroBatchKey(step=2, micro=0, epoch=1)
    assert [next(ahead).key.step for _ in range(2)] == [1, 1]
    assert next(ahead) is peeked
    with pytest.raises(UserError, match="1000 examples"):
        train_micro_batches(bundle, BatchPlan(1000, 10, 0), start_step=0, end_step=1, micro_size=10)


def test_eval_batches_are_in_order() -> None:
    bundle = build_data("digits")
    batches = eval_batches(bundle.test, 100)
    assert len(batches) == 4 and [len(t) for _, t in batches] == [100, 100, 100, 60]
    targets = torch.cat([t for _, t in batches])
    assert targets.tolist() == [bundle.test[i][1] for i in range(360)]


def test_bad_names_and_paths_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown dataset 'foo'; allowed: digits, cifar10, imagenet"):
        build_data("foo")
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match="cifar10.*nowhere.*download=True"):
        build_data("cifar10", root=str(missing))
    with pytest.raises(UserError, match="cifar10 needs root"):
        build_data("cifar10")
    with pytest.raises(UserError, match="data_root=.*nowhere holds no ImageNet .*DIR/train/<wnid>"):
        build_data("imagenet", root=str(missing))
    with pytest.raises(UserError, match="data=imagenet needs data_root=DIR") as no_root:
        build_data("imagenet")
    assert "ROOT" not in str(no_root.value)  # no placeholder to fill in: the message says what is missing
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir()
    with pytest.raises(UserError, match="data_root=.*empty: .*train holds no class folders"):
        build_data("imagenet", root=str(tmp_path / "empty"))
    with pytest.raises(UserError, match="image_size -1"):
        build_data("digits", image_size=-1)
    with pytest.raises(UserError, match="no_such_module"):
        build_data("no_such_module:build")


def _write_images(folder: Path, count: int, rng: np.random.RandomState) -> None:
    folder.mkdir(parents=True)
    for n in range(count):
        pixels = rng.randint(0, 256, size=(20 + n, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{n}.png")


def test_tiny_imagenet_tree(tmp_path: Path) -> None:
    rng = np.random.RandomState(0)
    for wnid in ("n001", "n002"):
        _write_images(tmp_path / "train" / wnid, 12, rng)
        _write_images(tmp_path / "val" / wnid, 2, rng)
    bundle = build_data("imagenet", root=str(tmp_path), image_size=32, autoaugment=True, seed=1)
    assert (bundle.num_train, len(bundle.val), len(bundle.test), bundle.num_classes) == (18, 6, 4, 2)
    assert not bundle.train_in_memory and bundle.in_channels == 3
    plan = BatchPlan(bundle.num_train, 4, seed=1)
    batches = list(train_micro_batches(bundle, plan, start_step=0, end_step=2, micro_size=2))
    assert len(batches) == 4 and batches[0].inputs.shape == (2, 3, 32, 32)
    again = list(train_micro_batches(bundle, plan, start_step=1, end_step=2, micro_size=4))
    assert torch.equal(again[0].inputs, torch.cat([b.inputs for b in batches[2:]]))
    inputs, targets = next(iter(eval_batches(bundle.test, 4)))
    assert inputs.shape == (4, 3, 32, 32) and targets.tolist() == [0, 0, 1, 1]
    with pytest.raises(UserError, match="n002.*has 2 training images"):
        for n in range(10):
            (tmp_path / "train" / "n002" / f"img{n}.png").unlink()
        build_data("imagenet", root=str(tmp_path))


def test_cifar10_split_with_a_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeCIFAR10:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            assert not download
            n = 5100 if train else 30
            self.data = np.random.RandomState(int(train)).randint(0, 256, (n, 32, 32, 3), dtype=np.uint8)
            self.targets = [i % 10 for i in range(n)]

    import torchvision.datasets  # here, not at the top: collecting would import torchvision in every worker

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    bundle = build_data("cifar10", root="/anywhere", seed=2)
    assert (bundle.num_train, len(bundle.val), len(bundle.test), bundle.image_size) == (100, 5000, 30, 32)
    image, label, index = bundle.train[(3, 0, 0, 0)]
    assert image.shape == (3, 32, 32) and index == 3
    assert torch.equal(image, bundle.train[(3, 0, 9, 2)][0])
    assert not torch.equal(
        torch.stack([bundle.train[(i, 0, 0, 0)][0] for i in range(10)]),
        torch.stack([bundle.train[(i, 1, 0, 0)][0] for i in range(10)]),
    )
    with pytest.raises(UserError, match="image_size 64"):
        build_data("cifar10", root="/anywhere", image_size=64)


def build_fake(root: str, image_size: int, *, seed: int = 0) -> DataBundle:
    size = image_size or 8
    images = (
        torch.arange(40 * size * size, dtype=torch.int64)
        .remainder(256)
        .to(torch.uint8)
        .view(40, 1, size, size)
    )
    labels = torch.arange(40) % 4
    split = TensorImages(images, labels)
    mean, std = (0.5,), (0.25,)
    return make_bundle(
        "fake", train=split, val=split, test=split, transforms=digits_preset(mean, std), num_classes=4,
        image_size=size, mean=mean, std=std, seed=seed,
    )  # fmt: skip


def test_dataset_by_import_path(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("fake_user_data")
    module.build_fake = build_fake  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_user_data", module)
    bundle = build_data("fake_user_data:build_fake", image_size=4, seed=3)
    assert (bundle.name, bundle.num_train, bundle.image_size, bundle.seed) == ("fake", 40, 4, 3)
    batch = next(train_micro_batches(bundle, BatchPlan(40, 8, 3), start_step=0, end_step=1, micro_size=8))
    assert batch.inputs.shape == (8, 1, 4, 4)
    with pytest.raises(UserError, match="fake_user_data:build_fake.*autoaugment"):
        build_data("fake_user_data:build_fake", autoaugment=True)
    with pytest.raises(UserError, match="fake_user_data:missing"):
        build_data("fake_user_data:missing")


def test_imagenet_holdout_keeps_the_papers_steps_per_epoch():
    from conadv_repro.data.datasets import IMAGENET_VAL_PER_CLASS

    full = 1_281_167
    ours = full - 1000 * IMAGENET_VAL_PER_CLASS
    for k in (4, 8, 16, 32, 64, 96):
        batch = k * 1024
        assert ours // batch == full // batch, k
