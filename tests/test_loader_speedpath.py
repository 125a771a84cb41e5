"""ImageNet input at speed, with the same numbers: keyed seeding of the CPU generator only, batches assembled
in place, uint8 normalised on the device, the decoders, one copy per micro-batch, the loader check of
`--estimate` and the loader benchmark's arguments. Data: a tiny ImageNet-shaped JPEG folder."""

from __future__ import annotations

import collections
import importlib.util
import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conadv_repro.config import config_from_overrides
from conadv_repro.data import sources
from conadv_repro.data.datasets import build_data
from conadv_repro.data.loader import MicroBatch, train_micro_batches
from conadv_repro.data.sampler import BatchPlan
from conadv_repro.data.sources import TORCHCODEC_INSTALL, file_decoder, torchcodec_missing
from conadv_repro.data.transforms import Normalise, cifar10_preset, imagenet_preset, keyed_call
from conadv_repro.engine.trainer import Trainer
from conadv_repro.errors import UserError
from conadv_repro.launch.loader_check import feed_line, find_loader_calibration, parse_loader_calibration
from tests.conftest import REPO
from tests.helpers import run_cli

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLASSES, PER_CLASS = 4, 7  # 4 of each class train, 3 are held out for validation


def _photographs() -> list[Image.Image]:
    """scikit-learn's two sample photographs, read from its package folder (importing sklearn takes seconds)."""
    spec = importlib.util.find_spec("sklearn")
    assert spec is not None and spec.submodule_search_locations
    images = Path(spec.submodule_search_locations[0]) / "datasets" / "images"
    return [Image.open(images / name).convert("RGB") for name in ("china.jpg", "flower.jpg")]


def _photo_crops(count: int, seed: int) -> list[Image.Image]:
    photos = [np.asarray(photo) for photo in _photographs()]
    rng = np.random.RandomState(seed)
    crops = []
    for _ in range(count):
        photo = photos[rng.randint(2)]
        h, w = rng.randint(64, 121, size=2)
        y, x = rng.randint(photo.shape[0] - h), rng.randint(photo.shape[1] - w)
        crops.append(Image.fromarray(photo[y : y + h, x : x + w]))
    return crops


def _save(image: Image.Image, path: Path, kind: str) -> None:
    """ImageNet's odd files: greyscale and CMYK JPEGs, and a PNG named .JPEG."""
    if kind == "png":
        image.save(path, format="PNG")
    else:
        image.convert({"grey": "L", "cmyk": "CMYK"}.get(kind, "RGB")).save(path, format="JPEG", quality=90)


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imagenet")
    crops = iter(_photo_crops(CLASSES * (PER_CLASS + 1), seed=0))
    odd = {(0, 1): "grey", (1, 2): "cmyk", (2, 0): "png"}
    for part, count in (("train", PER_CLASS), ("val", 1)):
        for label in range(CLASSES):
            folder = root / part / f"n{label:08d}"
            folder.mkdir(parents=True)
            for k in range(count):
                _save(next(crops), folder / f"img{k}.JPEG", odd.get((label, k), "rgb") if part == "train" else "rgb")
    return root


def _reference_keyed_call(transform, image, seed):
    """keyed_call as it was: torch.manual_seed (every device's generator) under a forked CPU RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(image)


def test_keyed_call_gives_the_numbers_of_the_forked_manual_seed() -> None:
    image = _photo_crops(1, seed=3)[0]
    tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    presets = [
        (imagenet_preset(32, MEAN, STD, autoaugment=True).train, image),
        (imagenet_preset(32, MEAN, STD, autoaugment=True).train, tensor),
        (cifar10_preset(MEAN, STD, autoaugment=True).train, tensor[:, :32, :32].contiguous()),
    ]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    for transform, source in presets:
        for seed in (0, 1, 2**62 + 5):
            assert torch.equal(keyed_call(transform, source, seed), _reference_keyed_call(transform, source, seed))
    assert torch.equal(torch.get_rng_state(), before)  # the caller's CPU generator is untouched


def test_keyed_call_never_seeds_a_cuda_generator_and_restores_on_error(monkeypatch, imagenet_root) -> None:
    def forbidden(*_args, **_kwargs):
        raise AssertionError("a keyed transform seeded a device generator")

    for name in ("manual_seed", "manual_seed_all"):
        monkeypatch.setattr(torch.cuda, name, forbidden)
    monkeypatch.setattr(torch, "manual_seed", forbidden)
    bundle = build_data("imagenet", root=str(imagenet_root), image_size=32, autoaugment=True, seed=1)
    plan = BatchPlan(bundle.num_train, 8, seed=1)
    batch = next(train_micro_batches(bundle, plan, start_step=0, end_step=1, micro_size=8))
    assert batch.inputs.shape == (8, 3, 32, 32)

    def broken(_image):
        torch.rand(5)
        raise ValueError("boom")

    state = torch.get_rng_state()
    with pytest.raises(ValueError, match="boom"):
        keyed_call(broken, None, 7)
    assert torch.equal(torch.get_rng_state(), state)


def _keys(batch: MicroBatch) -> list[tuple[int, int, int, int]]:
    return [(int(i), batch.key.epoch, batch.key.step, batch.key.micro) for i in batch.indices]


def test_batches_assembled_in_place_are_the_per_image_items(imagenet_root) -> None:
    for paired in (False, True):
        bundle = build_data("imagenet", root=str(imagenet_root), image_size=32, autoaugment=True, seed=2,
                            paired=paired)
        plan = BatchPlan(bundle.num_train, 8, seed=2)
        fast = list(train_micro_batches(bundle, plan, start_step=0, end_step=3, micro_size=4))
        raw = list(train_micro_batches(bundle, plan, start_step=0, end_step=3, micro_size=4, normalise_on_device=True))
        for batch, uint8 in zip(fast, raw, strict=True):
            items = [bundle.train[key] for key in _keys(batch)]
            assert batch.inputs.is_contiguous() and batch.inputs.dtype == torch.float32
            assert torch.equal(batch.inputs, torch.stack([item[0] for item in items]))
            assert uint8.inputs.dtype == torch.uint8 and uint8.normalise is not None
            moved = uint8.to("cpu")
            assert moved.normalise is None and moved.inputs.is_contiguous()
            assert torch.equal(moved.inputs, batch.inputs)
            assert torch.equal(uint8.to("cpu", channels_last=True).inputs, batch.inputs)
            if paired:
                assert torch.equal(batch.originals, torch.stack([item[3] for item in items]))
                assert torch.equal(moved.originals, batch.originals)
        evaluation = bundle.test.__getitems__([0, 1, 2, 3])
        assert torch.equal(evaluation.inputs, torch.stack([bundle.test[i][0] for i in range(4)]))


def test_normalising_on_the_device_is_the_cpu_path() -> None:
    normalise = Normalise(MEAN, STD)
    images = torch.randint(0, 256, (5, 3, 7, 9), dtype=torch.uint8)
    expected = torch.stack([normalise(image) for image in images])
    assert torch.equal(normalise.on_device(images), expected)
    assert torch.equal(normalise.fill(torch.empty(5, 3, 7, 9), list(images.permute(0, 2, 3, 1).contiguous()
                                                                     .permute(0, 3, 1, 2))), expected)
    meta = normalise.on_device(images.to("meta"))  # another device: 255 is a tensor there too
    assert meta.device.type == "meta" and meta.dtype == torch.float32 and meta.shape == images.shape
    with pytest.raises(UserError, match="cannot be normalised"):
        normalise.on_device(images.float())


# TorchCodec is the `torchcodec` extra, which `make test` installs; elsewhere its variants skip, saying why.
DECODER_BACKENDS = ["torchvision", pytest.param("torchcodec", marks=pytest.mark.skipif(
    torchcodec_missing() is not None,
    reason=f"TorchCodec does not load here ({torchcodec_missing()}); {TORCHCODEC_INSTALL} installs it"))]


@pytest.mark.parametrize("decoder", DECODER_BACKENDS)
def test_the_decoders_read_greyscale_cmyk_and_a_png_named_jpeg(imagenet_root, decoder: str) -> None:
    pil, other = file_decoder("pil"), file_decoder(decoder)
    files = sorted((imagenet_root / "train").rglob("*.JPEG"))
    kinds = {Image.open(path).format + Image.open(path).mode for path in files}
    assert {"JPEGL", "JPEGCMYK", "PNGRGB", "JPEGRGB"} <= kinds
    for path in files:
        a, b = np.asarray(pil(str(path))), np.asarray(other(str(path)))
        assert a.shape == b.shape and a.shape[2] == 3 and b.dtype == np.uint8
        # All are libjpeg-turbo here; another build may round a few pixels otherwise.
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 1.0, path
    bundle = build_data("imagenet", root=str(imagenet_root), image_size=32, decoder=decoder)
    assert bundle.train[(0, 0, 0, 0)][0].shape == (3, 32, 32)
    with pytest.raises(UserError, match=f"decoder '{decoder}' applies to imagenet"):
        build_data("digits", decoder=decoder)
    with pytest.raises(UserError, match=f"data_decoder={decoder} applies to data=imagenet"):
        config_from_overrides([f"data_decoder={decoder}"])


def test_an_unknown_decoder_is_refused() -> None:
    with pytest.raises(UserError, match="data_decoder='nvjpeg' is not allowed; allowed: pil, torchvision, torchcodec"):
        config_from_overrides(["data=imagenet", "data_decoder=nvjpeg"])
    with pytest.raises(UserError, match="data_decoder='nvjpeg' is not allowed; allowed: pil, torchvision, torchcodec"):
        file_decoder("nvjpeg")


@pytest.mark.skipif(torchcodec_missing() is not None, reason=f"TorchCodec does not load here "
                    f"({torchcodec_missing()}); {TORCHCODEC_INSTALL} installs it")
def test_torchcodec_turns_an_exif_rotated_photo_upright_and_torchvision_does_not(tmp_path: Path) -> None:
    """Why torchcodec is a decoder of its own: the same pixels as torchvision.io, but EXIF orientation applied."""
    photo = _photo_crops(1, seed=5)[0]
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored image is to be shown rotated 90 degrees clockwise
    plain, rotated = tmp_path / "plain.JPEG", tmp_path / "rotated.JPEG"
    photo.save(plain, format="JPEG", quality=90)
    photo.save(rotated, format="JPEG", quality=90, exif=exif.tobytes())
    pil, tv, tc = (file_decoder(name) for name in ("pil", "torchvision", "torchcodec"))
    stored = np.asarray(tv(str(plain))).astype(int)
    for decode in (pil, tv, tc):
        assert np.abs(np.asarray(decode(str(plain))).astype(int) - stored).mean() < 1.0
    for decode in (pil, tv):
        assert np.abs(np.asarray(decode(str(rotated))).astype(int) - stored).mean() < 1.0
    upright = np.asarray(tc(str(rotated))).astype(int)
    assert photo.width != photo.height and upright.shape == (photo.width, photo.height, 3)
    assert np.abs(upright - np.rot90(stored, k=-1)).mean() < 1.0


def test_torchvision_notes_its_deprecation_once_and_missing_decoders_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sources, "_noted", set())
    for _ in range(3):
        file_decoder("torchvision")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("note: data_decoder=torchvision decodes with torchvision.io")
    assert TORCHCODEC_INSTALL in err[0]
    monkeypatch.setattr(sources, "torchcodec_missing", lambda: "ModuleNotFoundError: No module named 'torchcodec'")
    with pytest.raises(UserError, match=r"data_decoder=torchcodec needs TorchCodec.*No module named 'torchcodec'.*"
                                        r"install it: pip install -e '\.\[torchcodec\]'"):
        file_decoder("torchcodec")
    import torchvision.io

    monkeypatch.delattr(torchvision.io, "decode_image")  # what a torchvision without its decoders looks like
    with pytest.raises(UserError, match="no longer ships; allowed: data_decoder=pil, or data_decoder=torchcodec"):
        file_decoder("torchvision")


def test_the_decoder_is_in_the_run_id_and_where_to_normalise_is_not() -> None:
    base = config_from_overrides(["data=imagenet"])
    assert config_from_overrides(["data=imagenet", "data_decoder=pil"]).run_id() == base.run_id()
    ids = {config_from_overrides(["data=imagenet", f"data_decoder={name}"]).run_id()
           for name in ("pil", "torchvision", "torchcodec")}
    assert len(ids) == 3 and base.run_id() in ids
    for where in ("loader", "device"):
        assert config_from_overrides(["data=imagenet", f"runtime.normalise={where}"]).run_id() == base.run_id()


TINY = ["model.name=resnet8", "model.width=8", "model.input_size=32", "batch_size=8", "bn.group_size=4",
        "runtime.micro_batch=4", "runtime.device=cpu", "runtime.threads=1", "steps=3", "optim.lr=0.5",
        "schedule.warmup_epochs=0", "runtime.eval_batch=8"]


def _trainer(root: Path, *overrides: str) -> Trainer:
    return Trainer(config_from_overrides([*TINY, "data=imagenet", f"data_root={root}", *overrides]),
                   log=lambda _m: None)


def _train(t: Trainer, steps: int = 3) -> dict[str, torch.Tensor]:
    t.open_batches(0)
    for step in range(steps):
        out = t.train_step(step, t.step_batches(step))
        assert np.isfinite(out["loss"])
    t.close()
    return t.model.state_dict()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("overrides", [
    ["method=vanilla"],
    ["method=conadv", "autoaugment=true", "bn.three_way=true", "conadv.executor=thread", "runtime.workers=2"],
])
def test_an_imagenet_folder_trains_the_same_normalised_in_the_loader_or_on_the_device(imagenet_root, overrides):
    on_loader = _trainer(imagenet_root, *overrides, "runtime.normalise=loader")
    on_device = _trainer(imagenet_root, *overrides, "runtime.normalise=device")
    assert not on_loader.normalise_on_device and on_device.normalise_on_device
    _same(_train(on_loader), _train(on_device))
    assert 0 <= on_device.evaluate("test")["top1"] <= 100


@pytest.mark.parametrize("method", ["disadv", "conadv"])
def test_bf16_autocast_trains_an_imagenet_folder(imagenet_root, method):
    _train(_trainer(imagenet_root, f"method={method}", "runtime.autocast=bf16", "autoaugment=true"), 2)


def test_conadv_copies_each_micro_batch_to_the_device_once(imagenet_root, monkeypatch):
    calls: list[tuple[int, int]] = []
    threads: set[str] = set()
    original = MicroBatch.to

    def counted(self, *args, **kwargs):
        calls.append((self.key.step, self.key.micro))
        threads.add(threading.current_thread().name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MicroBatch, "to", counted)
    for tau in (0, 1):
        calls.clear()
        t = _trainer(imagenet_root, "method=conadv", f"conadv.tau={tau}", "conadv.executor=thread")
        _train(t, 2)
        counts = collections.Counter(calls)
        trained = {(step, micro) for step in range(2) for micro in range(2)}
        assert trained <= set(counts) and max(counts.values()) == 1, counts
        assert any(name.startswith("conadv-attack") for name in threads)


# --------------------------------------------------------------------------------- --estimate's loader check


def _loader_calibration(folder: Path, name: str = "x", plain: float = 100.0, autoaugment: float = 80.0,
                        date: str = "2026-12-01") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"schema": 1, "kind": "loader", "machine": "Test CPU, 2 cores", "date": date,
                                "command": "python benchmarks/loader.py --save x",
                                "images_per_s_per_core": {"plain": plain, "autoaugment": autoaugment}}))
    return path


def test_the_loader_check_counts_the_cores_a_gpu_needs(tmp_path, monkeypatch):
    monkeypatch.setenv("CONADV_CALIBRATIONS", str(tmp_path))
    assert find_loader_calibration() is None
    assert "not checked" in feed_line("p", 10, 3000.0, False, "vanilla", None)
    _loader_calibration(tmp_path / "loader", "old", plain=50.0, date="2020-01-01")
    _loader_calibration(tmp_path / "loader", "new", plain=300.0, autoaugment=250.0)
    found = find_loader_calibration()
    assert found is not None and found.path == "loader/new.json" and found.cores_per_gpu(3000, True) == 12
    line = feed_line("big", 8, 3000.0, False, "vanilla at batch 16k", found)
    assert line.startswith("warning: loader: profile big gives 8 CPUs per GPU (7 for loader workers")
    assert "needs 10.0 per GPU at the projected 3,000 images/s" in line and "loader/new.json" in line
    assert feed_line("big", 12, 3000.0, False, "vanilla", found).endswith(": enough")
    with pytest.raises(UserError, match="not a loader calibration"):
        parse_loader_calibration({"schema": 1}, "loader/bad.json")
    good = json.loads(_loader_calibration(tmp_path / "loader", "new").read_text())
    with pytest.raises(UserError, match="images_per_s_per_core.plain=0 is not allowed"):
        parse_loader_calibration({**good, "images_per_s_per_core": {"plain": 0, "autoaugment": 1}}, "loader/bad.json")


def test_estimate_says_when_a_profile_cannot_feed_its_gpus(tmp_path, cli_env):
    _loader_calibration(tmp_path / "cal" / "loader", "slow-cpu", plain=100.0, autoaugment=80.0)
    env = {**cli_env, "CONADV_CALIBRATIONS": str(tmp_path / "cal")}
    out = run_cli(["-m", "conadv_repro.launch", "table3", "--scale", "paper", "--profile", "example-gpu",
                   "--estimate", "--calibration", "published", "--gpus-per-run", "1"], env, tmp_path)
    assert out.returncode == 0, out.stderr
    (line,) = [line for line in out.stdout.splitlines() if "loader:" in line]
    # The published A100 rate, 2,470 images/s, at 100 images/s per core: 24.7 cores, the profile has 10.
    assert line.startswith("warning: loader: profile example-gpu gives 10 CPUs per GPU"), line
    assert "needs 24.7 per GPU at the projected 2,470 images/s" in line and "loader/slow-cpu.json" in line
    assert out.stdout.splitlines()[-1].startswith("grid: 9 runs")


# --------------------------------------------------------------------------------- the benchmark's arguments


def _benchmark():
    spec = importlib.util.spec_from_file_location("loader_benchmark", REPO / "benchmarks" / "loader.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("args, message", [
    (["--rounds", "0"], "--rounds: 0 is not allowed"),
    (["--workers", "0,x"], "--workers: '0,x' is not a comma-separated list"),
    (["--workers", "1,1"], "distinct integers >= 0"),
    (["--save", "a/b"], "--save: 'a/b' is not allowed"),
    (["--images", "8", "--batch", "32"], "--images 8 is less than one batch"),
])
def test_the_loader_benchmark_rejects_bad_arguments_in_one_line(capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        _benchmark().main(args)
    err = capsys.readouterr()
    assert exit_.value.code == 2 and len(err.err.strip().splitlines()) == 1 and message in err.err, err.err
    assert "machine:" not in err.out


def test_the_benchmark_folder_is_what_build_imagenet_reads(tmp_path, monkeypatch):
    bench = _benchmark()
    monkeypatch.setattr(bench, "pick_quality", lambda photos: 90)
    monkeypatch.setattr(bench, "photographs", _photographs)
    built = bench.build_folder(tmp_path / "root", train_per_class=1)
    assert built["files"] == bench.CLASSES * (1 + 3 + 1) and built["mean_bytes"] > 10_000
    bundle = build_data("imagenet", root=str(tmp_path / "root"), image_size=32)
    assert (bundle.num_train, len(bundle.val), bundle.num_classes) == (bench.CLASSES, 3 * bench.CLASSES, bench.CLASSES)
    assert bench.build_folder(tmp_path / "root", train_per_class=1) == built  # reused, not rebuilt
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("")
    with pytest.raises(UserError, match="not empty and was not made by this benchmark"):
        bench.build_folder(tmp_path / "other", train_per_class=1)
