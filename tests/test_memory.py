"""Activation memory: our split ghost BN saves what torchvision's BatchNorm saves; the memory calibrations
that `launch` and `--estimate` read, and their warnings when a profile's GPUs cannot hold a micro-batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conadv_repro import memory_model
from conadv_repro.calibration_files import CALIBRATIONS_ENV
from conadv_repro.errors import UserError
from conadv_repro.gpu_check.memory import activation_bytes_per_image, saved_tensor_calibration
from conadv_repro.launch import cli
from conadv_repro.launch.memory_check import memory_report, memory_warnings
from conadv_repro.launch.plan import PlannedRun, expand
from conadv_repro.launch.profiles import Profile
from conadv_repro.model.split_bn import convert_to_split_bn
from conadv_repro.registry import load_experiments
from tests.helpers import call_main

MIB = 2 ** 20


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_our_resnet18_saves_what_torchvisions_saves_for_backward(bf16):
    # The first release's split BN saved 1.7x (fp32) and 2.7x (bf16) of torchvision's bytes: a float32 copy
    # of every BN input and each of its seven operations' outputs.
    import torchvision

    torch.manual_seed(0)
    ours = convert_to_split_bn(torchvision.models.resnet18(num_classes=10), group_size=8, momentum=0.1, eps=1e-5)
    theirs = torchvision.models.resnet18(num_classes=10)

    def make(batch: int) -> torch.Tensor:
        return torch.randn(batch, 3, 64, 64)

    # 2 and 4 groups: what grows with the batch beyond torchvision's is each group's mean and inverse std.
    mine, _ = activation_bytes_per_image(ours.train(), make, (16, 32), bf16=bf16)
    plain, _ = activation_bytes_per_image(theirs.train(), make, (16, 32), bf16=bf16)
    assert plain > 0.1 * MIB
    assert mine / plain <= 1.05, (mine / MIB, plain / MIB)


def calibration(source: str = "peak", date: str = "2026-12-01", **per_method: tuple[float, float]
                ) -> memory_model.MemoryCalibration:
    methods = {name: memory_model.MethodMemory(*values) for name, values in per_method.items()} or {
        "vanilla": memory_model.MethodMemory(4 * memory_model.GIB, 0.1 * memory_model.GIB),
        "disadv": memory_model.MethodMemory(4 * memory_model.GIB, 0.2 * memory_model.GIB),
        "conadv": memory_model.MethodMemory(5 * memory_model.GIB, 0.3 * memory_model.GIB)}
    return memory_model.MemoryCalibration(model="resnet50", image_size=224, autocast="bf16", source=source,
                                          machine="NVIDIA H100 80GB HBM3", date=date, command="test", methods=methods)


def save(folder: Path, name: str, cal: memory_model.MemoryCalibration) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(cal.to_dict()))
    return path


def test_a_calibration_round_trips_and_a_bad_one_is_one_line(tmp_path):
    path = save(tmp_path, "h100", calibration())
    loaded = memory_model.load_memory_calibration(path)
    assert loaded.path == "memory/h100.json" and loaded.source == "peak"
    assert loaded.needed("conadv", 100) == pytest.approx(35 * memory_model.GIB, rel=1e-9)
    assert loaded.needed("noise", 10) == loaded.needed("disadv", 10)  # two branches, like DisAdv's
    good = json.loads(path.read_text())
    for change, message in [({"kind": "loader"}, "not a memory calibration"),
                            ({"source": "guess"}, "source='guess' is not allowed; allowed: peak, saved-tensors"),
                            ({"image_size": 0}, "image_size=0 is not allowed"),
                            ({"methods": {"sam": {}}}, "methods={'sam': {}} is not allowed"),
                            ({"methods": {"vanilla": {"fixed_bytes": -1, "bytes_per_image": 1}}},
                             "methods.vanilla.fixed_bytes=-1 is not allowed")]:
        with pytest.raises(UserError, match=message) as info:
            memory_model.parse_memory_calibration({**good, **change}, "memory/bad.json")
        assert "\n" not in str(info.value)
    (tmp_path / "torn.json").write_text("{")
    with pytest.raises(UserError, match="is not valid JSON"):
        memory_model.load_memory_calibration(tmp_path / "torn.json")


def test_a_measured_peak_wins_over_a_model_and_the_line_runs_through_the_peaks(tmp_path):
    save(tmp_path, "model", calibration(source="saved-tensors", date="2026-12-31"))
    save(tmp_path, "peak", calibration(source="peak", date="2026-01-01"))
    found = memory_model.find_memory_calibration("resnet50", 224, "bf16", folder=tmp_path)
    assert found is not None and found.path == "memory/peak.json"
    assert memory_model.find_memory_calibration("resnet50", 224, "none", folder=tmp_path) is None
    line = memory_model.line_through({128: 30 * memory_model.GIB, 256: 50 * memory_model.GIB})
    assert line.bytes_at(128) == pytest.approx(30 * memory_model.GIB) and line.bytes_at(512) == pytest.approx(
        90 * memory_model.GIB)


def test_the_micro_batch_that_fits_is_whole_groups_and_divides_the_share():
    cal = calibration()
    # conadv: 5 GiB + 0.3 GiB per image; 40 GiB hold 116 images, so 64 (of share 1024, groups of 64).
    assert memory_model.largest_fitting_micro(cal, "conadv", 40 * memory_model.GIB, 1024, 64) == 64
    assert memory_model.largest_fitting_micro(cal, "vanilla", 40 * memory_model.GIB, 1024, 64) == 256
    assert memory_model.largest_fitting_micro(cal, "vanilla", 40 * memory_model.GIB, 960, 64) == 320
    assert memory_model.largest_fitting_micro(cal, "conadv", 4 * memory_model.GIB, 1024, 64) is None


def test_the_cpu_model_holds_the_forwards_each_method_keeps_at_its_peak():
    cal = saved_tensor_calibration(model_name="resnet50", image_size=224, autocast="bf16", params=1000, per_image=10.0,
                                   forward_fixed=7.0, tau=1, machine="cpu", command="test")
    assert cal.source == "saved-tensors"
    assert {m: v.bytes_per_image for m, v in cal.methods.items()} == {"vanilla": 10.0, "disadv": 20.0, "conadv": 30.0}
    # Weights, gradients and momentum (12 bytes a parameter), ConAdv's two weight snapshots at tau=1.
    assert cal.methods["vanilla"].fixed_bytes == 12_000 + 7 and cal.methods["conadv"].fixed_bytes == 20_000 + 21


def paper_runs(tmp_path: Path, *sets: str) -> list:
    experiments = load_experiments(["table1"])
    values = dict(item.split("=", 1) for item in sets)
    return expand(experiments, scale="paper", runs_dir=tmp_path, sets=values, check_data=False)


def test_launch_warns_when_a_profiles_gpus_cannot_hold_the_micro_batch(tmp_path, monkeypatch):
    monkeypatch.setenv(CALIBRATIONS_ENV, str(tmp_path / "cal"))
    save(tmp_path / "cal" / "memory", "h100", calibration())
    runs = paper_runs(tmp_path)  # micro-batch 256: vanilla 29.6 GiB, DisAdv 55.2, ConAdv 81.8
    profile = Profile(name="big", gpus_per_node=8, gpu_mem_gb=80)
    (warning,) = memory_warnings(runs, profile)
    assert warning.startswith("warning: memory: 7 conadv runs need about 81.8 GiB per GPU at micro-batch 256; "
                              "profile big's GPUs have 80 GiB (2 GiB of each kept for the CUDA context and NCCL); "
                              "runtime.micro_batch=128 fits"), warning
    assert "memory/h100.json: measured peak" in warning
    small = memory_warnings(runs, Profile(name="small", gpus_per_node=8, gpu_mem_gb=40))
    assert [w.split(" need")[0] for w in small] == ["warning: memory: 7 disadv runs", "warning: memory: 7 conadv runs"]
    assert "runtime.micro_batch=128 fits" in small[0] and "runtime.micro_batch=64 fits" in small[1]
    assert memory_warnings(paper_runs(tmp_path, "runtime.micro_batch=128"), profile) == []
    assert memory_warnings(runs, Profile(name="unknown", gpus_per_node=8)) == []  # gpu_mem_gb 0: not checked
    assert memory_report(runs, Profile(name="unknown", gpus_per_node=8)) == [
        "memory: not checked (profile unknown has no gpu_mem_gb)"]
    assert memory_report(paper_runs(tmp_path, "runtime.micro_batch=128"), profile) == [
        "memory: every run's micro-batch fits profile big's 80 GiB GPUs"]
    monkeypatch.setenv(CALIBRATIONS_ENV, str(tmp_path / "none"))
    (line,) = memory_report(runs, profile)
    assert line.startswith("memory: not checked for resnet50 at 224 px (bf16) (no memory calibration in ")


def test_the_estimate_prints_the_memory_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(CALIBRATIONS_ENV, str(tmp_path / "cal"))
    save(tmp_path / "cal" / "memory", "h100", calibration())
    status, out, err = call_main(cli.main, ["table1", "--scale", "paper", "--profile", "example-gpu", "--estimate",
                                            "--calibration", "published", "--runs-dir", str(tmp_path / "runs"),
                                            "--gpus-per-run", "1"], capsys)
    assert status == 0, err
    assert "warning: memory: 7 conadv runs need about 81.8 GiB per GPU at micro-batch 256; profile example-gpu's " \
           "GPUs have 80 GiB (2 GiB of each kept for the CUDA context and NCCL); runtime.micro_batch=128 fits" in out, out


def test_a_third_bn_branch_a_method_without_calibration_and_a_bad_file_are_reported(tmp_path, monkeypatch):
    monkeypatch.setenv(CALIBRATIONS_ENV, str(tmp_path / "cal"))
    # DisAdv at 4 GiB + 0.2 GiB per image: 55.2 GiB at 256; a third forward (bn.three_way) makes it 80.8.
    save(tmp_path / "cal" / "memory", "h100", calibration())
    profile = Profile(name="big", gpus_per_node=8, gpu_mem_gb=80)
    three = [PlannedRun(r.config.replace({"autoaugment": "true", "bn.three_way": "true"}), r.run_dir)
             for r in paper_runs(tmp_path) if r.config.method == "disadv"]
    lines = memory_warnings(three, profile)
    assert len(lines) == 1 and "disadv runs need about 80.8 GiB" in lines[0] and "micro_batch=128 fits" in lines[0]
    # A calibration without DisAdv: those runs are not checked, and --estimate says so.
    only_vanilla = calibration(vanilla=(4 * memory_model.GIB, 0.1 * memory_model.GIB))
    save(tmp_path / "cal" / "memory", "h100", only_vanilla)
    report = memory_report(paper_runs(tmp_path), profile)
    assert report[-1].startswith("memory: not checked for conadv on resnet50 at 224 px (bf16), disadv on resnet50"), report
    # A file that is not a calibration: one warning line, not a refused launch.
    (tmp_path / "cal" / "memory" / "torn.json").write_text("{")
    (line,) = memory_warnings(paper_runs(tmp_path), profile)
    assert line.startswith("warning: memory: not checked (memory calibration ") and "is not valid JSON" in line
