"""Paired views (three-way BatchNorm): the AutoAugment image as unpaired, plus the same crop without it."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conadv_repro.data.datasets import DataBundle, build_data, make_bundle
from conadv_repro.data.loader import MicroBatch, train_micro_batches
from conadv_repro.data.sampler import BatchPlan, MicroBatchKey
from conadv_repro.data.sources import TensorImages
from conadv_repro.data.transforms import digits_preset
from conadv_repro.errors import UserError


def _load(
    bundle: DataBundle, batch: int, steps: tuple[int, int], micro: int, workers: int = 0
) -> list[MicroBatch]:
    plan = BatchPlan(bundle.num_train, batch, seed=bundle.seed)
    return list(
        train_micro_batches(
            bundle, plan, start_step=steps[0], end_step=steps[1], micro_size=micro, workers=workers
        )
    )


def _items(bundle: DataBundle, batches: list[MicroBatch]) -> torch.Tensor:
    """The train set's images under the micro-batches' keys, one by one (no loader, no fast path)."""
    return torch.stack(
        [bundle.train[(int(i), b.key.epoch, b.key.step, b.key.micro)][0] for b in batches for i in b.indices]
    )


def _assert_same(a: list[MicroBatch], b: list[MicroBatch], *, originals: bool) -> None:
    assert [x.key for x in a] == [y.key for y in b]
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.indices, y.indices) and torch.equal(x.targets, y.targets)
        assert torch.equal(x.inputs, y.inputs)
        if originals:
            assert x.originals is not None and y.originals is not None
            assert torch.equal(x.originals, y.originals)


def test_paired_digits_views_and_workers() -> None:
    paired = build_data("digits", autoaugment=True, seed=7, paired=True)
    assert paired.paired and not build_data("digits", autoaugment=True, seed=7).paired
    # 52 steps per epoch at batch 24: steps 51..53 cross into epoch 1.
    batches = _load(paired, 24, (51, 53), 12)
    unpaired = _load(build_data("digits", autoaugment=True, seed=7), 24, (51, 53), 12)
    _assert_same(batches, unpaired, originals=False)
    assert all(b.originals is None for b in unpaired)
    assert {b.key.epoch for b in batches} == {0, 1}

    originals = torch.cat([b.originals for b in batches if b.originals is not None])
    inputs = torch.cat([b.inputs for b in batches])
    assert originals.shape == inputs.shape and originals.dtype == torch.float32
    # Digits have no geometric augmentation: the original is the plain, un-augmented image.
    assert torch.equal(originals, _items(build_data("digits", seed=7), batches))
    assert not torch.equal(originals, inputs)

    # Items agree with the loader, and other workers / micro-batch sizes give the same tensors.
    item = paired.train[(int(batches[0].indices[0]), 0, 51, 0)]
    assert len(item) == 4 and torch.equal(item[0], batches[0].inputs[0])
    assert batches[0].originals is not None and torch.equal(item[3], batches[0].originals[0])
    _assert_same(_load(paired, 24, (51, 53), 12, workers=2), batches, originals=True)
    merged = _load(paired, 24, (51, 53), 24)
    assert torch.equal(torch.cat([b.inputs for b in merged]), inputs)
    assert torch.equal(torch.cat([b.originals for b in merged if b.originals is not None]), originals)


def test_micro_batch_moves_originals() -> None:
    images = torch.randn(2, 3, 4, 4)
    plain = MicroBatch(MicroBatchKey(0, 0, 0), images, torch.zeros(2, dtype=torch.int64), torch.arange(2))
    assert plain.originals is None and plain.to("cpu").originals is None
    paired = MicroBatch(plain.key, images, plain.targets, plain.indices, originals=images + 1)
    moved = paired.to("cpu", channels_last=True)
    assert moved.originals is not None and moved.originals.is_contiguous(memory_format=torch.channels_last)
    assert moved.inputs.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(moved.originals, images + 1)


def _tree(root: Path) -> None:
    rng = np.random.RandomState(0)
    for part, count in (("train", 6), ("val", 1)):
        for wnid in ("n001", "n002"):
            folder = root / part / wnid
            folder.mkdir(parents=True)
            for n in range(count):
                pixels = rng.randint(0, 256, size=(20 + n, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"img{n}.png")


def test_paired_imagenet_tree_shares_the_crop(tmp_path: Path) -> None:
    _tree(tmp_path)

    def bundle(autoaugment: bool, paired: bool = False) -> DataBundle:
        return build_data(
            "imagenet", root=str(tmp_path), image_size=16, autoaugment=autoaugment, seed=3, paired=paired
        )

    paired = bundle(True, paired=True)
    assert paired.num_train == 6 and paired.paired
    # Batch 2 over 6 images: steps 2..4 cross into epoch 1.
    batches = _load(paired, 2, (2, 4), 1)
    assert batches[0].inputs.shape == (1, 3, 16, 16)
    assert {b.key.epoch for b in batches} == {0, 1}
    _assert_same(batches, _load(bundle(True), 2, (2, 4), 1), originals=False)
    # The originals are the geometric-only pipeline's images under the same keys (same crop and flip).
    originals = torch.cat([b.originals for b in batches if b.originals is not None])
    assert torch.equal(originals, _items(bundle(False), batches))
    assert not torch.equal(originals, torch.cat([b.inputs for b in batches]))
    _assert_same(_load(paired, 2, (2, 4), 2, workers=2), _load(paired, 2, (2, 4), 2), originals=True)


def test_paired_needs_autoaugment_and_a_pairable_builder(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="paired views need autoaugment=true"):
        build_data("digits", paired=True)

    def build(
        root: str, image_size: int, *, autoaugment: bool = False, seed: int = 0, honour: bool
    ) -> DataBundle:
        images = torch.arange(20 * 64).remainder(256).to(torch.uint8).view(20, 1, 8, 8)
        split = TensorImages(images, torch.arange(20) % 2)
        mean, std = (0.5,), (0.25,)
        return make_bundle(
            "fake", train=split, val=split, test=split, num_classes=2, image_size=8, mean=mean, std=std,
            transforms=digits_preset(mean, std, autoaugment=autoaugment and honour), seed=seed,
        )  # fmt: skip

    module = types.ModuleType("fake_paired_data")
    module.honours = lambda root, image_size, **kw: build(root, image_size, honour=True, **kw)  # type: ignore[attr-defined]
    module.ignores = lambda root, image_size, **kw: build(root, image_size, honour=False, **kw)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_paired_data", module)
    with pytest.raises(UserError, match="fake_paired_data:ignores.*cannot give paired views"):
        build_data("fake_paired_data:ignores", autoaugment=True, paired=True)
    user = build_data("fake_paired_data:honours", autoaugment=True, seed=1, paired=True)
    batch = _load(user, 10, (0, 1), 10)[0]
    assert user.paired and batch.originals is not None and batch.originals.shape == (10, 1, 8, 8)
    plain = build_data("fake_paired_data:honours", seed=1)
    assert torch.equal(batch.originals, _items(plain, [batch]))
