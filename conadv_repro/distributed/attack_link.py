"""ConAdv's attack workers: theta_t goes out by broadcast, adversarial examples come back point to point.

Layout of a step's global batch (B examples, in the batch plan's order): trainer i holds examples
[i*B/T, (i+1)*B/T), attack worker j attacks [j*B/N, (j+1)*B/N). Worker j sends each trainer the
overlap of the two ranges (`transfer_plan`), so any T and N work that split B into whole BN groups,
and which examples a worker attacks and which data a trainer loads follow from the seed alone.

The weights: the attack of step s uses theta_(src(s)), src(s) = max(s - tau, 0). Trainer 0 broadcasts
each needed theta_k exactly once, in increasing k, to the group {trainer 0} + workers: at start-up the
ones the checkpoint's snapshots hold (k <= the start step), then theta_(s+1) right after the update of
step s. The workers derive the same sequence, so no step numbers need to be agreed on; each broadcast
still carries its kind and step in a header at the front of the same buffer (one collective per theta),
and a header of kind STOP ends the workers early (the trainers stopped: lock lost, divergence, failure).
A worker reads the header from a pinned copy only after it has queued the attack that uses the weights,
so on a GPU the device is never left idle while the host waits for it; the header is checked before
anything is sent.

Timeline with tau=1: while the trainers run step t on clean_t and adv_t, the workers, holding theta_t
(broadcast after step t-1), attack batch t+1 and send it; the trainers pre-post the receives of step
t+1 as soon as step t's have arrived, so the transfer also overlaps the update.

Stopping early (divergence, a lost lock, Ctrl-C): the workers may be up to tau steps ahead, their sends
in flight and the trainers' next receives posted. So the trainers first take in every step the workers
can attack with the weights already broadcast (theta_k reaches the attacks of steps up to k + tau), then
broadcast STOP; a worker that reads STOP waits on its last sends, all matched by then, and leaves. No
send or receive is pending when the process group is destroyed. (After a transport failure the group is
broken: nothing is drained, and the error ends the process.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from conadv_repro.distributed.context import DistContext
from conadv_repro.distributed.device_time import DeviceTime

WEIGHTS, STOP = 1, 0


@dataclass(frozen=True)
class Transfer:
    """Examples [lo, hi) of the global batch go from attack worker `worker` to trainer `trainer`."""

    worker: int
    trainer: int
    lo: int
    hi: int


def transfer_plan(batch: int, trainers: int, workers: int) -> list[Transfer]:
    """Every (worker, trainer) overlap of the two partitions of a batch, in (worker, trainer) order."""
    t_size, w_size = batch // trainers, batch // workers
    plan = []
    for w in range(workers):
        for t in range(trainers):
            lo, hi = max(w * w_size, t * t_size), min((w + 1) * w_size, (t + 1) * t_size)
            if lo < hi:
                plan.append(Transfer(w, t, lo, hi))
    return plan


def source_step(step: int, tau: int) -> int:
    return max(step - tau, 0)


def weight_steps(start: int, total: int, tau: int) -> list[int]:
    """The steps whose weights the attacks of steps [start, total) use, each once, increasing."""
    return sorted({source_step(s, tau) for s in range(start, total)})


def weight_tensors(model: nn.Module) -> list[Tensor]:
    """What an attack reads from a network: every floating-point parameter and persistent buffer."""
    return [t for t in model.state_dict().values() if t.is_floating_point()]


def weights_numel(model: nn.Module) -> int:
    return sum(t.numel() for t in weight_tensors(model))


def flatten(model: nn.Module) -> Tensor:
    return torch.cat([t.detach().reshape(-1).float() for t in weight_tensors(model)])


@torch.no_grad()
def unflatten_into(flat: Tensor, model: nn.Module) -> None:
    offset = 0
    for t in weight_tensors(model):
        t.copy_(flat[offset: offset + t.numel()].view_as(t))
        offset += t.numel()
    if offset != flat.numel():
        raise RuntimeError(f"weight broadcast of {flat.numel()} values for a network of {offset}")


HEADER = 2  # float32 slots at the front of a broadcast holding (kind, step) as int32 bits: exact, and one collective


def packet(kind: int, step: int, model: nn.Module | None, numel: int, device: torch.device) -> Tensor:
    """What trainer 0 broadcasts: the header, then theta (zeros after STOP, which carries no weights).
    The header goes up from pinned memory without blocking: trainer 0 builds this right after its update."""
    header = torch.tensor([kind, step], dtype=torch.int32, pin_memory=device.type == "cuda")
    head = header.view(torch.float32).to(device, non_blocking=True)
    if model is None:
        return torch.cat([head, torch.zeros(numel, dtype=torch.float32, device=device)])
    return torch.cat([head, *(t.detach().reshape(-1).float() for t in weight_tensors(model))])


class WeightsSender:
    """Trainer 0's side of the broadcast (asynchronous: the trainer goes on with its next step). The other
    trainers keep the same account without sending, so that all of them know what the workers hold."""

    def __init__(self, ctx: DistContext, device: torch.device, start: int, total: int, tau: int, numel: int):
        self.ctx, self.device, self.numel = ctx, device, numel
        self.sends = ctx.rank == 0
        self.queue = weight_steps(start, total, tau)
        self.last_sent = -1  # the newest theta broadcast: the workers can attack up to last_sent + tau
        self._works: list[Any] = []
        self._keep: list[Tensor] = []
        self.seconds = 0.0  # host time spent issuing broadcasts (the transfer itself is asynchronous)
        self.sent_bytes = 0

    def offer(self, step: int, model: nn.Module) -> None:
        """Send theta_step if the workers need it next."""
        if self.queue and self.queue[0] == step:
            self.queue.pop(0)
            if self.sends:
                self._send(WEIGHTS, step, model)
            self.last_sent = step

    def stop(self) -> None:
        """Tell the workers that no more weights will come (the trainers stopped early)."""
        if self.queue:
            self.queue = []
            if self.sends:
                self._send(STOP, -1, None)

    def _send(self, kind: int, step: int, model: nn.Module | None) -> None:
        t0 = time.perf_counter()
        self.wait()
        out = packet(kind, step, model, self.numel, self.device)
        self._works.append(dist.broadcast(out, src=0, group=self.ctx.weights_group, async_op=True))
        self._keep = [out]
        self.sent_bytes += out.numel() * out.element_size()
        self.seconds += time.perf_counter() - t0

    def wait(self) -> None:
        for work in self._works:
            work.wait()
        self._works, self._keep = [], []


class WeightsReceiver:
    """A worker's side: broadcast weights into networks, their headers checked later (`confirm`)."""

    def __init__(self, ctx: DistContext, device: torch.device, numel: int):
        self.ctx, self.device = ctx, device
        self.packet = torch.empty(HEADER + numel, dtype=torch.float32, device=device)
        self._cuda = device.type == "cuda"
        self._unchecked: list[tuple[int, Tensor, Any]] = []  # (expected step, host header, copy's event)

    def post(self, expected_step: int, into: nn.Module) -> None:
        """Queue the receipt of theta_expected_step into `into`, without waiting for it on the host (on a
        GPU the copy into `into` is ordered after the broadcast on the stream). `confirm` checks it."""
        dist.broadcast(self.packet, src=0, group=self.ctx.weights_group)
        header = torch.empty(HEADER, dtype=torch.int32, pin_memory=self._cuda)
        header.copy_(self.packet[:HEADER].view(torch.int32), non_blocking=self._cuda)
        event = None
        if self._cuda:
            event = torch.cuda.Event()
            event.record()
        unflatten_into(self.packet[HEADER:], into)
        self._unchecked.append((expected_step, header, event))

    def confirm(self) -> bool:
        """Whether every posted receipt held the weights expected; False once the trainers sent STOP (the
        networks posted since then hold no weights). Waits for the headers only, not for later work."""
        unchecked, self._unchecked = self._unchecked, []
        for expected, header, event in unchecked:
            if event is not None:
                event.synchronize()
            kind, step = header.tolist()
            if kind == STOP:
                return False
            if step != expected:
                raise RuntimeError(f"attack worker expected the weights of step {expected}, got step {step}")
        return True


class AdversarialReceiver:
    """A trainer's side: its slice of each step's adversarial batch, receives posted one step ahead."""

    def __init__(self, ctx: DistContext, device: torch.device, batch: int, start: int, total: int):
        self.ctx, self.device, self.total = ctx, device, total
        self.consumed = start - 1  # the newest step whose examples the trainer has taken
        self._shape: tuple[int, ...] | None = None
        self.local = batch // ctx.trainers
        self.base = ctx.trainer_rank * self.local
        self.incoming = [t for t in transfer_plan(batch, ctx.trainers, ctx.attack_workers)
                         if t.trainer == ctx.trainer_rank]
        self._posted: dict[int, tuple[Tensor, list[Any]]] = {}
        self.waiting = DeviceTime(device)  # the trainer's stream waiting for its adversarial examples

    def _post(self, step: int, sample_shape: tuple[int, ...]) -> None:
        buffer = torch.empty((self.local, *sample_shape), dtype=torch.float32, device=self.device)
        works = [dist.irecv(buffer[t.lo - self.base: t.hi - self.base], src=self.ctx.attacker_rank(t.worker))
                 for t in self.incoming]
        self._posted[step] = (buffer, works)

    def batch(self, step: int, sample_shape: tuple[int, ...]) -> Tensor:
        """This trainer's adversarial examples of `step` (waits for them)."""
        self._shape = sample_shape
        if step not in self._posted:
            self._post(step, sample_shape)
        buffer, works = self._posted.pop(step)
        with self.waiting.span():
            for work in works:
                work.wait()
        self.consumed = step
        if step + 1 < self.total and step + 1 not in self._posted:
            self._post(step + 1, sample_shape)
        return buffer

    def drain(self, through: int) -> int:
        """Take in (and drop) the steps after the last consumed one, through `through`, that the workers have
        attacked or will attack; returns how many. Afterwards nothing is posted."""
        last = min(through, self.total - 1)
        if self._shape is not None:  # before the first step the shape is unknown: nothing was posted either
            for step in range(self.consumed + 1, last + 1):
                if step not in self._posted:
                    self._post(step, self._shape)
        taken = 0
        for step in sorted(self._posted):
            _, works = self._posted.pop(step)
            for work in works:
                work.wait()
            taken += 1
        self.consumed = max(self.consumed, last)
        return taken


class AdversarialSender:
    """A worker's side: its chunk of a step's adversarial batch, cut into the trainers' slices."""

    def __init__(self, ctx: DistContext, batch: int):
        self.ctx = ctx
        self.chunk = batch // ctx.attack_workers
        self.base = ctx.attacker_index * self.chunk
        self.outgoing = [t for t in transfer_plan(batch, ctx.trainers, ctx.attack_workers)
                         if t.worker == ctx.attacker_index]
        self._works: list[Any] = []
        self._keep: Tensor | None = None

    def send(self, adversarial: Tensor) -> None:
        self.wait()  # the previous step's sends: their buffers are reused by nothing, but keep it bounded
        adversarial = adversarial.float().contiguous()
        self._keep = adversarial
        self._works = [dist.isend(adversarial[t.lo - self.base: t.hi - self.base], dst=t.trainer)
                       for t in self.outgoing]

    def wait(self) -> None:
        for work in self._works:
            work.wait()
        self._works, self._keep = [], None
