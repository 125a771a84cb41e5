"""Who this process is in a multi-process run, and the process groups it talks through.

A run is started by torchrun (locally) or by the launcher on Slurm (one task per GPU, the environment
from `submitit.helpers.TorchDistributedEnvironment`); both set RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT. Ranks 0 .. T-1 are trainers (data parallel over the trainer group), ranks
T .. T+N-1 are ConAdv's attack workers (`conadv.attack_workers=N`). Rank 0 is the only one that writes
to the run directory. Every collective has `runtime.dist_timeout_s` as its timeout until the rank's
first step is done, then `runtime.dist_step_timeout_s` (`settle`), so a lost or stalled rank ends the
job with an error instead of a hang; a heartbeat in the rendezvous store lets the survivors say which
rank was lost (and rank 0's stall watch, distributed/stall_watch.py, say so in the record even where
NCCL's watchdog ends the process).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from conadv_repro.config import Config
from conadv_repro.distributed.stall_watch import HEARTBEAT_KEY, LEFT_KEY, StallWatch, silent_ranks
from conadv_repro.errors import UserError
from conadv_repro.layout import check_layout, env_world_size

HEARTBEAT_S = 1.0


class RankLost(RuntimeError):
    """A collective or transfer failed: another rank stopped (crashed, was killed, or timed out)."""


@dataclass
class DistContext:
    """This process's place in the run. The default is the single-process run (no torch.distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    trainers: int = 1
    attack_workers: int = 0
    backend: str | None = None
    trainer_group: Any = None  # DDP's group; None = the default group
    weights_group: Any = None  # trainer 0 + the attack workers: theta_t's broadcast
    _heartbeat: Any = field(default=None, repr=False)
    _settled: bool = field(default=False, repr=False)

    @property
    def multi(self) -> bool:
        return self.world_size > 1

    @property
    def role(self) -> str:
        return "trainer" if self.rank < self.trainers else "attacker"

    @property
    def writes(self) -> bool:
        """Only rank 0 writes the run directory (record, metrics, checkpoints, W&B)."""
        return self.rank == 0

    @property
    def trainer_rank(self) -> int:
        return self.rank if self.role == "trainer" else -1

    @property
    def attacker_index(self) -> int:
        return self.rank - self.trainers if self.role == "attacker" else -1

    def attacker_rank(self, index: int) -> int:
        return self.trainers + index

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "trainers": self.trainers,
                "attack_workers": self.attack_workers, "backend": self.backend}

    def name(self) -> str:
        return f"rank {self.rank} of {self.world_size} ({self.role})"

    def settle(self, timeout_s: float) -> None:
        """From now on, every collective of this rank times out after `timeout_s`: the steady state, once the
        first step (start-up, compilation, autotuning) is behind it. Once per process; nothing when single."""
        if not self.multi or self._settled:
            return
        self._settled = True
        timeout = timedelta(seconds=timeout_s)
        dist.set_timeout(timeout)
        for group in (self.trainer_group, self.weights_group):
            if group is not None and dist.get_rank(group) >= 0:  # -1: this rank is not in the group
                dist.set_timeout(timeout, group)

    def close(self) -> None:
        if self._heartbeat is not None:
            # Joined before the teardown: a beat still inside the store's client when the process exits would
            # end it with "terminate called without an active exception".
            self._heartbeat.stop()
            self._heartbeat.leave()
        if self.multi and dist.is_initialized():
            dist.destroy_process_group()


SINGLE = DistContext()


def local_gpu(local_rank: int) -> int:
    """The index, among the CUDA devices this process sees, of the GPU of the node's local rank `local_rank`.

    torchrun, and Slurm sites that give each task every GPU of its node, show each process all of them:
    local rank r takes device r. Sites that bind one GPU to each task (CUDA_VISIBLE_DEVICES per task) show
    each process only its own, as device 0, whatever its local rank. A process that sees one device takes
    it; one that sees several and has no device of its number is refused in one line.
    """
    visible = torch.cuda.device_count()
    if visible == 1:
        return 0
    if 0 <= local_rank < visible:
        return local_rank
    seen = f"sees {visible} GPUs (devices 0..{visible - 1})" if visible else "sees no GPU"
    raise UserError(f"local rank {local_rank} has no GPU of its own: this process {seen}, and each process of "
                    "a GPU run needs one; start at most one process per GPU (or give each task one GPU through "
                    "CUDA_VISIBLE_DEVICES), or use runtime.device=cpu")


def init_distributed(cfg: Config) -> DistContext:
    """Join the run's process group when started as several processes; the single-process context
    otherwise. Call once per process, before building the trainer."""
    world = env_world_size()
    if world <= 1:
        if cfg.method == "conadv" and cfg.conadv.attack_workers:
            raise UserError(f"conadv.attack_workers={cfg.conadv.attack_workers} needs several processes: start "
                            f"{max(cfg.runtime.trainers, 1) + cfg.conadv.attack_workers} with torchrun "
                            "--nproc-per-node, or launch it through python -m conadv_repro.launch")
        check_layout(cfg, 1)
        return SINGLE
    trainers, workers = check_layout(cfg, world)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = cfg.runtime.dist_backend
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() and cfg.runtime.device != "cpu" else "gloo"
    timeout = timedelta(seconds=cfg.runtime.dist_timeout_s)
    if backend == "nccl":
        torch.cuda.set_device(local_gpu(local_rank))
    dist.init_process_group(backend, timeout=timeout)
    trainer_group = dist.new_group(list(range(trainers)), timeout=timeout) if workers else None
    weights_group = dist.new_group([0, *range(trainers, world)], timeout=timeout) if workers else None
    ctx = DistContext(rank=rank, world_size=world, local_rank=local_rank, trainers=trainers,
                      attack_workers=workers, backend=backend, trainer_group=trainer_group,
                      weights_group=weights_group)
    ctx._heartbeat = _start_heartbeat(rank)
    return ctx


def _store() -> Any:
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - the heartbeat is a diagnostic, never a reason to fail
        return None


class _Heartbeat:
    """A daemon thread that writes this rank's time into the rendezvous store every HEARTBEAT_S seconds."""

    def __init__(self, store: Any, rank: int):
        self._store, self._key, self._rank = store, HEARTBEAT_KEY.format(rank), rank
        self._stopped = threading.Event()
        self._store.set(self._key, repr(time.time()))
        self._thread = threading.Thread(target=self._beat, name="conadv-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stopped.wait(HEARTBEAT_S):
            try:
                self._store.set(self._key, repr(time.time()))
            except Exception:  # noqa: BLE001 - the store's host is gone; lost_ranks() says so
                return

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=2 * HEARTBEAT_S)

    def leave(self) -> None:
        """Say in the store that this rank left on its own, so that the others do not call it lost."""
        try:
            self._store.set(LEFT_KEY.format(self._rank), repr(time.time()))
        except Exception:  # noqa: BLE001 - the store's host is gone already
            pass


def _start_heartbeat(rank: int) -> _Heartbeat | None:
    store = _store()
    return None if store is None else _Heartbeat(store, rank)


def lost_ranks(ctx: DistContext, *, stale_s: float = 4 * HEARTBEAT_S) -> str:
    """Which ranks stopped beating (best effort, for the error message)."""
    store = _store()
    if store is None:
        return "unknown"
    time.sleep(stale_s)  # a rank that died a moment ago still looks alive; the living keep beating
    try:
        store.set_timeout(timedelta(seconds=5))
        lost = silent_ranks(store, [r for r in range(ctx.world_size) if r != ctx.rank], time.time(), stale_s)
    except Exception:  # noqa: BLE001 - the store itself is gone: it lived with rank 0 (or the agent)
        return "0 (the rendezvous host) or the launcher"
    return ", ".join(map(str, lost)) or "none found (a collective timed out)"


def watch_peers(ctx: DistContext, after_s: float, on_stall: Callable[[list[int], float], None]) -> StallWatch | None:
    """Rank 0's stall watch over every other rank (None when single, or without a store)."""
    store = _store() if ctx.multi else None
    if store is None:
        return None
    return StallWatch(store, [r for r in range(ctx.world_size) if r != ctx.rank], after_s, on_stall).start()
