"""A small performance model of vanilla, DisAdv and ConAdv training, calibrated on measured step times.

Pure functions, no torch: the figures (`analysis/figure4.py`) draw its curves beside the measured and the
paper's throughput, and `python -m conadv_repro.launch EXPERIMENT --estimate` projects a grid's wall time
and GPU-hours with it.

Inputs
------
A *calibration* (a JSON file, usually written by `python benchmarks/throughput.py --save PATH` into
`benchmarks/calibrations/`), measured on one kind of hardware for one network and image size:

    {"schema": 1,
     "machine": "free text, e.g. AMD EPYC 7B13, 2 cores, CPU",
     "device": "cpu" | "cuda", "device_name": "e.g. NVIDIA A100-SXM4-80GB",
     "model": "resnet20", "image_size": 32, "params": 272474, "weights_bytes": 1089896,
     "batch": 128, "command": "the command that measured it", "date": "2025-01-31",
     "per_example_s": {"vanilla": ..., "train_only": ..., "attack": ..., "disadv": ..., "conadv_concurrent": ...},
     "broadcast_s": 0.004, "transfer_s_per_example": 1e-6, "allreduce_bytes_per_s": 2.5e9 or null}

Optional keys: `width` (of the CIFAR-style ResNets; inferred from `params` when absent), `in_channels`
(default 3), `num_classes` (default 10, or 1000 for resnet18/50 at 64 px and more), `stem` (cifar or
imagenet; default as the config's `model.stem=auto`). Other keys are kept as free text and not read.

`per_example_s` are seconds per example of the global batch, measured at `batch` on one device:

- `vanilla`: one vanilla step (forward, backward, update on B clean examples) / B;
- `train_only`: one step on the clean and adversarial branches (2B forwards and backwards), without the
  attack (the adversarial inputs given) / B: a ConAdv trainer's work when attack workers do the attack;
- `attack`: one-step PGD on B examples (a forward and an input-only backward) / B;
- `disadv`: one DisAdv step (attack, then the two-branch step) / B;
- `conadv_concurrent`: one ConAdv step on one device with its concurrent executor (thread or stream) / B.

Communication: `broadcast_s` is one broadcast of `weights_bytes` (theta to the attack workers),
`transfer_s_per_example` sends one adversarial example from an attack worker to a trainer, and
`allreduce_bytes_per_s` is the gradient all-reduce bandwidth. Each may be null: not measured (one device
cannot measure them; `python -m conadv_repro.gpu_check` writes such a calibration, with the reasons under
an optional `not_measured` object). A missing all-reduce bandwidth is taken from the broadcast when that was
measured; whatever is left is assumed from one 200 Gb/s link per GPU (`PUBLISHED_LINK_BYTES_PER_S`), and
every estimate and figure that uses the model says "not measured" beside it.

The model
---------
A step of global batch B on P trainer devices (b = B / P examples each) and N attack devices:

    vanilla                 b * c_vanilla                                       + allreduce(P)
    DisAdv                  b * c_disadv                                        + allreduce(P)
    ConAdv, no workers      b * c_conadv_concurrent                             + allreduce(P)
    ConAdv, N workers       max(b * c_train_only + allreduce(P),
                                (B / N) * c_attack + broadcast + (B / N) * transfer)
    noise control           b * c_train_only                                    + allreduce(P)

    allreduce(P) = 0 for P = 1, else 2 (P - 1) / P * gradient_bytes / bandwidth + 2 (P - 1) * hop_latency

(a ring all-reduce: 2(P-1) messages of 1/P of the gradient each, every one paying one hop latency).
Images/s = B / step time; a run's wall time = its steps x the step time; its GPU-hours = (P + N) x wall.

Assumptions (written on every figure and estimate that uses the model)
----------------------------------------------------------------------
1. Compute per example does not depend on the per-device batch: perfect data-parallel scaling. Small
   per-device batches are less efficient in reality, so the model is optimistic at a few examples per
   device (Figure 4(b)).
2. Another network or image size: compute scales with the ratio of forward multiply-accumulates
   (`forward_macs`: ResNet-50 at 224 px is 4.09 G, the figure torchvision publishes as "GFLOPS";
   the CIFAR-style ResNets' are counted from their layer shapes), gradient and weight bytes with the
   parameter count, transfer time with the pixels per example (C x H x W).
3. The gradient all-reduce is not overlapped with the backward pass (an upper bound on its cost). When the
   calibration has no all-reduce bandwidth, the broadcast's (weights_bytes / broadcast_s) is used; when it
   has neither (or no transfer time), one 200 Gb/s link per GPU is assumed.
4. The broadcast of theta is bandwidth-bound and pipelined: its time does not grow with the number of attack
   workers. Attack workers need theta_t only once per step; with tau = 1 their work for step t+1 overlaps
   the trainers' step t (steady state: the step time is the slower of the two sides).
5. Evaluation, data loading, checkpoints and start-up are not counted.
6. Each device is one GPU (or, for a CPU calibration, one machine like the one measured).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conadv_repro.calibration_files import CALIBRATIONS_ENV, calibrations_dir  # noqa: F401 (part of this module's API)
from conadv_repro.errors import UserError

SCHEMA = 1
PER_EXAMPLE_KEYS = ("vanilla", "train_only", "attack", "disadv", "conadv_concurrent")
CIFAR_DEPTHS = {"resnet8": 1, "resnet14": 2, "resnet20": 3, "resnet32": 5}
# torchvision's ResNets: blocks per stage and the block type.
TORCHVISION_LAYERS = {"resnet18": ((2, 2, 2, 2), "basic"), "resnet50": ((3, 4, 6, 3), "bottleneck")}
# Published per-image forward cost of torchvision's ResNets at 224 px ("GFLOPS" in torchvision's model
# table: multiply-accumulates). `forward_macs` reproduces them from the layer shapes (a test checks it).
PUBLISHED_GMACS_224 = {"resnet50": 4.09, "resnet18": 1.81}
# Each dataset's images as the networks see them: channels, side, classes.
DATASET_SHAPES = {"digits": (1, 16, 10), "cifar10": (3, 32, 10), "imagenet": (3, 224, 1000)}
DEFAULT_HOP_LATENCY_S = 5e-6
GRADIENT_BYTES_PER_PARAM = 4  # fp32 gradients (autocast keeps the weights and their gradients in fp32)
BYTES_PER_INPUT_VALUE = 4  # an adversarial example travels as fp32


# --------------------------------------------------------------------------------------- networks


@dataclass(frozen=True)
class Network:
    """A network at an input size: what compute and bytes scale with."""

    name: str
    image_size: int
    width: int = 16
    in_channels: int = 3
    num_classes: int = 10
    stem: str = "auto"

    def resolved_stem(self) -> str:
        if self.stem != "auto":
            return self.stem
        return "cifar" if self.name in CIFAR_DEPTHS else "imagenet"

    def describe(self) -> str:
        width = f" width {self.width}" if self.name in CIFAR_DEPTHS else ""
        return f"{self.name}{width} at {self.image_size} px"


def _conv_out(size: int, stride: int) -> int:
    """Output side of a 3x3 (pad 1) or 1x1 (pad 0) convolution: ceil(size / stride)."""
    return -(-size // stride)


def _layers(net: Network) -> tuple[list[tuple[int, int, int, int]], int]:
    """The network's convolutions as (output side, in channels, out channels, kernel) and its fc input width."""
    if net.image_size <= 0:
        raise UserError(f"image size {net.image_size} must be > 0")
    convs: list[tuple[int, int, int, int]] = []
    side = net.image_size
    if net.name in CIFAR_DEPTHS:
        if net.resolved_stem() != "cifar":
            raise UserError(f"{net.name} has only the cifar stem")
        w = net.width
        convs.append((side, net.in_channels, w, 3))
        in_ch = w
        for stage, out_ch in enumerate((w, 2 * w, 4 * w)):
            for block in range(CIFAR_DEPTHS[net.name]):
                stride = 2 if stage > 0 and block == 0 else 1
                side = _conv_out(side, stride)
                convs += [(side, in_ch, out_ch, 3), (side, out_ch, out_ch, 3)]
                if stride != 1 or in_ch != out_ch:
                    convs.append((side, in_ch, out_ch, 1))
                in_ch = out_ch
        return convs, in_ch
    if net.name not in TORCHVISION_LAYERS:
        raise UserError(f"the throughput model knows no network {net.name!r}; allowed: "
                        f"{', '.join([*CIFAR_DEPTHS, *TORCHVISION_LAYERS])}")
    blocks, kind = TORCHVISION_LAYERS[net.name]
    if net.resolved_stem() == "imagenet":
        side = _conv_out(side, 2)  # 7x7, stride 2, pad 3
        convs.append((side, net.in_channels, 64, 7))
        side = _conv_out(side, 2)  # 3x3 max-pool, stride 2, pad 1
    else:
        convs.append((side, net.in_channels, 64, 3))
    in_ch = 64
    for stage, count in enumerate(blocks):
        planes = 64 * 2 ** stage
        for block in range(count):
            stride = 2 if stage > 0 and block == 0 else 1
            before = side
            side = _conv_out(side, stride)
            if kind == "basic":
                out_ch = planes
                convs += [(side, in_ch, planes, 3), (side, planes, planes, 3)]
            else:  # v1.5: the stride is in the 3x3 convolution
                out_ch = 4 * planes
                convs += [(before, in_ch, planes, 1), (side, planes, planes, 3), (side, planes, out_ch, 1)]
            if stride != 1 or in_ch != out_ch:
                convs.append((side, in_ch, out_ch, 1))
            in_ch = out_ch
    return convs, in_ch


def forward_macs(net: Network) -> int:
    """Multiply-accumulates of one image's forward pass: convolutions and the fc layer (BN, ReLU, pooling
    and the residual additions are left out, as in the published figures)."""
    convs, features = _layers(net)
    return sum(side * side * c_in * c_out * k * k for side, c_in, c_out, k in convs) + features * net.num_classes


def smallest_bn_side(net: Network) -> int:
    """The side of the smallest feature map a BatchNorm normalises (every convolution is followed by one)."""
    convs, _ = _layers(net)
    return min(side for side, _, _, _ in convs)


def param_count(net: Network) -> int:
    """Trainable parameters: convolution weights, BN scales and shifts, the fc weights and biases."""
    convs, features = _layers(net)
    return sum(c_in * c_out * k * k + 2 * c_out for _, c_in, c_out, k in convs) + features * net.num_classes \
        + net.num_classes


def network_of_config(flat: Mapping[str, Any]) -> Network:
    """The network a run config (dotted keys) trains, at its input size."""
    data = str(flat.get("data", "digits"))
    channels, side, classes = DATASET_SHAPES.get(data, (3, 32, 10))
    size = int(flat.get("model.input_size") or 0) or side
    return Network(name=str(flat.get("model.name", "resnet8")), image_size=size,
                   width=int(flat.get("model.width", 16)), in_channels=channels, num_classes=classes,
                   stem=str(flat.get("model.stem", "auto")))


PAPER_NETWORK = Network("resnet50", 224, in_channels=3, num_classes=1000)


# ------------------------------------------------------------------------------------ calibration


@dataclass(frozen=True)
class Calibration:
    """Measured (or, for the published fallback, stated) costs on one kind of hardware."""

    machine: str
    device: str
    device_name: str
    network: Network
    params: int
    weights_bytes: int
    batch: int
    command: str
    date: str
    per_example_s: Mapping[str, float]
    broadcast_s: float | None  # None: not measured (one device)
    transfer_s_per_example: float | None
    allreduce_bytes_per_s: float | None
    source: str = "measured"  # or "published"
    path: str = ""

    @property
    def published(self) -> bool:
        return self.source == "published"

    def describe(self) -> str:
        """One line: where the numbers come from and on which hardware."""
        if self.published:
            return f"published, not measured here: {self.machine}"
        where = self.path or "calibration"
        return (f"{where}: measured on {self.machine} ({self.device_name}), {self.network.describe()}, "
                f"batch {self.batch}, {self.date}")


def _number(data: Mapping[str, Any], key: str, where: str, *, minimum: float = 0.0, strict: bool = False,
            optional: bool = False, integer: bool = False) -> Any:
    if key not in data:
        raise UserError(f"{where}: {key} is missing")
    value = data[key]
    if value is None and optional:
        return None
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(float(value)):
        raise UserError(f"{where}: {key}={value!r} is not {'an integer' if integer else 'a number'}"
                        + (" or null" if optional else ""))
    if value < minimum or (strict and value <= minimum):
        raise UserError(f"{where}: {key}={value!r} must be {'>' if strict else '>='} {minimum:g}")
    return value


def _text(data: Mapping[str, Any], key: str, where: str, choices: tuple[str, ...] | None = None) -> str:
    if key not in data:
        raise UserError(f"{where}: {key} is missing")
    value = data[key]
    if not isinstance(value, str):
        raise UserError(f"{where}: {key}={value!r} is not a string")
    if choices is not None and value not in choices:
        raise UserError(f"{where}: {key}={value!r} is not allowed; allowed: {', '.join(choices)}")
    return value


def infer_width(name: str, image_size: int, params: int, in_channels: int, num_classes: int) -> int:
    """The width of a CIFAR-style ResNet whose parameter count is `params` (the closest one)."""
    best = min(range(1, 257), key=lambda w: abs(param_count(Network(name, image_size, w, in_channels,
                                                                      num_classes)) - params))
    return best


def parse_calibration(data: Any, where: str = "calibration") -> Calibration:
    """A calibration from its JSON object; every problem is a one-line UserError naming `where`."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: not a JSON object")
    schema = data.get("schema")
    if schema != SCHEMA:
        raise UserError(f"{where}: schema={schema!r} is not supported; allowed: {SCHEMA}")
    machine = _text(data, "machine", where)
    device = _text(data, "device", where, ("cpu", "cuda"))
    device_name = _text(data, "device_name", where)
    model = _text(data, "model", where)
    image_size = _number(data, "image_size", where, integer=True, minimum=1)
    params = _number(data, "params", where, integer=True, minimum=1)
    weights_bytes = _number(data, "weights_bytes", where, integer=True, minimum=1)
    batch = _number(data, "batch", where, integer=True, minimum=1)
    command = _text(data, "command", where)
    date = _text(data, "date", where)
    per = data.get("per_example_s")
    if not isinstance(per, dict):
        raise UserError(f"{where}: per_example_s is missing or not an object with {', '.join(PER_EXAMPLE_KEYS)}")
    per_example = {key: float(_number(per, key, f"{where}: per_example_s", strict=True))
                   for key in PER_EXAMPLE_KEYS}
    broadcast = _number(data, "broadcast_s", where, strict=True, optional=True)
    transfer = _number(data, "transfer_s_per_example", where, optional=True)
    allreduce = _number(data, "allreduce_bytes_per_s", where, strict=True, optional=True)
    in_channels = _number(data, "in_channels", where, integer=True, minimum=1) if "in_channels" in data else 3
    default_classes = 1000 if model in TORCHVISION_LAYERS and image_size >= 64 else 10
    num_classes = _number(data, "num_classes", where, integer=True, minimum=1) if "num_classes" in data \
        else default_classes
    stem = _text(data, "stem", where, ("auto", "cifar", "imagenet")) if "stem" in data else "auto"
    if model in CIFAR_DEPTHS:
        width = _number(data, "width", where, integer=True, minimum=1) if "width" in data else \
            infer_width(model, image_size, params, in_channels, num_classes)
    elif model in TORCHVISION_LAYERS:
        width = 16
        if stem == "auto" and image_size < 64:
            stem = "cifar"
    else:
        raise UserError(f"{where}: model={model!r} is not one the throughput model can scale; allowed: "
                        f"{', '.join([*CIFAR_DEPTHS, *TORCHVISION_LAYERS])}")
    network = Network(model, image_size, width, in_channels, num_classes, stem)
    return Calibration(machine=machine, device=device, device_name=device_name, network=network, params=params,
                       weights_bytes=weights_bytes, batch=batch, command=command, date=date,
                       per_example_s=per_example, broadcast_s=None if broadcast is None else float(broadcast),
                       transfer_s_per_example=None if transfer is None else float(transfer),
                       allreduce_bytes_per_s=None if allreduce is None else float(allreduce), path=where)


def load_calibration(path: str | Path) -> Calibration:
    """Read and validate a calibration file; a missing, unreadable or malformed file is one line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"calibration {path} does not exist") from None
    except OSError as error:
        raise UserError(f"calibration {path} cannot be read ({error.strerror or error})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"calibration {path} is not valid JSON ({error.msg}, line {error.lineno})") from None
    return parse_calibration(data, _shown(path))


def _shown(path: Path) -> str:
    """The path as the user knows it: relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# The fallback when no calibration of the hardware exists: one published number, the rest from the cost
# model of docs (forward 1, full backward 2, input-only backward about 1) and assumed network figures.
PUBLISHED_A100_IMG_S = 2470.0
PUBLISHED_LINK_BYTES_PER_S = 25e9  # one 200 Gb/s HDR InfiniBand link per GPU: assumed, not measured


def published_anchor() -> Calibration:
    """NVIDIA's published ResNet-50 v1.5 training throughput on one A100 (AMP, about 2,470 img/s,
    NVIDIA DeepLearningExamples). Only the vanilla rate is published; the others follow the cost model
    (a vanilla step is 3 units per example: forward 1 + backward 2; the two-branch step 6; the attack 2;
    DisAdv 8; ConAdv on one GPU no faster than DisAdv, since full-size kernels leave a GPU no idle time to
    fill). Communication assumes one 200 Gb/s link per GPU. Labelled "published, not measured here"."""
    vanilla = 1.0 / PUBLISHED_A100_IMG_S
    params = 25_557_032
    weights = params * GRADIENT_BYTES_PER_PARAM
    example = 3 * 224 * 224 * BYTES_PER_INPUT_VALUE
    return Calibration(
        machine="NVIDIA A100, ResNet-50 v1.5 with AMP, about 2,470 img/s (NVIDIA DeepLearningExamples); "
                "DisAdv/ConAdv costs from the cost model (forward 1, backward 2, attack 2 units); "
                "200 Gb/s per GPU assumed for communication",
        device="cuda", device_name="NVIDIA A100 (published)", network=PAPER_NETWORK, params=params,
        weights_bytes=weights, batch=256, command="(published)", date="(published)",
        per_example_s={"vanilla": vanilla, "train_only": 2 * vanilla, "attack": 2 / 3 * vanilla,
                       "disadv": 8 / 3 * vanilla, "conadv_concurrent": 8 / 3 * vanilla},
        broadcast_s=weights / PUBLISHED_LINK_BYTES_PER_S,
        transfer_s_per_example=example / PUBLISHED_LINK_BYTES_PER_S,
        allreduce_bytes_per_s=PUBLISHED_LINK_BYTES_PER_S, source="published")


# ---------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Costs:
    """Per-example compute and communication costs of one network on the calibration's hardware."""

    network: Network
    per_example_s: Mapping[str, float]
    gradient_bytes: float
    weights_bytes: float
    broadcast_s: float
    transfer_s_per_example: float
    allreduce_bytes_per_s: float
    hop_latency_s: float = DEFAULT_HOP_LATENCY_S
    compute_scale: float = 1.0
    notes: tuple[str, ...] = field(default_factory=tuple)
    # Of "broadcast", "transfer", "allreduce": costs the calibration did not measure (assumed, see costs_for).
    not_measured: tuple[str, ...] = ()


def costs_for(calibration: Calibration, network: Network | None = None, *,
              hop_latency_s: float = DEFAULT_HOP_LATENCY_S) -> Costs:
    """The calibration's costs carried over to `network` (default: the calibrated one): compute by the
    ratio of forward MACs, bytes by the ratio of parameters, transfers by the pixels per example."""
    base = calibration.network
    target = network or base
    compute = forward_macs(target) / forward_macs(base)
    bytes_ratio = param_count(target) / param_count(base)
    pixels = (target.in_channels * target.image_size ** 2) / (base.in_channels * base.image_size ** 2)
    weights = calibration.weights_bytes * bytes_ratio
    bandwidth = calibration.allreduce_bytes_per_s
    notes, not_measured = [], []
    link = f"one {PUBLISHED_LINK_BYTES_PER_S * 8 / 1e9:g} Gb/s link per GPU assumed"
    broadcast = calibration.broadcast_s
    if broadcast is None:
        broadcast = calibration.weights_bytes / PUBLISHED_LINK_BYTES_PER_S
        not_measured.append("broadcast")
        notes.append(f"theta broadcast not measured (the calibration has one device): {link}")
    transfer = calibration.transfer_s_per_example
    if transfer is None:
        base_example = base.in_channels * base.image_size ** 2 * BYTES_PER_INPUT_VALUE
        transfer = base_example / PUBLISHED_LINK_BYTES_PER_S
        not_measured.append("transfer")
        notes.append(f"adversarial example transfer not measured (the calibration has one device): {link}")
    if bandwidth is None:
        not_measured.append("allreduce")
        if calibration.broadcast_s is not None:
            bandwidth = calibration.weights_bytes / calibration.broadcast_s
            notes.append("all-reduce bandwidth not measured: the broadcast's (weights_bytes / broadcast_s) is used")
        else:
            bandwidth = PUBLISHED_LINK_BYTES_PER_S
            notes.append(f"all-reduce bandwidth not measured (the calibration has one device): {link}")
    if target != base:
        notes.append(f"compute scaled from {base.describe()} ({forward_macs(base) / 1e6:,.1f} M MACs per image) "
                     f"to {target.describe()} ({forward_macs(target) / 1e6:,.1f} M): x{compute:.4g}")
    bytes_per_param = calibration.weights_bytes / calibration.params  # the gradients travel as the weights are kept
    return Costs(network=target,
                 per_example_s={k: v * compute for k, v in calibration.per_example_s.items()},
                 gradient_bytes=param_count(target) * bytes_per_param,
                 weights_bytes=weights, broadcast_s=broadcast * bytes_ratio,
                 transfer_s_per_example=transfer * pixels,
                 allreduce_bytes_per_s=bandwidth, hop_latency_s=hop_latency_s, compute_scale=compute,
                 notes=tuple(notes), not_measured=tuple(not_measured))


def allreduce_s(nbytes: float, devices: int, bytes_per_s: float, hop_latency_s: float = 0.0) -> float:
    """A ring all-reduce of `nbytes` over `devices`: 2(P-1)/P * bytes / bandwidth + 2(P-1) hop latencies."""
    if devices <= 1:
        return 0.0
    return 2 * (devices - 1) / devices * nbytes / bytes_per_s + 2 * (devices - 1) * hop_latency_s


@dataclass(frozen=True)
class StepTime:
    """One step's time and what it is made of (seconds)."""

    seconds: float
    batch: int
    trainers: int
    attack_workers: int
    trainer_compute_s: float
    allreduce_s: float
    attacker_s: float = 0.0  # an attack worker's cycle: attack + broadcast + transfer (0 without workers)

    @property
    def images_per_s(self) -> float:
        return self.batch / self.seconds

    @property
    def images_per_ms(self) -> float:
        return self.images_per_s / 1000.0

    @property
    def devices(self) -> int:
        return self.trainers + self.attack_workers


METHOD_COST = {"vanilla": "vanilla", "disadv": "disadv", "noise": "train_only"}


def step_time(method: str, batch: int, trainers: int, attack_workers: int, costs: Costs) -> StepTime:
    """The model's step time of `method` at global batch `batch` on `trainers` + `attack_workers` devices."""
    if trainers < 1:
        raise UserError(f"trainers={trainers} must be >= 1")
    if attack_workers < 0 or (attack_workers and method != "conadv"):
        raise UserError(f"attack_workers={attack_workers} is for method=conadv only and must be >= 0")
    per = costs.per_example_s
    local = batch / trainers
    reduce = allreduce_s(costs.gradient_bytes, trainers, costs.allreduce_bytes_per_s, costs.hop_latency_s)
    if method == "conadv":
        if attack_workers == 0:
            compute = local * per["conadv_concurrent"]
            return StepTime(compute + reduce, batch, trainers, 0, compute, reduce)
        compute = local * per["train_only"]
        share = batch / attack_workers
        attacker = share * per["attack"] + costs.broadcast_s + share * costs.transfer_s_per_example
        return StepTime(max(compute + reduce, attacker), batch, trainers, attack_workers, compute, reduce, attacker)
    if method not in METHOD_COST:
        raise UserError(f"the throughput model knows no method {method!r}; allowed: vanilla, disadv, conadv, noise")
    compute = local * per[METHOD_COST[method]]
    return StepTime(compute + reduce, batch, trainers, 0, compute, reduce)


@dataclass(frozen=True)
class Projection:
    """A run's projected cost."""

    step: StepTime
    steps: int

    @property
    def wall_s(self) -> float:
        return self.step.seconds * self.steps

    @property
    def device_hours(self) -> float:
        return self.step.devices * self.wall_s / 3600.0


def project(method: str, batch: int, steps: int, trainers: int, attack_workers: int, costs: Costs) -> Projection:
    return Projection(step_time(method, batch, trainers, attack_workers, costs), steps)


def _time(seconds: float) -> str:
    return f"{seconds:.3g} s" if seconds >= 1 else f"{seconds * 1e3:.3g} ms" if seconds >= 1e-3 \
        else f"{seconds * 1e6:.3g} us"


def assumptions_text(costs: Costs, calibration: Calibration) -> list[str]:
    """The assumptions behind a projection, as short lines for a figure or a terminal."""
    lines = [f"calibration: {calibration.describe()}"]
    lines += list(costs.notes)

    def measured(cost: str) -> str:
        return " (not measured)" if cost in costs.not_measured else ""

    lines += [
        "compute per example independent of the per-device batch (perfect data-parallel scaling)",
        f"ring all-reduce of {costs.gradient_bytes / 1e6:,.1f} MB at {costs.allreduce_bytes_per_s / 1e9:.3g} GB/s"
        f"{measured('allreduce')}, {costs.hop_latency_s * 1e6:g} us per hop, not overlapped with the backward pass",
        f"theta broadcast {_time(costs.broadcast_s)}{measured('broadcast')}, adversarial example transfer "
        f"{_time(costs.transfer_s_per_example)} each{measured('transfer')}; attack workers overlap the trainers' "
        "step (tau=1)",
        "evaluation, data loading, checkpoints and start-up not counted",
    ]
    return lines


# ------------------------------------------------------------------------------- finding calibrations

PUBLISHED = "published"


def available_calibrations(folder: Path | None = None) -> list[Calibration]:
    """Every calibration file in the folder (a malformed one is a one-line error naming it)."""
    folder = calibrations_dir() if folder is None else folder
    return [load_calibration(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def find_calibration(*, match: tuple[str, ...] = (), device: str | None = None,
                     folder: Path | None = None) -> Calibration | None:
    """The newest calibration (by date, then file name) of `device` (cpu or cuda, any when None) whose
    device name or machine contains one of `match` (case-insensitive; any when empty); None if none."""
    found = [c for c in available_calibrations(folder) if device is None or c.device == device]
    wanted = tuple(m.lower() for m in match if m)
    if wanted:
        found = [c for c in found if any(m in f"{c.device_name} {c.machine}".lower() for m in wanted)]
    return max(found, key=lambda c: (c.date, c.path)) if found else None


def calibration_from_choice(choice: str) -> Calibration:
    """`--calibration PATH` or `--calibration published`."""
    return published_anchor() if choice == PUBLISHED else load_calibration(choice)
