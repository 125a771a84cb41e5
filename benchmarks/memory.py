"""Memory and time of the suite's networks (split ghost BN) against torchvision's (plain BatchNorm), in one run.

For each network (default: resnet50 and resnet18, at --size px, batch --batch, BN groups of --group):

1. Saved bytes: what one forward saves for backward, per image (unique storages; the slope between the
   batch and half of it, so weights saved by the convolutions are left out), in fp32 and under bf16
   autocast. Goal for resnet50: at most 1.05x torchvision's.
2. Time: one forward and backward in fp32, ours and torchvision's in alternating rounds (the order
   alternates too) after a warm-up; the median of the rounds' ratios, their spread and the ratio of the
   fastest rounds (the least disturbed on a shared machine), on a CPU at one torch thread and at torch's
   default, with the minor page faults of a step. Twice on a CPU (--heap): with glibc's heap as it is,
   which returns large freed blocks to the system and faults their pages in again at the next
   allocation, and then with glibc told to keep what is freed, as a GPU's caching allocator does (the
   split BN allocates its groups' outputs before joining them, so it meets that cost more than
   torchvision's BatchNorm). Goal for resnet50: at most 1.05. (bf16 on a CPU without bf16 units would
   measure the CPU, not the code.)
3. On CUDA: the peak memory of one train step per method (vanilla, DisAdv, ConAdv on the side stream) at
   micro-batches 128 and 256, ResNet-50 at 224 px in bf16 channels_last (gpu-check's memory section).

`--save NAME` writes benchmarks/calibrations/memory/NAME.json, which `launch` and `--estimate` read to warn
when a profile's GPUs cannot hold a run's micro-batch: on CUDA the measured peaks; on a CPU a model from the
bytes ResNet-50 saves at 224 px under bf16 (a lower bound: conadv_repro/memory_model.py).

    python benchmarks/memory.py                                  # this machine, the figures of docs/speed.md
    python benchmarks/memory.py --models resnet50 --rounds 15
    python benchmarks/memory.py --save amd-epyc-2-cores          # also the memory calibration
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from conadv_repro.atomic import atomic_write_json
from conadv_repro.errors import (
    OneLineParser,
    UserError,
    at_least_one,
    calibration_name,
    check_writable_folder,
    cli_entry,
)
from conadv_repro.gpu_check.memory import activation_bytes_per_image, saved_tensor_calibration
from conadv_repro.machine import cpu_name
from conadv_repro.memory_model import MemoryCalibration, memory_calibrations_dir
from conadv_repro.model.split_bn import convert_to_split_bn

MODELS = ("resnet50", "resnet18")
GOAL = 1.05
MIB = 2 ** 20
COMMAND = "python benchmarks/memory.py"


def thread_list(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 1,2") from None
    if not counts or any(c < 1 for c in counts):
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; allowed: integers >= 1, e.g. 1,2")
    return counts


def networks(name: str, group: int, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """(ours, torchvision's): the same torchvision builder, ours with every BatchNorm split (train mode)."""
    torch.manual_seed(0)
    ours = convert_to_split_bn(getattr(torchvision.models, name)(num_classes=1000), group_size=group, momentum=0.1,
                               eps=1e-5)
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, name)(num_classes=1000)
    return ours.to(device).train(), theirs.to(device).train()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_backward(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(x).float().sum().backward()
    return step


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters (malloc.h)
HEAPS = ("stock", "caching", "both")


def keep_freed_memory() -> bool:
    """Make glibc keep what is freed, as a GPU's caching allocator keeps its blocks: no trimming of the heap's
    top and no mmap for large blocks (whose munmap makes the next allocation fault its pages in again).
    Process-wide and for good, so it comes after the stock rows. False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in
               ((M_MMAP_THRESHOLD, 2 ** 30), (M_TRIM_THRESHOLD, 2 ** 31 - 1), (M_TOP_PAD, 2 ** 28)))


def time_ratio(ours: nn.Module, theirs: nn.Module, x: torch.Tensor, rounds: int, warmup: int) -> dict[str, float]:
    steps = {"ours": forward_backward(ours, x), "theirs": forward_backward(theirs, x)}
    seconds: dict[str, list[float]] = {"ours": [], "theirs": []}
    faults: dict[str, list[int]] = {"ours": [], "theirs": []}
    for index in range(warmup + rounds):
        order = ("ours", "theirs") if index % 2 else ("theirs", "ours")
        for name in order:
            sync(x.device)
            before, t0 = minor_faults(), time.perf_counter()
            steps[name]()
            sync(x.device)
            if index >= warmup:
                seconds[name].append(time.perf_counter() - t0)
                faults[name].append(minor_faults() - before)
    ratios = sorted(a / b for a, b in zip(seconds["ours"], seconds["theirs"], strict=True))
    return {"ours_s": statistics.median(seconds["ours"]), "theirs_s": statistics.median(seconds["theirs"]),
            "ratio": statistics.median(ratios), "low": ratios[0], "high": ratios[-1],
            "fastest": min(seconds["ours"]) / min(seconds["theirs"]),
            "ours_faults": statistics.median(faults["ours"]), "theirs_faults": statistics.median(faults["theirs"])}


def measure_bytes(name: str, args: argparse.Namespace, device: torch.device) -> None:
    ours, theirs = networks(name, args.group, device)

    def make(batch: int) -> torch.Tensor:
        return torch.randn(batch, 3, args.size, args.size, device=device)

    half = args.batch // 2
    print(f"{name} at {args.size} px, batch {args.batch} in BN groups of {args.group} ({args.batch // args.group} "
          "groups) against torchvision's BatchNorm over the whole batch")
    for bf16 in (False, True):
        mine, _ = activation_bytes_per_image(ours, make, (half, args.batch), bf16=bf16)
        plain, _ = activation_bytes_per_image(theirs, make, (half, args.batch), bf16=bf16)
        verdict = f"(goal <= {GOAL}: {'met' if mine / plain <= GOAL else 'MISSED'})" if name == "resnet50" else ""
        print(f"  saved for backward, {'bf16 autocast' if bf16 else 'fp32':13s}: {mine / MIB:7.3f} MiB/image, "
              f"torchvision {plain / MIB:7.3f} MiB/image, ratio {mine / plain:.3f} {verdict}")


def measure_time(name: str, args: argparse.Namespace, device: torch.device, thread_counts: list[int],
                 heap: str) -> None:
    ours, theirs = networks(name, args.group, device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    for threads in thread_counts if device.type == "cpu" else [0]:
        if threads:
            torch.set_num_threads(threads)
        timing = time_ratio(ours, theirs, x, args.rounds, args.warmup)
        verdict = f"(goal <= {GOAL}: {'met' if timing['ratio'] <= GOAL else 'MISSED'})" if name == "resnet50" else ""
        where = f" {threads} thread{'s' if threads > 1 else ''}," if threads else ""
        faults = (f"; minor page faults per step {timing['ours_faults']:,.0f}, torchvision "
                  f"{timing['theirs_faults']:,.0f}") if device.type == "cpu" else ""
        print(f"  {name} forward+backward fp32,{where} {heap} heap: {timing['ours_s'] * 1e3:7.1f} ms, torchvision "
              f"{timing['theirs_s'] * 1e3:7.1f} ms; ratio {timing['ratio']:.3f} (median of {args.rounds} rounds, "
              f"{timing['low']:.3f}-{timing['high']:.3f}; fastest rounds {timing['fastest']:.3f}) {verdict}{faults}")


def cpu_calibration(argv: list[str]) -> MemoryCalibration:
    """The CPU's memory model of ResNet-50 at 224 px in bf16 (the paper preset), from the bytes it saves."""
    model, _ = networks("resnet50", 2, torch.device("cpu"))
    per_image, fixed = activation_bytes_per_image(
        model, lambda b: torch.randn(b, 3, 224, 224), (2, 4), bf16=True)
    return saved_tensor_calibration(
        model_name="resnet50", image_size=224, autocast="bf16", params=sum(p.numel() for p in model.parameters()),
        per_image=per_image, forward_fixed=max(fixed, 0.0), tau=1,
        machine=f"{cpu_name()}, CPU (a model from saved tensors)", command=" ".join([COMMAND, *argv]))


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog=COMMAND, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, of resnet50 and resnet18")
    parser.add_argument("--size", type=at_least_one, default=64, help="image side in px (default 64)")
    parser.add_argument("--batch", type=at_least_one, default=32, help="images per forward (default 32)")
    parser.add_argument("--group", type=at_least_one, default=8, help="examples per BN group (default 8: 4 groups)")
    parser.add_argument("--rounds", type=at_least_one, default=15, help="timed rounds (default 15; at least 5)")
    parser.add_argument("--warmup", type=at_least_one, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--threads", type=thread_list, default=None, metavar="N[,N]",
                        help="torch CPU threads of the timing, each in turn (default: 1 and torch's default)")
    parser.add_argument("--heap", choices=HEAPS, default="both",
                        help="on a CPU, time with glibc's heap as it is (stock), keeping freed memory as a GPU's "
                             "caching allocator does (caching), or both in turn (default)")
    parser.add_argument("--save", type=calibration_name, default=None, metavar="NAME",
                        help="write benchmarks/calibrations/memory/NAME.json for launch and --estimate")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models or any(m not in MODELS for m in models):
        raise UserError(f"--models {args.models!r} is not allowed; allowed: a comma-separated list of "
                        f"{', '.join(MODELS)}")
    if args.batch % args.group or args.batch // args.group < 4 or (args.batch // 2) % args.group:
        raise UserError(f"--batch {args.batch} --group {args.group}: the batch must hold at least 4 BN groups and "
                        "its half whole groups (e.g. --batch 32 --group 8)")
    if args.rounds < 5:
        raise UserError(f"--rounds {args.rounds} is not allowed; allowed: at least 5 (a median of fewer is noise)")
    save_to = None if args.save is None else memory_calibrations_dir() / f"{args.save}.json"
    if save_to is not None:
        check_writable_folder(save_to.parent, "--save")
    thread_counts = args.threads or sorted({1, torch.get_num_threads()})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{cpu_name()}, {os.cpu_count()} cores"
    print(f"memory benchmark on {where}; torch {torch.__version__}, torchvision {torchvision.__version__}")
    for name in models:
        measure_bytes(name, args, device)
    if device.type == "cuda":
        for name in models:
            measure_time(name, args, device, [0], "caching")
    else:
        if args.heap in ("stock", "both"):
            for name in models:
                measure_time(name, args, device, thread_counts, "stock")
        if args.heap in ("caching", "both"):
            if keep_freed_memory():
                for name in models:
                    measure_time(name, args, device, thread_counts, "caching")
            else:
                print("  (no caching-heap rows: the C library is not glibc)")
    if device.type == "cuda":
        from conadv_repro.gpu_check.memory_section import memory_section
        from conadv_repro.gpu_check.plan import GPU
        from conadv_repro.gpu_check.report import Report

        memory_section(GPU, Report(), argv, save_to, command=COMMAND, write=save_to is not None)
    elif save_to is not None:
        calibration = cpu_calibration(argv)
        atomic_write_json(save_to, calibration.to_dict())
        print(f"memory calibration written to {save_to}: {calibration.describe()}")
        for method, memory in calibration.methods.items():
            print(f"  {method:8s} {memory.fixed_bytes / 2**30:5.2f} GiB + {memory.bytes_per_image / MIB:6.1f} MiB "
                  f"per image: {memory.bytes_at(256) / 2**30:5.1f} GiB at micro-batch 256")
    return 0


if __name__ == "__main__":
    sys.exit(main())
