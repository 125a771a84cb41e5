"""Time the engine's training step against a minimal plain-PyTorch loop, in one run.

Both loops train the same network (same architecture, our split ghost BN, our LARS) on the same batch;
the ratio engine/plain is the cost of the engine itself (method dispatch, BN routing and commit,
metrics, the divergence check). Goal: at most 1.05. The two are timed in alternating rounds so that
drift of the machine hits both alike.

    python benchmarks/engine_overhead.py                     # the embedded default on this machine
    python benchmarks/engine_overhead.py runtime.device=cuda model.name=resnet50 data=imagenet ...
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from conadv_repro.config import config_from_overrides
from conadv_repro.engine.trainer import Trainer, build_optimizer
from conadv_repro.errors import cli_entry
from conadv_repro.model.registry import build_model


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {torch.get_num_threads()} torch threads"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(fn, steps: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / steps


@cli_entry
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, as for train")
    parser.add_argument("--steps", type=int, default=20, help="steps per timing round (default 20)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    args = parser.parse_args()
    cfg = config_from_overrides(["runtime.threads=0", *args.overrides])
    trainer = Trainer(cfg, log=lambda _msg: None)
    device = trainer.device
    trainer.open_batches(0)
    micros = list(trainer.step_batches(0))

    def engine_step() -> None:
        trainer.train_step(0, micros)

    torch.manual_seed(cfg.seed)
    bundle = trainer.bundle
    plain_model = build_model(cfg.model, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                              image_size=bundle.image_size, bn_group_size=cfg.bn.group_size,
                              bn_momentum=cfg.bn.momentum, bn_eps=cfg.bn.eps).to(device)
    if trainer.channels_last:
        plain_model = plain_model.to(memory_format=torch.channels_last)
    plain_opt = build_optimizer(cfg, plain_model, trainer.derived.peak_lr)
    on_device = [trainer.to_device(m) for m in micros]
    share = [m.targets.shape[0] / cfg.batch_size for m in on_device]

    def plain_step() -> None:
        plain_opt.zero_grad(set_to_none=True)
        for micro, weight in zip(on_device, share, strict=True):
            with trainer.autocast():
                logits = plain_model(micro.inputs)
            loss = F.cross_entropy(logits.float(), micro.targets, label_smoothing=cfg.optim.label_smoothing)
            (loss * weight).backward()
        plain_opt.step()

    time_steps(engine_step, 3, device)  # warm-up
    time_steps(plain_step, 3, device)
    engine_times, plain_times = [], []
    for _ in range(args.rounds):
        engine_times.append(time_steps(engine_step, args.steps, device))
        plain_times.append(time_steps(plain_step, args.steps, device))
    engine_ms = statistics.median(engine_times) * 1e3
    plain_ms = statistics.median(plain_times) * 1e3
    print(f"machine: {machine(device)}; device {device}; torch {torch.__version__}")
    print(f"setup: {trainer.describe()}")
    print(f"plain PyTorch step: {plain_ms:8.2f} ms  ({cfg.batch_size / plain_ms * 1e3:,.0f} img/s)")
    print(f"engine vanilla step: {engine_ms:7.2f} ms  ({cfg.batch_size / engine_ms * 1e3:,.0f} img/s)")
    print(f"ratio engine/plain: {engine_ms / plain_ms:.3f}  (goal <= 1.05; median of {args.rounds} rounds "
          f"of {args.steps} steps)")
    trainer.close()


if __name__ == "__main__":
    main()
