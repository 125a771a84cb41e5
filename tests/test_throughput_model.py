"""The performance model (conadv_repro/throughput_model.py) against hand-computed numbers, and its calibration
files: valid ones load, malformed ones are one line naming the file and the key; the benchmark that writes
them (benchmarks/throughput.py) rejects bad arguments in one line before it measures anything."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from conadv_repro import throughput_model as tm
from conadv_repro.errors import UserError
from tests.conftest import REPO
from tests.helpers import call_main
from tests.synthetic_runs import SYNTHETIC_CALIBRATION, write_calibration


def test_forward_macs_and_parameters_from_the_layer_shapes():
    # torchvision's published figures: ResNet-50 4.09 GFLOPS (multiply-accumulates), 25,557,032 parameters;
    # ResNet-18 1.81 G, 11,689,512.
    assert tm.forward_macs(tm.PAPER_NETWORK) == 4_089_184_256
    assert tm.param_count(tm.PAPER_NETWORK) == 25_557_032
    resnet18 = tm.Network("resnet18", 224, num_classes=1000)
    assert round(tm.forward_macs(resnet18) / 1e9, 2) == tm.PUBLISHED_GMACS_224["resnet18"]
    assert tm.param_count(resnet18) == 11_689_512
    # CIFAR ResNet-20 (He et al. 2016): 0.27 M parameters.
    assert tm.param_count(tm.Network("resnet20", 32, 16)) == 272_474
    # By hand: resnet8, width 2, a 4x4 one-channel image, 3 classes. Stem 4*4*1*2*9 = 288; stage 1 (side 4)
    # 2*(16*2*2*9) = 1152; stage 2 (side 2) 4*2*4*9 + 4*4*4*9 + 4*2*4 = 896; stage 3 (side 1)
    # 4*8*9 + 8*8*9 + 4*8 = 896; fc 8*3 = 24.
    tiny = tm.Network("resnet8", 4, width=2, in_channels=1, num_classes=3)
    assert tm.forward_macs(tiny) == 288 + 1152 + 896 + 896 + 24
    # Weights plus BN scale and shift per conv output channel, fc weights and biases.
    assert tm.param_count(tiny) == (18 + 4) + 2 * (36 + 4) + (72 + 8 + 144 + 8 + 8 + 8) \
        + (288 + 16 + 576 + 16 + 32 + 16) + (24 + 3)
    with pytest.raises(UserError, match="knows no network 'vgg16'"):
        tm.forward_macs(tm.Network("vgg16", 224))


COSTS = tm.Costs(network=tm.PAPER_NETWORK,
                 per_example_s={"vanilla": 1e-3, "train_only": 2e-3, "attack": 0.5e-3, "disadv": 2.5e-3,
                                "conadv_concurrent": 2.2e-3},
                 gradient_bytes=1e8, weights_bytes=1e8, broadcast_s=0.01, transfer_s_per_example=1e-5,
                 allreduce_bytes_per_s=1e9, hop_latency_s=0.0)


def test_ring_allreduce():
    assert tm.allreduce_s(1e8, 1, 1e9, 1e-5) == 0.0
    # 2 * 3/4 * 0.1 s + 2 * 3 hops * 10 us
    assert tm.allreduce_s(1e8, 4, 1e9, 1e-5) == pytest.approx(0.15 + 6e-5)


def test_step_times_by_hand():
    # Batch 1024 on 4 trainers: 256 examples each; the all-reduce 2 * 3/4 * 1e8 / 1e9 = 0.15 s.
    vanilla = tm.step_time("vanilla", 1024, 4, 0, COSTS)
    assert vanilla.seconds == pytest.approx(0.256 + 0.15)
    assert vanilla.images_per_s == pytest.approx(1024 / 0.406)
    assert vanilla.images_per_ms == pytest.approx(1024 / 0.406 / 1000)
    assert tm.step_time("disadv", 1024, 4, 0, COSTS).seconds == pytest.approx(0.64 + 0.15)
    assert tm.step_time("conadv", 1024, 4, 0, COSTS).seconds == pytest.approx(0.5632 + 0.15)
    assert tm.step_time("noise", 1024, 4, 0, COSTS).seconds == pytest.approx(0.512 + 0.15)
    # ConAdv with 4 attack workers: trainers 0.512 + 0.15; each attacker 256 * 0.5e-3 + 0.01 + 256 * 1e-5.
    workers = tm.step_time("conadv", 1024, 4, 4, COSTS)
    assert workers.trainer_compute_s == pytest.approx(0.512)
    assert workers.attacker_s == pytest.approx(0.128 + 0.01 + 0.00256)
    assert workers.seconds == pytest.approx(0.662) and workers.devices == 8
    # One slow attack worker holds the step: 1024 * 1e-3 + 0.01 + 1024 * 1e-5.
    slow = tm.Costs(**{**COSTS.__dict__, "per_example_s": {**COSTS.per_example_s, "attack": 1e-3}})
    assert tm.step_time("conadv", 1024, 4, 1, slow).seconds == pytest.approx(1.024 + 0.01 + 0.01024)
    # One device: no all-reduce.
    assert tm.step_time("vanilla", 1024, 1, 0, COSTS).seconds == pytest.approx(1.024)
    run = tm.project("vanilla", 1024, 100, 4, 0, COSTS)
    assert run.wall_s == pytest.approx(40.6) and run.device_hours == pytest.approx(4 * 40.6 / 3600)
    with pytest.raises(UserError, match="attack_workers=2 is for method=conadv"):
        tm.step_time("disadv", 1024, 4, 2, COSTS)


def test_a_calibration_scales_to_resnet50(tmp_path):
    cal = tm.load_calibration(write_calibration(tmp_path / "cal.json"))
    assert cal.network == tm.Network("resnet20", 32, 16, 3, 10) and not cal.published  # width from params
    costs = tm.costs_for(cal, tm.PAPER_NETWORK, hop_latency_s=0.0)
    ratio = 4_089_184_256 / tm.forward_macs(tm.Network("resnet20", 32, 16))
    assert costs.compute_scale == pytest.approx(ratio)
    assert costs.per_example_s["vanilla"] == pytest.approx(1e-3 * ratio)
    assert costs.gradient_bytes == 4 * 25_557_032  # 4 bytes per parameter, as calibrated
    assert costs.transfer_s_per_example == pytest.approx(1e-5 * 49)  # (224 / 32) ** 2 pixels
    assert costs.broadcast_s == pytest.approx(0.01 * 25_557_032 / 272_474)
    assert costs.allreduce_bytes_per_s == 1e9
    assert any("compute scaled from resnet20 width 16 at 32 px" in n for n in costs.notes)
    # No all-reduce measured: the broadcast's bandwidth, said so.
    cal = tm.load_calibration(write_calibration(tmp_path / "b.json", allreduce_bytes_per_s=None))
    costs = tm.costs_for(cal)
    assert costs.allreduce_bytes_per_s == pytest.approx(4 * 272474 / 0.01) and costs.compute_scale == 1
    assert any("not measured" in n for n in costs.notes)


def test_published_anchor_is_labelled():
    anchor = tm.published_anchor()
    assert anchor.published and anchor.describe().startswith("published, not measured here")
    step = tm.step_time("vanilla", 256, 1, 0, tm.costs_for(anchor, tm.PAPER_NETWORK))
    assert step.images_per_s == pytest.approx(2470.0)


@pytest.mark.parametrize("change, fragment", [
    ({"schema": 2}, "schema=2 is not supported; allowed: 1"),
    ({"device": "tpu"}, "device='tpu' is not allowed; allowed: cpu, cuda"),
    ({"params": "many"}, "params='many' is not an integer"),
    ({"per_example_s": {"vanilla": 1.0}}, "per_example_s: train_only is missing"),
    ({"per_example_s": {**SYNTHETIC_CALIBRATION["per_example_s"], "attack": 0}}, "attack=0 must be > 0"),
    ({"broadcast_s": -1}, "broadcast_s=-1 must be > 0"),
    ({"allreduce_bytes_per_s": "fast"}, "allreduce_bytes_per_s='fast' is not a number or null"),
    ({"model": "vgg16"}, "model='vgg16' is not one the throughput model can scale"),
])
def test_malformed_calibrations_are_one_line(tmp_path, change, fragment):
    path = write_calibration(tmp_path / "bad.json", **change)
    with pytest.raises(UserError) as error:
        tm.load_calibration(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and fragment in message, message


def test_unreadable_calibrations_are_one_line(tmp_path):
    missing = tmp_path / "nowhere.json"
    with pytest.raises(UserError, match="does not exist"):
        tm.load_calibration(missing)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(UserError, match="is not valid JSON"):
        tm.load_calibration(tmp_path / "broken.json")
    data = dict(SYNTHETIC_CALIBRATION)
    del data["command"]
    (tmp_path / "short.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="command is missing"):
        tm.load_calibration(tmp_path / "short.json")


def test_the_newest_calibration_of_the_hardware_is_found(tmp_path):
    write_calibration(tmp_path / "cpu-old.json", date="2000-01-01")
    write_calibration(tmp_path / "cpu-new.json", date="2001-01-01")
    write_calibration(tmp_path / "a100.json", device="cuda", device_name="NVIDIA A100-SXM4-80GB")
    assert tm.find_calibration(device="cpu", folder=tmp_path).path.endswith("cpu-new.json")
    assert tm.find_calibration(match=("a100",), device="cuda", folder=tmp_path).path.endswith("a100.json")
    assert tm.find_calibration(match=("h100",), device="cuda", folder=tmp_path) is None
    assert tm.find_calibration(folder=tmp_path / "none") is None


def test_the_estimate_and_its_model_import_no_torch(tmp_path):
    # The analysis modules are checked in tests/test_layers.py; --estimate runs on a login node.
    code = "import sys; import conadv_repro.throughput_model, conadv_repro.launch.estimate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


BAD_BENCHMARK_ARGS = [
    (["--rounds", "0"], "--rounds: 0 is not allowed"),
    (["--rounds", "-2"], "--rounds: -2 is not allowed"),
    (["--save", "{tmp}/missing/cal.json"], "does not exist"),
    (["--save", "{tmp}/a_file/cal.json"], "does not exist"),
    (["--save", "{tmp}"], "is a folder"),
]


def _benchmark_main():
    spec = importlib.util.spec_from_file_location("throughput_benchmark", REPO / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("args, message", BAD_BENCHMARK_ARGS)
def test_the_benchmark_rejects_bad_arguments_before_measuring(tmp_path, capsys, args, message):
    # The measurement takes minutes; these must fail before it starts (in-process: no torch import to wait for).
    (tmp_path / "a_file").write_text("")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    status, out, err = call_main(_benchmark_main(), args, capsys)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and message in lines[0], err
    assert "machine:" not in out, "the measurement started"


def test_the_benchmark_script_itself_rejects_bad_arguments(tmp_path, cli_env):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--rounds", "0"],
                         cwd=tmp_path, capture_output=True, text=True, env=cli_env, timeout=120)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "--rounds: 0 is not allowed" in lines[0], out.stderr
