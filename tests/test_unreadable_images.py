"""An unreadable training image (truncated, empty, not an image) ends a run in one line naming the file
and the decoder's complaint: no traceback, exit status 1, the record failed with that line, the
checkpoints kept, so the run resumes once the file is fixed. For every decoder and any number of loader
workers; no image is skipped or replaced."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conadv_repro import evaluate, train
from conadv_repro.data.datasets import build_data
from conadv_repro.data.loader import eval_batches
from conadv_repro.data.sampler import BatchPlan
from conadv_repro.data.sources import UnreadableImage, decoder_complaint
from conadv_repro.engine.checkpoint import CHECKPOINT_DIR, load_latest_checkpoint
from conadv_repro.errors import OneLineFailure
from tests.helpers import call_main

CLASSES = ["n01440764", "n01443537", "n01484850"]
SEED = 0
BATCH = 4
# 3 classes x 7 training images, 3 of each held out as val: 12 to train on, 3 steps of 4 per epoch.
# A checkpoint after every step, so step 1's (the second) batch, which holds the bad files, comes after one.
RUN = ["data=imagenet", "model.name=resnet8", "model.width=4", "model.input_size=16", f"batch_size={BATCH}",
       "bn.group_size=2", "steps=3", "runtime.checkpoint_every=1", "runtime.log_every=1", "runtime.threads=1",
       "runtime.device=cpu", f"seed={SEED}"]


def _jpeg(path: Path, rng: np.random.RandomState) -> None:
    # Noise, so that most of a JPEG's bytes are image data and half the file cuts into it.
    Image.fromarray(rng.randint(0, 256, (24, 24, 3), dtype=np.uint8)).save(path, format="JPEG", quality=90)


def _bad_files(root: Path) -> dict[str, Path]:
    """Three training images of step 1's batch (none of step 0's), by what they will be made into."""
    bundle = build_data("imagenet", root=str(root), image_size=16, seed=SEED)
    samples = bundle.train.source.samples
    plan = BatchPlan(len(samples), BATCH, SEED)
    first = {samples[i][0] for i in plan.indices(0).tolist()}
    second = [Path(samples[i][0]) for i in plan.indices(1).tolist()]
    assert not first & {str(p) for p in second}
    return dict(zip(("truncated", "empty", "text"), second, strict=False))


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.RandomState(0)
    for part, count in (("train", 7), ("val", 1)):
        for wnid in CLASSES:
            folder = root / part / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                _jpeg(folder / f"{wnid}_{i}.JPEG", rng)
    bad = _bad_files(root)
    data = bad["truncated"].read_bytes()
    bad["truncated"].write_bytes(data[: len(data) // 2])
    bad["empty"].write_bytes(b"")
    bad["text"].write_text("this is not an image\n")
    return root, bad


def _train(run_dir: Path, root: Path, extra: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conadv_repro.train", "--run-dir", str(run_dir),
                           f"data_root={root}", *RUN, *extra], env=env, cwd=run_dir.parent,
                          capture_output=True, text=True, timeout=120)


def _error_line(done: subprocess.CompletedProcess, bad: dict[str, Path]) -> str:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    # A decoder may add its own note (data_decoder=torchvision says it is deprecated); that is no error.
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("note: ")]
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.startswith("error: unreadable image "), line
    assert any(f"unreadable image {path}: " in line for path in bad.values()), line
    return line


def _check_failed_and_kept(run_dir: Path, line: str) -> None:
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "failed" and record["error"] == line.removeprefix("error: ")
    assert record["steps_done"] == 1 and "traceback" not in record
    # Nothing was deleted: the checkpoint written before the bad batch is there and verifies.
    assert sorted(p.name for p in (run_dir / CHECKPOINT_DIR).iterdir()) == ["step-00000001.pt"]
    loaded = load_latest_checkpoint(run_dir)
    assert loaded is not None and loaded[0]["step"] == 1


@pytest.mark.slow
@pytest.mark.parametrize(("extra", "decoder"), [
    (["runtime.workers=2"], "(PIL)"),
    (["runtime.workers=2", "data_decoder=torchvision"], "(torchvision.io)"),
], ids=["pil-2-workers", "torchvision-2-workers"])
def test_an_unreadable_image_ends_the_run_in_one_line(imagenet, tmp_path: Path, cli_env, extra, decoder) -> None:
    root, bad = imagenet
    run_dir = tmp_path / "run"
    line = _error_line(_train(run_dir, root, extra, cli_env), bad)
    assert line.endswith(decoder), line
    _check_failed_and_kept(run_dir, line)


@pytest.mark.slow
def test_without_workers_too_and_the_run_resumes_once_the_files_are_fixed(imagenet, tmp_path: Path, cli_env,
                                                                           capsys) -> None:
    root, bad = imagenet
    mine = tmp_path / "imagenet"  # a copy: the module's folder stays broken for the other tests
    shutil.copytree(root, mine)
    bad = {kind: mine / path.relative_to(root) for kind, path in bad.items()}
    run_dir = tmp_path / "run"
    line = _error_line(_train(run_dir, mine, ["runtime.workers=0"], cli_env), bad)
    assert line.endswith("(PIL)"), line
    _check_failed_and_kept(run_dir, line)
    rng = np.random.RandomState(1)
    for path in bad.values():
        _jpeg(path, rng)
    # The resume in this process: a third torch import would only add seconds.
    status, out, err = call_main(train.main, ["--run-dir", str(run_dir), f"data_root={mine}", *RUN,
                                              "runtime.workers=0"], capsys)
    assert status == 0, err
    assert "resuming" in out and "step-00000001.pt at step 1/3" in out
    assert json.loads((run_dir / "record.json").read_text())["status"] == "finished"
    # evaluate meets a broken test image the same way: one line, exit status 1 (it writes nothing anyway).
    test_image = sorted((mine / "val" / CLASSES[2]).iterdir())[0]
    test_image.write_bytes(b"")
    status, _, err = call_main(evaluate.main, [str(run_dir)], capsys)
    assert (status, err) == (1, f"error: unreadable image {test_image}: cannot identify image file (PIL)\n")


def test_the_error_crosses_the_worker_boundary_whole() -> None:
    error = UnreadableImage("/data/train/n01/x.JPEG", "cannot identify image file (PIL)")
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is UnreadableImage and isinstance(back, OneLineFailure)
    assert (back.path, back.reason) == (error.path, error.reason)
    assert str(back) == "unreadable image /data/train/n01/x.JPEG: cannot identify image file (PIL)"


def test_the_decoders_complaint_is_one_short_line_without_the_path() -> None:
    path = "/d/train/n01/x.JPEG"
    pil = OSError(f"cannot identify image file <_io.BufferedReader name='{path}'>")
    assert decoder_complaint(pil, path, "pil") == "cannot identify image file (PIL)"
    torchvision = RuntimeError("decode_jpeg, /__w/vision/torchvision/csrc/io/image/cpu/decode_jpeg.cpp:171, "
                               "Image is incomplete or truncated")
    assert decoder_complaint(torchvision, path, "torchvision") == "Image is incomplete or truncated (torchvision.io)"
    assert decoder_complaint(ValueError(f"bad file '{path}'\nmore"), path) == "bad file"
    assert decoder_complaint(KeyError(), path, "custom") == "KeyError (custom)"


@pytest.mark.parametrize("workers", [0, 2])
def test_an_evaluation_loader_raises_it_too(imagenet, tmp_path: Path, workers: int) -> None:
    root, _ = imagenet
    # A test image (val/ of the layout) that is not an image; the training images are not read here.
    broken = tmp_path / "imagenet"
    for part in ("train", "val"):
        (broken / part).mkdir(parents=True)
        for wnid in CLASSES:
            (broken / part / wnid).symlink_to(root / part / wnid, target_is_directory=True)
    bundle = build_data("imagenet", root=str(broken), image_size=16, seed=SEED)
    victim = Path(bundle.test.source.samples[1][0])
    (broken / "val" / CLASSES[1]).unlink()
    (broken / "val" / CLASSES[1]).mkdir()
    (broken / "val" / CLASSES[1] / victim.name).write_text("not an image")
    with pytest.raises(UnreadableImage) as raised:
        for _ in eval_batches(bundle.test, 2, workers=workers):
            pass
    assert raised.value.path == str(broken / "val" / CLASSES[1] / victim.name)
    assert raised.value.reason == "cannot identify image file (PIL)"
