"""Step times of the engine, in one run on the machine at hand, as ratios.

1. The engine's vanilla step against a minimal plain-PyTorch loop: same network (our split ghost BN),
   same LARS, same data stream. The ratio is the cost of the engine itself (method dispatch, BN routing
   and commit, metrics, the divergence check). Goal: at most 1.05.
2. DisAdv/vanilla and ConAdv/vanilla, and ConAdv concurrent/sequential: the attack on a worker thread
   (CPU) or a side CUDA stream (GPU) against the same attack run in line.
3. The host's waits for the device per engine step (engine/host_syncs.py; goal: 1), counted over one
   more round of each engine variant.

All variants are timed in alternating rounds so that drift of the machine hits them alike.

    python benchmarks/engine_overhead.py                           # the embedded default, this machine
    python benchmarks/engine_overhead.py runtime.device=cuda model.name=resnet50 ...
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from conadv_repro.config import config_from_overrides
from conadv_repro.data.loader import train_micro_batches
from conadv_repro.engine.host_syncs import count_host_syncs
from conadv_repro.engine.trainer import Trainer, build_optimizer
from conadv_repro.errors import cli_entry
from conadv_repro.machine import cpu_name

LONG = "steps=1000000"  # the data stream must outlast every round


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {torch.get_num_threads()} torch threads"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EngineVariant:
    """Consecutive engine steps of one method, read from its own data stream."""

    def __init__(self, overrides: list[str]):
        self.trainer = Trainer(config_from_overrides([*overrides, LONG]), log=lambda _msg: None)
        self.trainer.open_batches(0)
        self.step = 0

    def __call__(self) -> None:
        t = self.trainer
        t.train_step(self.step, t.step_batches(self.step))
        self.step += 1

    def settle(self) -> None:
        """Finish the attack a concurrent executor started for the next step, inside this variant's
        time: left running, it would steal the cores from the next variant's round."""
        self.trainer.method.wait_idle()


class PlainVariant:
    """A minimal PyTorch loop over the same network, optimizer and data stream."""

    def __init__(self, reference: Trainer):
        cfg, bundle, self.device = reference.cfg, reference.bundle, reference.device
        self.model = reference.new_network()
        self.channels_last = reference.channels_last
        self.optimizer = build_optimizer(cfg, self.model, reference.derived.peak_lr)
        self.batches = train_micro_batches(bundle, reference.plan, start_step=0,
                                           end_step=reference.derived.total_steps,
                                           micro_size=reference.derived.micro_batch)
        self.accumulation, self.batch = reference.derived.accumulation, cfg.batch_size
        self.smoothing, self.autocast = cfg.optim.label_smoothing, reference.autocast

    def __call__(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        for _ in range(self.accumulation):
            micro = next(self.batches).to(self.device, channels_last=self.channels_last)
            with self.autocast():
                logits = self.model(micro.inputs)
            loss = F.cross_entropy(logits.float(), micro.targets, label_smoothing=self.smoothing)
            (loss * (micro.targets.shape[0] / self.batch)).backward()
        self.optimizer.step()


def time_steps(fn: Callable[[], None], steps: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if isinstance(fn, EngineVariant):
        fn.settle()
    sync(device)
    return (time.perf_counter() - start) / steps


@cli_entry
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, as for train")
    parser.add_argument("--steps", type=int, default=10, help="steps per timing round (default 10)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    args = parser.parse_args()
    base = ["runtime.threads=0", *args.overrides]
    variants: dict[str, Callable[[], None]] = {"vanilla": EngineVariant([*base, "method=vanilla"])}
    reference = variants["vanilla"].trainer
    device = reference.device
    concurrent = "stream" if device.type == "cuda" else "thread"
    variants["plain"] = PlainVariant(reference)
    variants["disadv"] = EngineVariant([*base, "method=disadv"])
    variants["conadv-sequential"] = EngineVariant([*base, "method=conadv", "conadv.executor=sequential"])
    variants[f"conadv-{concurrent}"] = EngineVariant([*base, "method=conadv", f"conadv.executor={concurrent}"])

    for fn in variants.values():
        time_steps(fn, 2, device)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            times[name].append(time_steps(fn, args.steps, device))
    ms = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    syncs = {}
    for name, fn in variants.items():
        if isinstance(fn, EngineVariant):
            with count_host_syncs(device) as count:
                time_steps(fn, args.steps, device)
            syncs[name] = len(count) / args.steps

    batch = reference.cfg.batch_size
    print(f"machine: {machine(device)}; device {device}; torch {torch.__version__}")
    print(f"setup: {reference.describe()}")
    print(f"median of {args.rounds} alternating rounds of {args.steps} steps:")
    for name, value in ms.items():
        print(f"  {name:20s} {value:9.2f} ms/step  {batch / value * 1e3:10,.0f} img/s")
    print("host syncs per step (goal: 1, after the update is queued): " +
          ", ".join(f"{name} {value:g}" for name, value in syncs.items()))
    print("ratios:")
    print(f"  engine vanilla / plain PyTorch:      {ms['vanilla'] / ms['plain']:.3f}  (goal <= 1.05)")
    print(f"  DisAdv / vanilla:                    {ms['disadv'] / ms['vanilla']:.3f}")
    print(f"  ConAdv ({concurrent}) / vanilla:           {ms[f'conadv-{concurrent}'] / ms['vanilla']:.3f}")
    print(f"  ConAdv {concurrent} / sequential:          "
          f"{ms[f'conadv-{concurrent}'] / ms['conadv-sequential']:.3f}")
    print(f"  DisAdv / ConAdv ({concurrent}):            {ms['disadv'] / ms[f'conadv-{concurrent}']:.3f}")
    for variant in variants.values():
        if isinstance(variant, EngineVariant):
            variant.trainer.close()


if __name__ == "__main__":
    main()
