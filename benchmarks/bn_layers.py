"""The split ghost BN's own time, layer by layer, against torchvision's BatchNorm2d.

`benchmarks/memory.py` times whole networks, where the convolutions dominate and a shared machine's noise
(single rounds scatter by +-20% on a 2-core VM) hides a few percent. This isolates the BN: for every
distinct input shape of the network's BatchNorm layers (recorded by a forward at --size px, batch --batch),
one `SplitBatchNorm2d` with groups of --group examples and one `nn.BatchNorm2d` run forward and backward on
the same input and gradient, in alternating rounds (the order alternates too), in fp32. It prints each
shape's median time and ratio, the sum over the network's layers, and how much the network's step would
grow from the BN alone: the sum's excess over one forward+backward of torchvision's network. That is an
estimate of the BN's share of the ratio `benchmarks/memory.py` measures, not a bound: a layer timed alone
finds its input in the caches and the heap as the network would not.

    python benchmarks/bn_layers.py                        # resnet50, 64 px, batch 32, groups of 8
    python benchmarks/bn_layers.py --size 224 --rounds 15
    python benchmarks/bn_layers.py --threads 1
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from conadv_repro.errors import OneLineParser, UserError, at_least_one, cli_entry, count_at_least
from conadv_repro.machine import cpu_name
from conadv_repro.model.split_bn import SplitBatchNorm2d

MODELS = ("resnet50", "resnet18")
COMMAND = "python benchmarks/bn_layers.py"


def bn_input_shapes(name: str, size: int, batch: int, device: torch.device) -> Counter[tuple[int, ...]]:
    """How many of the network's BatchNorm layers see each input shape."""
    # Eval mode: the same shapes, without train mode's refusal of one value per channel, which main() turns
    # into its own one-line error.
    model = getattr(torchvision.models, name)(num_classes=1000).to(device).eval()
    shapes: Counter[tuple[int, ...]] = Counter()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.register_forward_hook(lambda _m, inputs, _o: shapes.update([tuple(inputs[0].shape)]))
    with torch.no_grad():
        model(torch.randn(batch, 3, size, size, device=device))
    return shapes


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[..., None], device: torch.device, *args: object) -> float:
    sync(device)
    start = time.perf_counter()
    step(*args)
    sync(device)
    return time.perf_counter() - start


def layer_times(shape: tuple[int, ...], group: int, rounds: int, warmup: int,
                device: torch.device) -> tuple[float, float]:
    """Median seconds of one forward+backward of (ours, torchvision's) on an input of `shape`."""
    x = torch.randn(shape, device=device, requires_grad=True)
    grad = torch.randn(shape, device=device)
    modules = {"ours": SplitBatchNorm2d(shape[1], group_size=group).to(device).train(),
               "theirs": nn.BatchNorm2d(shape[1]).to(device).train()}

    def step(module: nn.Module) -> None:
        x.grad = None
        module.zero_grad(set_to_none=True)
        module(x).backward(grad)

    seconds: dict[str, list[float]] = {"ours": [], "theirs": []}
    for index in range(warmup + rounds):
        for name in ("ours", "theirs") if index % 2 else ("theirs", "ours"):
            took = timed(step, device, modules[name])
            if index >= warmup:
                seconds[name].append(took)
    return statistics.median(seconds["ours"]), statistics.median(seconds["theirs"])


def network_step(name: str, size: int, batch: int, rounds: int, device: torch.device) -> float:
    """Median seconds of one forward+backward of torchvision's network, for scale."""
    model = getattr(torchvision.models, name)(num_classes=1000).to(device).train()
    x = torch.randn(batch, 3, size, size, device=device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    step()
    return statistics.median(timed(step, device) for _ in range(rounds))


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog=COMMAND, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="resnet50", help="network whose BN layers to time")
    parser.add_argument("--size", type=at_least_one, default=64, help="image side in px (default 64)")
    parser.add_argument("--batch", type=at_least_one, default=32, help="images per forward (default 32)")
    parser.add_argument("--group", type=at_least_one, default=8, help="examples per BN group (default 8: 4 groups)")
    parser.add_argument("--rounds", type=at_least_one, default=60, help="timed rounds per shape (default 60; >= 5)")
    parser.add_argument("--warmup", type=count_at_least(0), default=5, help="untimed rounds first (default 5)")
    parser.add_argument("--threads", type=at_least_one, default=None,
                        help="torch CPU threads (default: torch's default)")
    args = parser.parse_args(argv)
    if args.batch % args.group:
        raise UserError(f"--batch {args.batch} --group {args.group}: the batch must be whole BN groups "
                        "(e.g. --batch 32 --group 8)")
    if args.rounds < 5:
        raise UserError(f"--rounds {args.rounds} is not allowed; allowed: at least 5 (a median of fewer is noise)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)")
    shapes = bn_input_shapes(args.model, args.size, args.batch, device)
    smallest = min(math.prod(shape[2:]) for shape in shapes)
    if args.group * smallest < 2:
        raise UserError(f"--group {args.group}: a group of {args.group} at {args.size} px holds one value per channel "
                        "in the last BN layers, which has no variance; allowed: a larger --group or --size")
    print(f"split ghost BN against BatchNorm2d, layer by layer, on {where}; torch {torch.__version__}")
    print(f"{args.model} at {args.size} px, batch {args.batch} in groups of {args.group} "
          f"({args.batch // args.group} groups), fp32, median of {args.rounds} alternating rounds per shape")
    total_ours = total_theirs = 0.0
    for shape, count in sorted(shapes.items(), key=lambda item: item[0][1:]):
        ours, theirs = layer_times(shape, args.group, args.rounds, args.warmup, device)
        total_ours += count * ours
        total_theirs += count * theirs
        print(f"  {str(shape):22s} x{count:<3d} ours {ours * 1e6:9.0f} us  torchvision {theirs * 1e6:9.0f} us  "
              f"ratio {ours / theirs:5.2f}  excess {count * (ours - theirs) * 1e3:7.2f} ms")
    step = network_step(args.model, args.size, args.batch, max(11, args.rounds // 4), device)
    excess = total_ours - total_theirs
    print(f"  all {sum(shapes.values())} BN layers: ours {total_ours * 1e3:.2f} ms, torchvision "
          f"{total_theirs * 1e3:.2f} ms, ratio {total_ours / total_theirs:.3f}; excess {excess * 1e3:.1f} ms")
    print(f"  torchvision's {args.model} forward+backward: {step * 1e3:.1f} ms, so the BN alone would make the "
          f"network's step about {1 + excess / step:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
