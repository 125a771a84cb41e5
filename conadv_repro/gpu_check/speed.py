"""Section 2: images/s of the engine's step against a plain PyTorch loop, in one run, with the suite's goals.

Variants, each at every micro-batch (one micro-batch a step) and timed in alternating rounds so that
drift of the machine (clocks, temperature) hits them alike:

- vanilla, DisAdv, ConAdv (its concurrent executor: the side CUDA stream on a GPU) through the engine's
  `Trainer.train_step`, on synthetic batches made on the device (synthetic.py);
- train-only: DisAdv's two branches with no attack (methods/train_only.py, as benchmarks/throughput.py);
- attack alone: one attack of the micro-batch;
- a plain loop over our network and LARS (what the engine adds: method dispatch, BN routing and commit,
  the divergence check), and a minimal PyTorch + torchvision loop (torchvision's ResNet with its cuDNN
  BatchNorm, SGD, bf16 autocast, channels_last): the reference of the speed goal.

A round of a variant is `steps_per_round` steps between two device synchronisations, and it waits for an
attack ConAdv started beside its last step, so that every round holds the same work; the warm-up steps
(allocator, cuDNN's algorithm choice, the first snapshots) are left out. Reported: the median over rounds
and the spread (slowest and fastest round).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from conadv_repro.config import Config, config_from_overrides
from conadv_repro.distributed.attack_link import flatten
from conadv_repro.engine.trainer import build_optimizer
from conadv_repro.gpu_check.device import release, sync
from conadv_repro.gpu_check.plan import Plan
from conadv_repro.gpu_check.report import CheckFailed, Report
from conadv_repro.gpu_check.synthetic import SyntheticTrainer
from conadv_repro.machine import cpu_name
from conadv_repro.methods.train_only import TrainOnly

GOAL_PLAIN_RATIO = 0.95  # engine vanilla >= 0.95 x the plain PyTorch + torchvision loop
GOAL_CONADV_SLACK = 1.02  # ConAdv's median step no slower than DisAdv's, within 2%
GOAL_RESNET50_IMG_S = 3000.0  # ResNet-50 on one H100/H200
GOAL_GPUS = ("H100", "H200")
LABELS = {
    "vanilla": "vanilla (engine)",
    "disadv": "DisAdv",
    "conadv": "ConAdv, {executor} executor",
    "train_only": "train-only: clean + adversarial, no attack",
    "attack": "attack alone",
    "plain_ours": "plain loop: our network (split ghost BN) + LARS",
    "plain_torchvision": "plain PyTorch + torchvision, SGD",
}


class EngineVariant:
    def __init__(self, cfg: Config, *, train_only: bool = False):
        self.trainer = SyntheticTrainer(cfg)
        if train_only:
            self.trainer.method = TrainOnly(self.trainer.method.ctx)
        self.trainer.open_batches(0)
        self.step = 0

    def __call__(self) -> None:
        t = self.trainer
        t.train_step(self.step, t.step_batches(self.step))
        self.step += 1

    def settle(self) -> None:
        self.trainer.method.wait_idle()  # ConAdv's attack of the next step belongs to this round

    def close(self) -> None:
        self.trainer.close()


class AttackVariant(EngineVariant):
    def __call__(self) -> None:
        t = self.trainer
        for micro in t.step_batches(self.step):
            t.method.adversarial(t.model, micro)
        self.step += 1


class PlainVariant:
    """A minimal training loop: forward under autocast, cross-entropy, backward, optimizer step."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, source: SyntheticTrainer,
                 smoothing: float):
        self.model, self.optimizer, self.source, self.smoothing = model, optimizer, source, smoothing
        self.served = 0

    def __call__(self) -> None:
        inputs, targets = self.source.pool[self.served % len(self.source.pool)]
        self.served += 1
        self.optimizer.zero_grad(set_to_none=True)
        with self.source.autocast():
            logits = self.model(inputs)
        F.cross_entropy(logits.float(), targets, label_smoothing=self.smoothing).backward()
        self.optimizer.step()

    def settle(self) -> None:
        pass

    def close(self) -> None:
        pass


def torchvision_loop(name: str, source: SyntheticTrainer) -> PlainVariant:
    torch.manual_seed(0)
    import torchvision  # imported when the speed section runs: its import costs seconds (torch._dynamo)

    model = getattr(torchvision.models, name)(weights=None, num_classes=source.bundle.num_classes)
    model = model.to(source.device, memory_format=torch.channels_last if source.channels_last else torch.preserve_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-5)
    return PlainVariant(model, optimizer, source, source.cfg.optim.label_smoothing)


def our_loop(source: SyntheticTrainer) -> PlainVariant:
    model = source.new_network()
    return PlainVariant(model, build_optimizer(source.cfg, model, source.derived.peak_lr), source,
                        source.cfg.optim.label_smoothing)


def speed_config(plan: Plan, micro: int, method: str, *extra: str) -> Config:
    group = 64 if micro % 64 == 0 else micro  # the paper's BN groups of 64 where the micro-batch allows
    return config_from_overrides([
        f"method={method}", "data=imagenet", *plan.speed, f"batch_size={micro}", f"bn.group_size={group}",
        "runtime.wandb=disabled", "steps=1000000", *extra])


def precision(cfg: Config) -> str:
    """How the speed runs compute, in words (channels_last applies on CUDA only)."""
    text = f"{cfg.runtime.autocast} autocast" if cfg.runtime.autocast != "none" else "fp32"
    return text + (", channels_last" if cfg.runtime.channels_last and cfg.runtime.device.startswith("cuda") else "")


@dataclass
class SpeedResult:
    """Median seconds per step of each variant at each micro-batch; the network and device measured."""

    median_s: dict[int, dict[str, float]] = field(default_factory=dict)
    cfg: Config | None = None
    executor: str = ""
    params: int = 0
    weights_bytes: int = 0
    device_name: str = ""


def variants_at(plan: Plan, micro: int) -> dict[str, Any]:
    vanilla = EngineVariant(speed_config(plan, micro, "vanilla"))
    source = vanilla.trainer
    return {
        "vanilla": vanilla,
        "disadv": EngineVariant(speed_config(plan, micro, "disadv")),
        "conadv": EngineVariant(speed_config(plan, micro, "conadv", "conadv.executor=auto")),
        "train_only": EngineVariant(speed_config(plan, micro, "disadv"), train_only=True),
        "attack": AttackVariant(speed_config(plan, micro, "disadv")),
        "plain_ours": our_loop(source),
        "plain_torchvision": torchvision_loop(plan.plain_model, source),
    }


@dataclass
class Timings:
    """Per variant: seconds per step of each round, the peak device memory of its warm-up, and the error
    that stopped a variant (e.g. out of memory at a large micro-batch: the others go on without it)."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    peak_bytes: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def _stepped(variant: Any, steps: int) -> None:
    for _ in range(steps):
        variant()
    variant.settle()


def time_rounds(variants: dict[str, Any], device: torch.device, plan: Plan) -> Timings:
    timings = Timings()
    alive = dict(variants)

    def guarded(name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as error:  # reported; the other variants are still measured
            timings.errors[name] = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"
            alive.pop(name, None)
            release()

    for name, variant in variants.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        def warm(v: Any = variant) -> None:
            _stepped(v, plan.warmup_steps)
            sync(device)
        guarded(name, warm)
        if device.type == "cuda" and name in alive:
            timings.peak_bytes[name] = torch.cuda.max_memory_allocated(device)
    for _ in range(plan.rounds):
        for name, variant in list(alive.items()):
            def timed(n: str = name, v: Any = variant) -> None:
                sync(device)
                t0 = time.perf_counter()
                _stepped(v, plan.steps_per_round)
                sync(device)
                timings.seconds.setdefault(n, []).append((time.perf_counter() - t0) / plan.steps_per_round)
            guarded(name, timed)
    for name in timings.errors:
        timings.seconds.pop(name, None)
    return timings


def speed_section(plan: Plan, report: Report) -> SpeedResult:
    result = SpeedResult(cfg=speed_config(plan, plan.micro_batches[0], "vanilla"))
    cfg = result.cfg
    report.section(f"2 speed: {cfg.model.name} at {cfg.model.input_size} px, {precision(cfg)}, synthetic data on "
                   f"the device; the plain loop's network: torchvision {plan.plain_model}")
    report.note(f"median of {plan.rounds} alternating rounds of {plan.steps_per_round} step(s) after "
                f"{plan.warmup_steps} warm-up step(s): images/s (slowest-fastest round)"
                + (", peak memory of the warm-up" if plan.device == "cuda" else ""))
    for micro in plan.micro_batches:
        report.check(f"micro-batch {micro}: every variant steps", lambda m=micro: _measure(plan, m, result, report))
    _goals(plan, result, report)
    return result


def _close(variant: Any) -> None:
    try:
        variant.close()
    except Exception:  # a variant that failed may fail again when its pending work is drained
        pass


def _measure(plan: Plan, micro: int, result: SpeedResult, report: Report) -> str:
    variants = variants_at(plan, micro)
    try:
        source = variants["vanilla"].trainer
        result.executor = variants["conadv"].trainer.method.executor_label() or ""
        result.params = sum(p.numel() for p in source.model.parameters())
        result.weights_bytes = flatten(source.model).numel() * 4
        result.device_name = (torch.cuda.get_device_name(source.device) if source.device.type == "cuda"
                              else cpu_name())
        timings = time_rounds(variants, source.device, plan)
    finally:
        for variant in variants.values():
            _close(variant)
        del variants
        release()
    medians = {name: statistics.median(values) for name, values in timings.seconds.items()}
    for name, values in timings.seconds.items():
        rates = sorted(micro / v for v in values)
        label = LABELS[name].format(executor=result.executor)
        peak = f"  {timings.peak_bytes[name] / 2**30:5.1f} GiB" if name in timings.peak_bytes else ""
        report.note(f"  {micro:4d}  {label:50s} {micro / medians[name]:9,.0f}  ({rates[0]:,.0f}-{rates[-1]:,.0f}){peak}")
    if timings.errors:
        failed = "; ".join(f"{name}: {why}" for name, why in timings.errors.items())
        raise CheckFailed(f"{len(timings.errors)} of {len(LABELS)} variants stopped ({failed})")
    result.median_s[micro] = medians
    return f"{len(medians)} variants, {plan.rounds} rounds"


def _goals(plan: Plan, result: SpeedResult, report: Report) -> None:
    if not result.median_s:
        return
    judged = plan.device == "cuda"
    why = "" if judged else " (CPU smoke: goals are for a GPU)"
    med = result.median_s
    ratios = {m: med[m]["plain_torchvision"] / med[m]["vanilla"] for m in med}
    report.goal(all(r >= GOAL_PLAIN_RATIO for r in ratios.values()) if judged else None,
                f"engine vanilla / plain PyTorch + torchvision (images/s) >= {GOAL_PLAIN_RATIO}: " +
                _per_micro(ratios) + why)
    slower = {m: med[m]["conadv"] / med[m]["disadv"] for m in med}
    hidden = {m: (med[m]["disadv"] - med[m]["conadv"]) / med[m]["attack"] for m in med}
    report.goal(all(s <= GOAL_CONADV_SLACK for s in slower.values()) if judged else None,
                f"ConAdv ({result.executor}) step / DisAdv step <= {GOAL_CONADV_SLACK}: {_per_micro(slower)}; "
                f"share of the attack hidden beside the update: {_per_micro(hidden, percent=True)}" + why)
    best = max(med, key=lambda m: m / med[m]["vanilla"])
    rate = best / med[best]["vanilla"]
    model = result.cfg.model if result.cfg else None
    applies = judged and model is not None and model.name == "resnet50" and model.input_size == 224 and \
        any(g in result.device_name for g in GOAL_GPUS)
    where = why or ("" if applies else f" (the goal is for an H100/H200, this is {result.device_name})")
    report.goal(rate >= GOAL_RESNET50_IMG_S if applies else None,
                f"ResNet-50 engine vanilla >= {GOAL_RESNET50_IMG_S:,.0f} images/s: {rate:,.0f} at micro-batch "
                f"{best}" + where)


def _per_micro(values: dict[int, float], *, percent: bool = False) -> str:
    shown: Callable[[float], str] = (lambda v: f"{100 * v:.0f}%") if percent else (lambda v: f"{v:.3f}")
    return ", ".join(f"{shown(v)} at {m}" for m, v in values.items())
