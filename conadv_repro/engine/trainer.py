"""The one training loop. It runs every method; the methods are strategy objects (methods/base.py).

A step: set the LR from the pure schedule; for each micro-batch ask the method for its branches, run
each through its BN, add the weighted losses and backpropagate (gradients accumulate over micro-batches,
each scaled by its share of the batch, so an accumulated step equals one big-batch step); fold the
ghost-BN statistics into the running statistics once; take the optimizer step; tell the method.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from conadv_repro.batch_sizes import format_batch
from conadv_repro.config import Config
from conadv_repro.data.datasets import DataBundle, build_data
from conadv_repro.data.loader import MicroBatch, eval_batches, train_micro_batches
from conadv_repro.data.sampler import BatchPlan
from conadv_repro.distributed.context import SINGLE, DistContext, local_gpu
from conadv_repro.distributed.replicas import make_replicas
from conadv_repro.engine.determinism import configure_kernels
from conadv_repro.engine.evaluation import evaluate, topk_correct
from conadv_repro.engine.progress import ProgressPrinter
from conadv_repro.engine.rng import capture_rng, restore_rng
from conadv_repro.errors import UserError
from conadv_repro.methods import MethodContext, build_method
from conadv_repro.model.registry import build_model
from conadv_repro.model.split_bn import BRANCHES, THREE_WAY, bn_route, commit_bn_statistics
from conadv_repro.optim.lars import LARS, param_groups_for_lars
from conadv_repro.optim.schedule import lr_at
from conadv_repro.presets import table6_hparams


class Diverged(Exception):
    """The loss became NaN or infinite."""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The device of this process; `local_rank` picks the GPU of a multi-process run's rank (`local_gpu`)."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        index = local_gpu(local_rank)
        return torch.device("cuda", index) if index else torch.device("cuda")  # one GPU per process
    if name == "auto":
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"runtime.device={name!r} is not a device; allowed: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"runtime.device={name!r} but no CUDA device is available; use runtime.device=cpu")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"runtime.device={name!r} is not supported; allowed: auto, cpu, cuda, cuda:N")
    return device


@dataclass(frozen=True)
class Derived:
    """Values derived from the config and the dataset, written beside the config."""

    num_train: int
    steps_per_epoch: int
    total_steps: int
    peak_lr: float
    warmup_epochs: float
    warmup_steps: int
    micro_batch: int
    accumulation: int
    lr_rule: str
    trainers: int = 1
    attack_workers: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def derive(cfg: Config, num_train: int, trainers: int = 1, attack_workers: int = 0) -> Derived:
    """The run's step counts and LR; `micro_batch`/`accumulation` are per trainer (the global batch is
    trainers x micro_batch x accumulation)."""
    plan = BatchPlan(num_train, cfg.batch_size, cfg.seed, dataset=cfg.data)
    spe = plan.steps_per_epoch
    total = cfg.steps if cfg.steps is not None else max(1, round(cfg.epochs * spe))
    if cfg.optim.lr_rule == "table6":
        peak_lr, warmup_epochs = table6_hparams(cfg.batch_size)
    else:
        peak_lr, warmup_epochs = cfg.optim.lr, cfg.schedule.warmup_epochs
    warmup_steps = min(total, round(warmup_epochs * spe))
    local = cfg.batch_size // trainers
    micro = min(cfg.runtime.micro_batch or local, local)  # e.g. the paper's 256 on 8 trainers at 1k
    return Derived(num_train=num_train, steps_per_epoch=spe, total_steps=total, peak_lr=peak_lr,
                   warmup_epochs=warmup_epochs, warmup_steps=warmup_steps, micro_batch=micro,
                   accumulation=local // micro, lr_rule=cfg.optim.lr_rule, trainers=trainers,
                   attack_workers=attack_workers)


def build_optimizer(cfg: Config, model: nn.Module, peak_lr: float) -> torch.optim.Optimizer:
    groups = param_groups_for_lars(model, cfg.optim.weight_decay)
    if cfg.optim.name == "sgd":
        # Plain momentum SGD: no trust ratio anywhere, weight decay kept on the weights LARS would adapt.
        for group in groups:
            group["adapt"] = False
    return LARS(groups, lr=peak_lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay,
                trust_coefficient=cfg.optim.trust_coefficient, eps=cfg.optim.eps,
                momentum_form=cfg.optim.momentum_form)


def build_network(cfg: Config, bundle: DataBundle, device: torch.device, *, channels_last: bool) -> nn.Module:
    """A run's network at its initialisation (seeded), on `device` in the run's memory format."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                        image_size=bundle.image_size, bn_group_size=cfg.bn.group_size,
                        bn_momentum=cfg.bn.momentum, bn_eps=cfg.bn.eps,
                        bn_branches=THREE_WAY if cfg.bn.three_way else BRANCHES).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def autocast_context(cfg: Config, device: torch.device) -> AbstractContextManager[Any]:
    if cfg.runtime.autocast == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@dataclass
class Window:
    """Running sums of a stretch of training (a logging window, or an epoch)."""

    examples: int = 0
    correct: float = 0.0
    loss: float = 0.0
    branch_loss: dict[str, float] = field(default_factory=dict)
    steps: int = 0

    def add(self, examples: int, correct: float, loss: float, branch_loss: dict[str, float]) -> None:
        self.examples += examples
        self.correct += correct
        self.loss += loss * examples
        for name, value in branch_loss.items():
            self.branch_loss[name] = self.branch_loss.get(name, 0.0) + value * examples
        self.steps += 1

    def summary(self) -> dict[str, float]:
        n = max(self.examples, 1)
        out = {"train_top1": 100.0 * self.correct / n, "train_loss": self.loss / n}
        out.update({f"train_loss_{k}": v / n for k, v in self.branch_loss.items()})
        return out


class Trainer:
    """Owns the network, optimizer, method and data of one run; `train_step` is one optimizer step."""

    def __init__(self, cfg: Config, *, bundle: DataBundle | None = None, log: Callable[[str], None] = print,
                 dist: DistContext = SINGLE):
        self.cfg = cfg
        self.log = log
        self.dist = dist
        if cfg.runtime.threads:
            torch.set_num_threads(cfg.runtime.threads)
        self.device = resolve_device(cfg.runtime.device, dist.local_rank)
        configure_kernels(cfg.runtime.deterministic, self.device)  # before the first cuBLAS call (determinism.py)
        self.bundle = bundle or build_data(cfg.data, root=cfg.data_root, image_size=cfg.model.input_size,
                                           autoaugment=cfg.autoaugment, seed=cfg.seed, paired=cfg.bn.three_way,
                                           decoder=cfg.data_decoder)
        self.derived = derive(cfg, self.bundle.num_train, dist.trainers, dist.attack_workers)
        self.local_batch = cfg.batch_size // dist.trainers
        self.plan = BatchPlan(self.bundle.num_train, cfg.batch_size, cfg.seed, dataset=self.bundle.name)
        self.channels_last = cfg.runtime.channels_last and self.device.type == "cuda"
        # uint8 to the device, normalised there: a quarter of the bytes to copy, the same numbers.
        self.normalise_on_device = cfg.runtime.normalise == "device" or (
            cfg.runtime.normalise == "auto" and self.device.type == "cuda")
        self.model = self.new_network()
        self.model.train()
        self.optimizer = build_optimizer(cfg, self.model, self.derived.peak_lr)
        self.step = 0
        self.epoch_window = Window()
        self.batches: Any = None
        self.stop_requested = False  # set by rank 0 (lock lost): every trainer stops after this step
        self.method = build_method(MethodContext(
            cfg=cfg, model=self.model, device=self.device, num_classes=self.bundle.num_classes,
            mean=self.bundle.mean, std=self.bundle.std,
            peek=self._peek, autocast=self.autocast, to_device=self.to_device, dist=dist, log=self.log))
        self.replicas = make_replicas(dist, self.device)
        wrapped = self.replicas.wrap(self.model, self.method.trained_bn_branches())
        self.train_model: nn.Module = torch.compile(wrapped) if cfg.runtime.compile else wrapped

    def new_network(self) -> nn.Module:
        """The run's network at its initialisation (seeded), on the device in the run's memory format."""
        return build_network(self.cfg, self.bundle, self.device, channels_last=self.channels_last)

    # ----------------------------------------------------------------- helpers shared with methods
    def autocast(self) -> AbstractContextManager[Any]:
        return autocast_context(self.cfg, self.device)

    def to_device(self, micro: MicroBatch) -> MicroBatch:
        return micro.to(self.device, non_blocking=True, channels_last=self.channels_last)

    def _peek(self, k: int) -> MicroBatch | None:
        return None if self.batches is None else self.batches.peek(k)

    def open_batches(self, start_step: int) -> None:
        """Start the data stream at `start_step` (a resumed run starts mid-epoch where it stopped)."""
        self.batches = train_micro_batches(
            self.bundle, self.plan, start_step=start_step, end_step=self.derived.total_steps,
            micro_size=self.derived.micro_batch, rank=self.dist.trainer_rank, world_size=self.dist.trainers,
            workers=self.cfg.runtime.workers, pin_memory=self.device.type == "cuda",
            normalise_on_device=self.normalise_on_device)
        self.method.begin(start_step, self.derived.total_steps)

    def lr(self, step: int) -> float:
        d = self.derived
        return lr_at(step, peak_lr=d.peak_lr, warmup_steps=d.warmup_steps, total_steps=d.total_steps,
                     power=self.cfg.schedule.power, end_lr=self.cfg.schedule.end_lr)

    # ----------------------------------------------------------------- the step
    def train_step(self, step: int, micro_batches: Iterable[MicroBatch]) -> dict[str, Any]:
        """One optimizer step over the micro-batches of `step`. Raises Diverged on a non-finite loss.

        `micro_batches` may be lazy (see `step_batches`): each is pulled only when it trains, so a
        method's look-ahead (`peek(0)`) is always the micro-batch after the current one."""
        lr = self.lr(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        batch = self.local_batch
        last = self.derived.accumulation - 1
        loss_total = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        branch_losses: dict[str, torch.Tensor] = {}
        examples = 0
        for index, micro in enumerate(micro_batches):
            micro = self.method.to_device(micro)  # once per micro-batch: the method may have moved it already
            share = micro.targets.shape[0] / batch
            total = torch.zeros((), device=self.device)
            for branch in self.method.branches(micro):
                with bn_route(self.train_model, branch.bn), self.autocast():
                    logits = self.train_model(branch.inputs)
                loss = F.cross_entropy(logits.float(), branch.targets,
                                       label_smoothing=self.cfg.optim.label_smoothing)
                total = total + branch.weight * loss
                detached = loss.detach() * share
                branch_losses[branch.name] = branch_losses.get(branch.name, 0.0) + detached
                if branch.name == "clean":
                    correct += topk_correct(logits.detach(), branch.targets, (1,))[0]
            with self.replicas.micro_context(self.train_model, last=index == last):
                (total * share).backward()
            loss_total += total.detach() * share
            examples += micro.targets.shape[0]
        names = sorted(branch_losses)
        stop = torch.full((), float(self.stop_requested), device=self.device)
        sums = self.replicas.reduce_sums(torch.stack([loss_total, correct, stop, *(
            torch.as_tensor(branch_losses[n], device=self.device) for n in names)]))
        trainers = self.replicas.trainers
        self.replicas.reduce_bn_statistics(self.model)
        commit_bn_statistics(self.model)
        self.optimizer.step()
        # The step's one host sync, once its update is queued: the host waits here while the device works,
        # rather than the device waiting for the host to issue the update. A diverged step has updated the
        # weights with non-finite values, but nothing is written after it: the run ends as diverged, and the
        # method is not told of the update (no snapshot, no attack of those weights).
        loss_value, correct_value, stop_value, *branch_values = sums.tolist()
        self.dist.settle(self.cfg.runtime.dist_step_timeout_s)  # the first step's collectives are done
        loss_value /= trainers
        if not math.isfinite(loss_value):
            raise Diverged(f"loss is {loss_value} in step {step + 1}")
        self.method.after_update(step)
        return {"loss": loss_value, "correct": correct_value, "examples": examples * trainers, "lr": lr,
                "branch_loss": {n: v / trainers for n, v in zip(names, branch_values, strict=True)},
                "stop": stop_value > 0}

    def step_batches(self, step: int) -> Iterator[MicroBatch]:
        """The micro-batches of `step` from the data stream, pulled one at a time."""
        for _ in range(self.derived.accumulation):
            micro = next(self.batches)
            if micro.key.step != step:
                raise RuntimeError(f"data stream out of step: expected step {step}, got {micro.key}")
            yield micro

    # ----------------------------------------------------------------- evaluation
    def evaluate(self, split: str) -> dict[str, float]:
        dataset = {"test": self.bundle.test, "train": self.bundle.train_eval, "val": self.bundle.val}[split]
        batches = eval_batches(dataset, self.cfg.runtime.eval_batch, workers=self.cfg.runtime.workers,
                               pin_memory=self.device.type == "cuda")
        return evaluate(self.model, ((x, y) for x, y, *_ in batches), device=self.device,
                        channels_last=self.channels_last, autocast=self.autocast)

    # ----------------------------------------------------------------- checkpoint state
    def state_dict(self) -> dict[str, Any]:
        state = {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "method": self.method.state_dict(),
            "epoch_window": self.epoch_window.__dict__.copy(),
            "rng": capture_rng(self.device),  # plain data, so the checkpoint loads with weights_only=True
            "run_id": self.cfg.run_id(),
            "micro_batch": self.derived.micro_batch,
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("run_id") != self.cfg.run_id():
            raise UserError(f"checkpoint belongs to run {state.get('run_id')}, not {self.cfg.run_id()}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.method.load_state_dict(state["method"])
        self.epoch_window = Window(**state["epoch_window"])
        self.step = int(state["step"])
        restore_rng(state["rng"], self.device)  # rank 0's states, into this rank's own GPU (engine/rng.py)

    def close(self) -> None:
        self.method.close()

    def describe(self) -> str:
        d = self.derived
        layout = f"{d.accumulation} x {d.micro_batch}"
        if d.trainers > 1:
            layout = f"{d.trainers} trainers x {layout}"
        if d.attack_workers:
            layout += f", {d.attack_workers} attack worker{'s' if d.attack_workers > 1 else ''}"
        return (f"{self.cfg.method} on {self.cfg.data} ({d.num_train} train examples), {self.cfg.model.name}, "
                f"batch {format_batch(self.cfg.batch_size)} ({layout}), "
                f"{d.total_steps} steps ({d.steps_per_epoch}/epoch), peak LR {d.peak_lr:g}, "
                f"warmup {d.warmup_steps} steps, device {self.device}")


def new_progress(trainer: Trainer, run_name: str, start_step: int) -> ProgressPrinter:
    return ProgressPrinter(run_name, total_steps=trainer.derived.total_steps,
                           steps_per_epoch=trainer.derived.steps_per_epoch, batch_size=trainer.cfg.batch_size,
                           start_step=start_step, log=trainer.log, start_time=time.time())


def checkpoint_due(trainer: Trainer, steps_done: int) -> bool:
    d = trainer.derived
    return steps_done % trainer.cfg.runtime.checkpoint_every == 0 or steps_done % d.steps_per_epoch == 0

