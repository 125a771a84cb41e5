"""Does a profile's `mem_gb` hold a node's ranks? The host-memory check of `launch` and `--estimate`.

A profile's `mem_gb` is memory per node: submitit passes it to Slurm as `--mem` (conadv_repro/launch/submit.py
make_executor), and Slurm reads `--mem=64GB` as 64 GiB shared by the job's tasks on each node. A run on 8
GPUs puts 8 tasks (ranks) on a node, so each has about mem_gb / 8; the node's OOM killer ends the job when
they need more. A node needs the sum of its ranks' needs, and a rank's is the sum of the terms below, in
bytes. The numbers were measured on an AMD EPYC, 2 cores (Python 3.11, torch 2.14.1+cu130, torchvision
0.29.1) with `python benchmarks/host_memory.py`, except the CUDA context, which a machine without a GPU
cannot measure.

- process: the rank's Python process. PROCESS_BYTES, 672 MiB: its VmRSS after `import torch, torchvision`
  and the training code (670 MiB after torch and torchvision alone; about 300 MiB of it file-backed library
  pages, which a node's ranks share: counted per rank, they stand for the host copies a checkpoint makes).
  CUDA_HOST_BYTES, 2 GiB, an estimate, not measured here: the host memory of a CUDA context (the driver, the
  kernels loaded lazily, cuDNN and cuBLAS handles, NCCL's host buffers); pytorch/pytorch#113326 shows a
  process's peak RSS growing by 1.7 GB (322 MB to 2,057 MB) once CUDA is initialised (torch 2.2, CUDA 11.8,
  lazy module loading). Plus the dataset as the process holds it: ImageNet's index (FileImages' lists of
  ImageFolder's `(path, label)` tuples for 1,281,167 train and 50,000 test images), INDEX_BYTES_PER_EXAMPLE
  = 202 bytes an example (257 MiB in all, measured); CIFAR-10 as uint8 tensors (3,072 bytes an image).
- workers: `runtime.workers` loader processes, forked from the rank's. Each holds WORKER_BYTES, 25 MiB of
  its own (the peak of its private pages less the images below: 16, 22 and 25 MiB at micro-batches of 64, 256
  and 512, measured), the uint8 images of the batch it is assembling (decoded and cropped, before they are
  stacked: channels x size x size bytes each) and a copy of the file index: reading an entry writes
  its reference counts, which copies its page, and a worker that reads a random eighth of the train entries
  (one of 8 workers, one epoch) copied 221 of the index's 257 MiB (measured), so each counts the whole index.
  An in-memory dataset's tensors are shared, never copied.
- batches in flight: DataLoader keeps PREFETCH_FACTOR (2, torch's default: conadv_repro/data/loader.py
  passes none) batches per worker under way, and the engine holds HELD_MICRO_BATCHES (2: the micro-batch
  training and the next one, which ConAdv's look-ahead peeks at). On CUDA each is pinned by the loader's pin
  thread, and torch's pinned-memory allocator (CachingHostAllocator) rounds a block up to a power of two and
  keeps it cached once freed. A trainer's micro-batches are uint8 (normalised on the device, runtime.normalise
  auto or device: a quarter of float32's bytes), an attack worker's float32 (conadv_repro/distributed/
  attack_worker.py normalises in the loader), at the run's micro-batch and input size; a paired bundle
  (bn.three_way) carries the un-AutoAugmented originals too, a second tensor of the same size.
- evaluation, rank 0 only (the other ranks follow it, conadv_repro/engine/ranks.py): the test split each
  eval epoch and the train split at the end, through a second loader of `runtime.workers` processes (each as
  a worker above, assembling `runtime.eval_batch` images) with PREFETCH_FACTOR batches per worker and the one
  evaluated in flight, float32 (EvalSet normalises in the loader), while the training loader's persistent
  workers and their batches stay alive.

The batches count every one the loaders may hold at once, pinned: an upper bound (a loader slower than the
GPU holds fewer), as a check that warns before a node runs out should be. Page cache (the JPEG files read) is
left out: the kernel reclaims it before it kills. No torch import: the launcher never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from conadv_repro import throughput_model
from conadv_repro.batch_sizes import format_batch
from conadv_repro.config import Config
from conadv_repro.errors import UserError
from conadv_repro.launch.plan import PlannedRun
from conadv_repro.launch.profiles import Profile

MIB = 2 ** 20
GIB = 2 ** 30
PROCESS_BYTES = 672 * MIB
CUDA_HOST_BYTES = 2 * GIB
INDEX_BYTES_PER_EXAMPLE = 202
WORKER_BYTES = 25 * MIB
PREFETCH_FACTOR = 2
HELD_MICRO_BATCHES = 2
HELD_EVAL_BATCHES = 1
IMAGENET_FILES = 1_281_167 + 50_000  # train (its held-out validation images included) + the official val
CIFAR10_IMAGES = 60_000


def gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.1f} GiB"


def pinned_bytes(nbytes: int, pinned: bool) -> int:
    """What a batch of `nbytes` takes on the host: a power of two when pinned (CachingHostAllocator's block)."""
    if not pinned or nbytes <= 0:
        return max(nbytes, 0)
    return 1 << (nbytes - 1).bit_length()


def batch_bytes(images: int, image_size: int, channels: int = 3, *, float32: bool = False) -> int:
    """One batch of `images` images of `channels` x `image_size` x `image_size`, uint8 or float32."""
    return images * channels * image_size * image_size * (4 if float32 else 1)


def dataset_bytes(data: str) -> tuple[int, int]:
    """(what a rank's process holds of the dataset, what each of its loader workers copies of it)."""
    if data == "imagenet":
        index = IMAGENET_FILES * INDEX_BYTES_PER_EXAMPLE
        return index, index
    if data == "cifar10":  # uint8 tensors in memory: the workers share their pages
        return CIFAR10_IMAGES * batch_bytes(1, 32), 0
    return 0, 0  # the embedded digits (a few MiB) or a user's dataset, not known here


@dataclass(frozen=True)
class RankNeed:
    """Host bytes of one rank, by term (see the module's docstring)."""

    process: int
    workers: int
    batches: int
    evaluation: int = 0
    role: str = "a rank"
    worker_count: int = 0
    in_flight: int = 0
    eval_batch: int = 0
    eval_in_flight: int = 0

    @property
    def training(self) -> int:
        return self.process + self.workers + self.batches

    @property
    def total(self) -> int:
        return self.training + self.evaluation

    def describe(self, cuda: bool) -> str:
        """Its training terms, in words."""
        return (f"{self.role}'s process {gib(self.process)}{' with the CUDA context' if cuda else ''}, "
                f"{self.worker_count} loader workers {gib(self.workers)}, {self.in_flight} micro-batches in flight "
                f"{gib(self.batches)}{' pinned' if cuda else ''}")


def rank_need(*, workers: int, micro: int, image_size: int, channels: int = 3, cuda: bool,
              float32: bool = False, paired: bool = False, eval_batch: int = 0, process_data: int = 0,
              worker_data: int = 0, role: str = "a rank") -> RankNeed:
    """Host bytes of a rank whose loader has `workers` workers and micro-batches of `micro` images.

    `float32`: its micro-batches are normalised in the loader; `paired`: they carry the originals too;
    `eval_batch`: the batch of its evaluation passes (0: it does not evaluate: every rank but 0);
    `process_data` and `worker_data`: the dataset as the process holds it and as each worker copies it
    (`dataset_bytes`)."""
    tensors = 2 if paired else 1
    worker = WORKER_BYTES + worker_data
    in_flight = PREFETCH_FACTOR * workers + HELD_MICRO_BATCHES
    micro_batch = tensors * pinned_bytes(batch_bytes(micro, image_size, channels, float32=float32), cuda)
    evaluation, eval_in_flight = 0, 0
    if eval_batch:
        eval_in_flight = PREFETCH_FACTOR * workers + HELD_EVAL_BATCHES
        evaluation = workers * (worker + batch_bytes(eval_batch, image_size, channels)) + \
            eval_in_flight * pinned_bytes(batch_bytes(eval_batch, image_size, channels, float32=True), cuda)
    return RankNeed(process=PROCESS_BYTES + (CUDA_HOST_BYTES if cuda else 0) + process_data,
                    workers=workers * (worker + tensors * batch_bytes(micro, image_size, channels)),
                    batches=in_flight * micro_batch, evaluation=evaluation, role=role, worker_count=workers,
                    in_flight=in_flight, eval_batch=eval_batch, eval_in_flight=eval_in_flight)


def run_ranks(cfg: Config, *, cuda: bool) -> list[RankNeed]:
    """Each rank's need, in rank order: the trainers (rank 0 evaluates), then ConAdv's attack workers."""
    network = throughput_model.network_of_config(cfg.flat())
    process_data, worker_data = dataset_bytes(cfg.data)
    common = {"workers": cfg.runtime.workers, "image_size": network.image_size, "channels": network.in_channels,
              "cuda": cuda, "paired": cfg.bn.three_way, "process_data": process_data, "worker_data": worker_data}
    trainers = max(cfg.runtime.trainers, 1)
    share = cfg.batch_size // trainers
    micro = min(cfg.runtime.micro_batch or share, share)
    # The suite's datasets hand over uint8 where the engine normalises on the device; others float32.
    on_device = cfg.runtime.normalise == "device" or (cfg.runtime.normalise == "auto" and cuda)
    float32 = not (on_device and cfg.data in throughput_model.DATASET_SHAPES)
    trainer = {**common, "micro": micro, "float32": float32, "role": "a trainer"}
    ranks = [rank_need(**trainer, eval_batch=cfg.runtime.eval_batch)]
    ranks += [rank_need(**trainer)] * (trainers - 1)
    attackers = cfg.conadv.attack_workers if cfg.method == "conadv" else 0
    if attackers:
        chunk, wanted = cfg.batch_size // attackers, cfg.runtime.micro_batch
        attack_micro = wanted if wanted and chunk % wanted == 0 else chunk  # as attack_worker.py takes it
        ranks += [rank_need(**common, micro=attack_micro, float32=True, role="an attack worker")] * attackers
    return ranks


@dataclass(frozen=True)
class NodeNeed:
    """The ranks Slurm places on one node (its block of consecutive ranks): what `--mem` must hold."""

    ranks: tuple[RankNeed, ...]

    @property
    def total(self) -> int:
        return sum(rank.total for rank in self.ranks)

    def evaluating(self) -> RankNeed | None:
        """Rank 0, when it is on this node."""
        return next((rank for rank in self.ranks if rank.evaluation), None)

    def describe(self, cuda: bool) -> str:
        text = max(self.ranks, key=lambda rank: rank.training).describe(cuda)
        rank = self.evaluating()
        if rank is not None:
            text += (f"; rank 0's evaluation {gib(rank.evaluation)} more ({rank.worker_count} more workers, "
                     f"{rank.eval_in_flight} float32 batches of {rank.eval_batch} in flight)")
        return text


def neediest_node(cfg: Config, *, cuda: bool, tasks_per_node: int) -> NodeNeed:
    ranks = run_ranks(cfg, cuda=cuda)
    per_node = max(tasks_per_node, 1)
    nodes = [NodeNeed(tuple(ranks[i:i + per_node])) for i in range(0, len(ranks), per_node)]
    return max(nodes, key=lambda node: node.total)


@dataclass(frozen=True)
class _Checked:
    run: PlannedRun
    node: NodeNeed
    tasks_per_node: int

    @property
    def fits_gb(self) -> int:
        """The smallest mem_gb (GiB per node, as Slurm reads it) that holds the node."""
        return math.ceil(self.node.total / GIB)


def _check(runs: Iterable[PlannedRun], profile: Profile) -> list[_Checked]:
    """Each run's neediest node; a run whose layout no job can take is left to the check that refuses it
    (submit.job_resources)."""
    from conadv_repro.launch.submit import job_resources
    from conadv_repro.layout import run_processes

    found = []
    for run in runs:
        try:
            per_node = int(job_resources("slurm", profile, run_processes(run.config))["tasks_per_node"])
        except UserError:
            continue
        node = neediest_node(run.config, cuda=profile.gpus_per_node > 0, tasks_per_node=per_node)
        found.append(_Checked(run, node, per_node))
    return found


def _line(profile: Profile, worst: _Checked, count: int) -> str:
    cfg, tasks = worst.run.config, worst.tasks_per_node
    each = f"each of a node's {tasks} tasks" if tasks > 1 else "a node's one task"
    runs = f"{count} run{'s need' if count != 1 else ' needs'}"
    return (f"profile {profile.name}'s mem_gb={profile.mem_gb} is memory per node (Slurm's --mem): "
            f"{gib(profile.mem_gb * GIB / tasks)} for {each}; {runs} about {gib(worst.node.total / tasks)} per "
            f"task ({cfg.method} at batch {format_batch(cfg.batch_size)}: {worst.node.describe(profile.gpus_per_node > 0)})")


def host_memory_warnings(runs: list[PlannedRun], profile: Profile, cluster: str = "slurm") -> list[str]:
    """One line when a run's node needs more than the profile's `mem_gb`, naming the memory per task it
    gives, what a task needs and the smallest mem_gb that fits every run; nothing for jobs that do not go
    to Slurm (only Slurm is given mem_gb) or for mem_gb = 0 (Slurm's whole node)."""
    if cluster != "slurm" or profile.mem_gb <= 0:
        return []
    found = _check(runs, profile)
    short = [checked for checked in found if checked.fits_gb > profile.mem_gb]
    if not short:
        return []
    worst = max(short, key=lambda checked: (checked.fits_gb, checked.node.total))
    fits = max(checked.fits_gb for checked in found)
    lighter = "fewer runtime.workers" + (", a smaller runtime.eval_batch" if worst.node.evaluating() else "")
    return [f"warning: host memory: {_line(profile, worst, len(short))}; mem_gb={fits} fits (or {lighter}: not "
            "part of the run ids)"]


def host_memory_report(runs: list[PlannedRun], profile: Profile) -> list[str]:
    """`--estimate`'s line on host memory: the warning, or that the profile's memory per node is enough."""
    if profile.mem_gb <= 0:
        return [f"host memory: not checked (profile {profile.name} has mem_gb=0: Slurm gives a job all of a "
                "node's memory)"]
    warnings = host_memory_warnings(runs, profile)
    if warnings:
        return warnings
    found = _check(runs, profile)
    if not found:
        return ["host memory: not checked (no run)"]
    worst = max(found, key=lambda checked: checked.node.total)
    return [f"host memory: {_line(profile, worst, len(found))}: enough"]
