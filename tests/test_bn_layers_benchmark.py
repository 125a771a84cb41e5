"""benchmarks/bn_layers.py: the split ghost BN's own time layer by layer. Its figures are for docs/speed.md;
here only that it refuses bad arguments in one line before measuring, and that a tiny run counts every BN
layer of the network once and prints the sum and the step's bound."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from tests.helpers import call_main

REPO = Path(__file__).resolve().parents[1]


def _main():
    spec = importlib.util.spec_from_file_location("bn_layers_benchmark", REPO / "benchmarks" / "bn_layers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("args, message", [
    (["--rounds", "4"], "--rounds 4 is not allowed; allowed: at least 5"),
    (["--batch", "30"], "--batch 30 --group 8: the batch must be whole BN groups"),
    (["--model", "vgg16"], "invalid choice: 'vgg16'"),
    (["--model", "resnet18", "--size", "32", "--batch", "8", "--group", "1"],
     "--group 1: a group of 1 at 32 px holds one value per channel"),
    (["--model", "resnet18", "--size", "16", "--batch", "1", "--group", "1"],
     "--group 1: a group of 1 at 16 px holds one value per channel"),
])
def test_bad_arguments_are_one_line_before_measuring(capsys, args, message):
    status, out, err = call_main(_main(), args, capsys)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and message in lines[0], err
    assert "layer by layer" not in out, "the measurement started"


def test_a_tiny_run_counts_every_bn_layer_once(capsys):
    status, out, err = call_main(_main(), ["--model", "resnet18", "--size", "32", "--batch", "8", "--group", "2",
                                           "--rounds", "5", "--warmup", "1"], capsys)
    assert status == 0, err
    counts = [int(n) for n in re.findall(r"\) +x(\d+) +ours", out)]
    assert sum(counts) == 20 and len(counts) == 5, out  # resnet18's 20 BatchNorm layers, 5 input shapes at 32 px
    total = re.search(r"all 20 BN layers: ours ([\d.]+) ms, torchvision ([\d.]+) ms, ratio ([\d.]+)", out)
    assert total and abs(float(total[1]) / float(total[2]) - float(total[3])) < 0.01, out
    assert re.search(r"the BN alone would make the network's step about \d+\.\d{3}x", out), out
