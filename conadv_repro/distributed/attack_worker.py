"""An attack worker's rank in a ConAdv run with `conadv.attack_workers=N` (the trainers' side:
methods/conadv_workers.py; the protocol: distributed/attack_link.py).

The worker loads its chunk of every step's batch (the same examples and augmentation the trainers
load: both follow from the seed), waits for the weights the attack of that step uses, attacks with the
same function as the single-process ConAdv, and sends the trainers their slices. It writes nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from conadv_repro.config import Config
from conadv_repro.data.datasets import build_data
from conadv_repro.data.loader import train_micro_batches
from conadv_repro.data.sampler import BatchPlan
from conadv_repro.distributed.attack_link import (
    AdversarialSender,
    WeightsReceiver,
    source_step,
    weight_steps,
    weights_numel,
)
from conadv_repro.distributed.context import DistContext
from conadv_repro.distributed.device_time import DeviceTime
from conadv_repro.engine.determinism import configure_kernels
from conadv_repro.engine.trainer import autocast_context, build_network, derive, resolve_device
from conadv_repro.methods.adversarial import AdversarialMethod
from conadv_repro.methods.base import MethodContext


class AttackWorker:
    def __init__(self, cfg: Config, ctx: DistContext, log: Callable[[str], None] = print):
        self.cfg, self.ctx, self.log = cfg, ctx, log
        if cfg.runtime.threads:
            torch.set_num_threads(cfg.runtime.threads)
        self.device = resolve_device(cfg.runtime.device, ctx.local_rank)
        configure_kernels(cfg.runtime.deterministic, self.device)  # before the first cuBLAS call
        self.channels_last = cfg.runtime.channels_last and self.device.type == "cuda"
        self.bundle = build_data(cfg.data, root=cfg.data_root, image_size=cfg.model.input_size,
                                 autoaugment=cfg.autoaugment, seed=cfg.seed, paired=cfg.bn.three_way,
                                 decoder=cfg.data_decoder)
        self.derived = derive(cfg, self.bundle.num_train, ctx.trainers, ctx.attack_workers)
        self.plan = BatchPlan(self.bundle.num_train, cfg.batch_size, cfg.seed, dataset=self.bundle.name)
        self.chunk = cfg.batch_size // ctx.attack_workers
        micro = cfg.runtime.micro_batch
        self.micro = micro if micro and self.chunk % micro == 0 else self.chunk
        self.network = build_network(cfg, self.bundle, self.device, channels_last=self.channels_last)
        for p in self.network.parameters():
            p.requires_grad_(False)  # the attack needs input gradients only
        self.attack = AdversarialMethod(MethodContext(
            cfg=cfg, model=self.network, device=self.device, num_classes=self.bundle.num_classes,
            mean=self.bundle.mean, std=self.bundle.std, peek=lambda k: None,
            autocast=lambda: autocast_context(cfg, self.device),
            to_device=lambda m: m.to(self.device, channels_last=self.channels_last), dist=ctx))
        self.attacking = DeviceTime(self.device)

    def run(self, start: int) -> dict[str, Any]:
        """Attack steps [start, total); returns a summary (for logs and the throughput benchmark)."""
        cfg, total, tau = self.cfg, self.derived.total_steps, self.cfg.conadv.tau
        queue = weight_steps(start, total, tau)
        receiver = WeightsReceiver(self.ctx, self.device, weights_numel(self.network))
        sender = AdversarialSender(self.ctx, cfg.batch_size)
        batches = train_micro_batches(self.bundle, self.plan, start_step=start, end_step=total,
                                      micro_size=self.micro, rank=self.ctx.attacker_index,
                                      world_size=self.ctx.attack_workers, workers=cfg.runtime.workers,
                                      pin_memory=self.device.type == "cuda")
        snapshots: dict[int, nn.Module] = {}
        spares: list[nn.Module] = []
        per_step = self.chunk // self.micro
        for step in range(start, total):
            source = source_step(step, tau)
            while source not in snapshots:
                if not receiver.confirm():  # the receipt before this one must not have been a STOP
                    return self._stopped(sender, step, start)
                k = queue.pop(0)
                module = spares.pop() if spares else copy.deepcopy(self.network)
                receiver.post(k, module)
                snapshots[k] = module
            for k in [k for k in snapshots if k < source]:
                spares.append(snapshots.pop(k))
            pieces = []
            for _ in range(per_step):
                micro = next(batches).to(self.device, channels_last=self.channels_last)
                if micro.key.step != step:
                    raise RuntimeError(f"attack worker data out of step: expected {step}, got {micro.key}")
                with self.attacking.span():
                    pieces.append(self.attack.adversarial(snapshots[source], micro))
            adversarial = torch.cat(pieces)
            # The attack is queued; only now does the host wait, for the weights' header: a STOP means the
            # trainers are gone and nothing may be sent to them.
            if not receiver.confirm():
                return self._stopped(sender, step, start)
            sender.send(adversarial)
            self.ctx.settle(cfg.runtime.dist_step_timeout_s)  # past start-up: the steady-state timeout
        sender.wait()
        return {"status": "finished", "steps": total - start, "attack_s": self.attacking.seconds}

    def _stopped(self, sender: AdversarialSender, step: int, start: int) -> dict[str, Any]:
        """STOP from the trainers: they have taken in every batch sent (attack_link.py), so the last sends
        complete; wait on them, so that none is pending when the process group is destroyed."""
        sender.wait()
        self.log(f"{self.ctx.name()}: the trainers stopped; attacked steps {start}..{step - 1}, every send taken in")
        return {"status": "stopped", "steps": step - start, "attack_s": self.attacking.seconds}

