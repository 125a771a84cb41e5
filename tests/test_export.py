"""Export: a run's network through its main BN, loadable strict by torchvision (resnet18/50) or by the
builder line of OUT.json (CIFAR-style nets), with the suite's own evaluation logits; bad input is one
line, exit status 2, and nothing written."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import conadv_repro
from conadv_repro.config import Config, config_from_overrides
from conadv_repro.data.datasets import build_data
from conadv_repro.engine.checkpoint import CHECKPOINT_DIR, load_checkpoint_file
from conadv_repro.engine.rundir import RunDirectory
from conadv_repro.engine.trainer import build_network
from conadv_repro.export import _builder, main
from conadv_repro.model.split_bn import bn_route
from conadv_repro.train import main as train_main

CPU = ["runtime.threads=2", "runtime.device=cpu"]
CLASSES = ["n01440764", "n01443537", "n01484850", "n01491361"]


def _tiny_imagenet(root: Path) -> Path:
    """An ImageNet-layout folder: 4 classes x 6 training (3 are held out as val) and 2 test JPEGs."""
    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", 6), ("val", 2)):
        for label, wnid in enumerate(CLASSES):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = torch.randint(0, 256, (40, 44, 3), generator=generator, dtype=torch.uint8)
                pixels[..., label % 3] //= 2  # a little colour per class
                Image.fromarray(pixels.numpy()).save(folder / f"{wnid}_{i}.JPEG", quality=95)
    return root


def _train(run_dir: Path, overrides: list[str]) -> Config:
    assert train_main(["--run-dir", str(run_dir), *overrides]) == 0
    return config_from_overrides(overrides)


@pytest.fixture(scope="module")
def resnet18_run(tmp_path_factory) -> tuple[Path, Config]:
    base = tmp_path_factory.mktemp("r18")
    root = _tiny_imagenet(base / "imagenet")
    overrides = ["data=imagenet", f"data_root={root}", "model.name=resnet18", "model.input_size=32",
                 "batch_size=8", "bn.group_size=4", "steps=1", *CPU]
    return base / "run", _train(base / "run", overrides)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> tuple[Path, Config]:
    base = tmp_path_factory.mktemp("r8")
    # A BatchNorm epsilon other than torch's default, so the builder line has to carry it.
    overrides = ["batch_size=64", "bn.group_size=16", "model.width=8", "bn.eps=0.001", "steps=3",
                 "runtime.checkpoint_every=1", *CPU]
    return base / "run", _train(base / "run", overrides)


def _suite_logits(cfg: Config, run_dir: Path, inputs: torch.Tensor) -> torch.Tensor:
    """What the suite's evaluation computes: the run's network in eval mode through the main BN."""
    bundle = build_data(cfg.data, root=cfg.data_root, image_size=cfg.model.input_size)
    model = build_network(cfg, bundle, torch.device("cpu"), channels_last=False)
    model.load_state_dict(load_checkpoint_file(run_dir / CHECKPOINT_DIR / "final.pt")["model"])
    model.eval()
    with torch.no_grad(), bn_route(model, "main", record=False):
        return model(inputs)


def _fails(argv: list[str], capsys) -> str:
    """Run the export CLI expecting a user error: exit status 2 and one line, returned."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_resnet18_loads_strict_in_torchvision_with_the_suite_logits(resnet18_run, tmp_path: Path, capsys):
    run_dir, cfg = resnet18_run
    out = tmp_path / "r18.pt"
    assert main([str(run_dir), str(out)]) == 0
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["builder"] == "torchvision.models.resnet18(num_classes=4)"
    assert info["classes"] == CLASSES and info["checkpoint"] == "final.pt" and info["finished"] is True
    state = torch.load(out, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    import torchvision  # here, not at the top: collecting would import torchvision in every worker
    from torchvision import transforms as T

    network = eval(info["builder"], {"torchvision": torchvision})
    network.load_state_dict(state, strict=True)
    network.eval()

    bundle = build_data(cfg.data, root=cfg.data_root, image_size=cfg.model.input_size)
    inputs = torch.stack([bundle.test[i][0] for i in range(len(bundle.test))])
    with torch.no_grad():
        theirs = network(inputs)
    torch.testing.assert_close(theirs, _suite_logits(cfg, run_dir, inputs), rtol=1e-4, atol=1e-5)

    # The main BN was exported, not the auxiliary one: after training they differ, so the logits above
    # could not match through the wrong branch.
    trained = load_checkpoint_file(run_dir / CHECKPOINT_DIR / "final.pt")["model"]
    assert not torch.equal(trained["bn1.main.running_mean"], trained["bn1.aux.running_mean"])
    assert torch.equal(state["bn1.running_mean"], trained["bn1.main.running_mean"])

    # OUT.json's preprocessing, done with plain torchvision on a raw test image, gives the suite's input.
    prep = info["preprocessing"]
    assert (prep["resize"], prep["crop"]) == (36, 32)
    recipe = T.Compose([T.Resize(prep["resize"], antialias=True), T.CenterCrop(prep["crop"]), T.ToTensor(),
                        T.Normalize(prep["mean"], prep["std"])])
    path, label = bundle.test.source.samples[0]
    torch.testing.assert_close(recipe(Image.open(path).convert("RGB")), bundle.test[0][0], rtol=0, atol=1e-5)
    assert info["classes"][label] == Path(path).parent.name


def test_cifar_style_builder_line_rebuilds_the_network(digits_run, tmp_path: Path):
    run_dir, cfg = digits_run
    out = tmp_path / "r8.pt"
    assert main([str(run_dir), str(out)]) == 0
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["builder"] == ("conadv_repro.export.cifar_network('resnet8', width=8, num_classes=10, "
                               "in_channels=1, bn_eps=0.001)")
    assert info["classes"] == [str(i) for i in range(10)] and info["preprocessing"]["resize"] == 16
    network = eval(info["builder"], {"conadv_repro": conadv_repro})
    network.load_state_dict(torch.load(out, weights_only=True), strict=True)
    network.eval()
    bundle = build_data("digits")
    assert info["preprocessing"]["mean"] == list(bundle.mean)
    inputs = torch.stack([bundle.test[i][0] for i in range(32)])
    with torch.no_grad():
        theirs = network(inputs)
    torch.testing.assert_close(theirs, _suite_logits(cfg, run_dir, inputs), rtol=1e-4, atol=1e-5)


def test_an_existing_out_needs_force(digits_run, tmp_path: Path, capsys):
    run_dir, _ = digits_run
    out = tmp_path / "model.pt"
    out.write_bytes(b"mine")
    line = _fails([str(run_dir), str(out)], capsys)
    assert str(out) in line and "--force" in line
    assert out.read_bytes() == b"mine" and not out.with_suffix(".json").exists()
    out.unlink()
    out.with_suffix(".json").write_text("mine")  # the description beside it is protected too
    _fails([str(run_dir), str(out)], capsys)
    assert not out.exists()
    assert main([str(run_dir), str(out), "--force"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["format"] == "conadv-export/1"
    assert torch.load(out, weights_only=True)


def test_an_unfinished_run_needs_allow_unfinished(digits_run, tmp_path: Path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(digits_run[0], run_dir)
    (run_dir / CHECKPOINT_DIR / "final.pt").unlink()
    record = json.loads((run_dir / "record.json").read_text())
    (run_dir / "record.json").write_text(json.dumps({**record, "status": "running", "steps_done": 2}))
    out = tmp_path / "mid.pt"
    line = _fails([str(run_dir), str(out)], capsys)
    assert "has not finished" in line and "--allow-unfinished" in line and "step-00000002.pt" in line
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert main([str(run_dir), str(out), "--allow-unfinished"]) == 0
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["finished"] is False and info["checkpoint"] == "step-00000002.pt" and info["step"] == 2
    assert "not finished" in capsys.readouterr().err


def test_a_finished_run_whose_final_checkpoint_is_damaged_is_refused(digits_run, tmp_path: Path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(digits_run[0], run_dir)
    final = run_dir / CHECKPOINT_DIR / "final.pt"
    final.write_bytes(final.read_bytes()[:-10])
    out = tmp_path / "m.pt"
    line = _fails([str(run_dir), str(out)], capsys)
    assert "final.pt does not verify" in line and "--allow-unfinished" in line
    assert not out.exists()
    assert main([str(run_dir), str(out), "--allow-unfinished"]) == 0
    # The skipped file in one plain line (Python's warning format would echo a source line after it).
    assert f"warning: skipping checkpoint {final}: no checksum seal at its end (cut short, or not written by " \
           "this suite)" in capsys.readouterr().err.splitlines()
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["checkpoint"] == "step-00000002.pt" and info["finished"] is False


def _config_only_run(path: Path, overrides: list[str]) -> Path:
    RunDirectory(path).path.mkdir(parents=True)
    RunDirectory(path).write_config(config_from_overrides(overrides), {})
    return path


@pytest.mark.parametrize(("overrides", "expected"), [
    (["model.name=resnet18", "model.stem=cifar"], "model.stem=cifar"),
    (["model.name=resnet50", "model.stem=cifar"], "not torchvision's resnet50"),
    # A user's builder, even one that is torchvision's own network: no builder line can be promised.
    (["model.name=torchvision.models:resnet18"], "user's builder"),
])
def test_networks_export_cannot_describe_are_refused(tmp_path: Path, capsys, overrides, expected):
    run_dir = _config_only_run(tmp_path / "run", [*overrides, *CPU])
    out = tmp_path / "m.pt"
    assert expected in _fails([str(run_dir), str(out)], capsys)
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_bad_run_directories_are_one_line(tmp_path: Path, capsys):
    out = tmp_path / "m.pt"
    assert "no such run directory" in _fails([str(tmp_path / "missing"), str(out)], capsys)
    (tmp_path / "empty").mkdir()
    assert "no config.json" in _fails([str(tmp_path / "empty"), str(out)], capsys)
    run_dir = _config_only_run(tmp_path / "run", CPU)
    assert "no checkpoint" in _fails([str(run_dir), str(out), "--allow-unfinished"], capsys)
    assert "ends in .json" in _fails([str(run_dir), str(tmp_path / "m.json")], capsys)
    assert "does not exist" in _fails([str(run_dir), str(tmp_path / "nowhere" / "m.pt")], capsys)
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert not (tmp_path / "nowhere").exists()


def test_help_explains(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for needle in ("RUN_DIR", "--force", "--allow-unfinished", "main BatchNorm", "torchvision", "OUT.json"):
        assert needle in text, needle


def test_torchvision_builder_line_carries_a_non_default_bn_eps():
    cfg = config_from_overrides(["model.name=resnet18", "bn.eps=0.001", *CPU])
    import torchvision

    line, target = _builder(cfg, "torchvision", num_classes=3, in_channels=3)
    assert line == ("torchvision.models.resnet18(num_classes=3, "
                    "norm_layer=functools.partial(torch.nn.BatchNorm2d, eps=0.001))")
    network = eval(line, {"torchvision": torchvision, "torch": torch, "functools": functools})
    network.load_state_dict(target.state_dict(), strict=True)
    assert {m.eps for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.001}
