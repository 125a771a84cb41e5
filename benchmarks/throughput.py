"""Throughput of vanilla, DisAdv and ConAdv on the machine at hand, in one run, as step times and ratios.

Variants (every process with `runtime.threads` torch threads, 1 by default, so that the cores are the
devices):

- vanilla, DisAdv, ConAdv sequential: one process, one core.
- ConAdv concurrent on one device: one process, the attack on a worker thread (CPU) or a side CUDA
  stream (GPU): it can only fill what the update leaves idle.
- ConAdv with an attack worker: a trainer and an attacker process (torchrun, gloo on the CPU / NCCL
  on GPUs), the attack of step t+1 on the attacker while the trainer runs step t.
- train-only: the trainer's step on clean + adversarial examples with no attack at all (the examples
  are the clean ones plus fixed noise): what ConAdv's step costs when the attack is entirely hidden.
- attack: one attack of a batch alone.

Printed: step times and images/s, DisAdv/ConAdv against the ideal (attack + train-only)/train-only,
ConAdv/train-only, and the communication measured separately (weight broadcast, example transfer,
all-reduce bandwidth). `--save PATH` writes them as a calibration for conadv_repro/throughput_model.py.

    python benchmarks/throughput.py                                   # the default model, this machine
    python benchmarks/throughput.py --save benchmarks/calibrations/mymachine.json
    python benchmarks/throughput.py runtime.device=cuda model.name=resnet50 data=imagenet ...
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from conadv_repro.atomic import atomic_write_json
from conadv_repro.config import Config, config_from_overrides
from conadv_repro.distributed.context import SINGLE, init_distributed
from conadv_repro.engine.trainer import Trainer
from conadv_repro.errors import OneLineParser, UserError, at_least_one, cli_entry
from conadv_repro.machine import cpu_name
from conadv_repro.methods.train_only import TrainOnly

# A model and batch whose train-only step takes a few hundred ms on one CPU core (at least 200 ms is
# required), the step on which the performance goals are measured: ConAdv with an attack worker at most
# 1.05 x the train-only step, and DisAdv/ConAdv at least 0.95 x the ideal (attack + train-only)/train-only.
DEFAULTS = ["model.name=resnet20", "model.width=16", "model.input_size=32", "batch_size=64",
            "bn.group_size=16", "optim.lr=0.1", "runtime.device=cpu", "runtime.threads=1",
            "runtime.wandb=disabled", "steps=1000000"]
HERE = Path(__file__).resolve()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Variant:
    def __init__(self, cfg: Config, *, train_only: bool = False):
        self.trainer = Trainer(cfg, log=lambda _m: None, dist=SINGLE)
        if train_only:
            self.trainer.method = TrainOnly(self.trainer.method.ctx)
        self.trainer.open_batches(0)
        self.step = 0

    def run(self, steps: int) -> list[float]:
        t, times = self.trainer, []
        for _ in range(steps):
            t0 = time.perf_counter()
            t.train_step(self.step, t.step_batches(self.step))
            sync(t.device)
            times.append(time.perf_counter() - t0)
            self.step += 1
        t.method.wait_idle()  # a concurrent attack left running would steal the next variant's cores
        return times


class AttackAlone:
    """One attack of a whole batch against the live network, nothing else."""

    def __init__(self, cfg: Config):
        self.trainer = Trainer(cfg, log=lambda _m: None, dist=SINGLE)
        self.trainer.open_batches(0)
        self.step = 0

    def run(self, steps: int) -> list[float]:
        t, times = self.trainer, []
        for _ in range(steps):
            micros = [t.to_device(m) for m in t.step_batches(self.step)]
            t0 = time.perf_counter()
            for micro in micros:
                t.method.adversarial(t.model, micro)
            sync(t.device)
            times.append(time.perf_counter() - t0)
            self.step += 1
        return times


def variant_config(method: str, overrides: list[str], *extra: str) -> Config:
    """The config of one variant; the user's method-specific keys go only to methods that have them."""
    keep = {"vanilla": (), "disadv": ("attack.",), "conadv": ("attack.", "conadv.")}[method]
    mine = [o for o in overrides if not o.startswith(("attack.", "conadv.")) or o.startswith(keep)]
    return config_from_overrides([*DEFAULTS, *mine, f"method={method}", *extra])


def single_process(overrides: list[str], rounds: int, steps: int) -> dict[str, list[float]]:
    variants: dict[str, Any] = {
        "vanilla": Variant(variant_config("vanilla", overrides)),
        "train_only": Variant(variant_config("disadv", overrides), train_only=True),
        "disadv": Variant(variant_config("disadv", overrides)),
        "conadv_sequential": Variant(variant_config("conadv", overrides, "conadv.executor=sequential")),
        "conadv_concurrent": Variant(variant_config("conadv", overrides, "conadv.executor=auto")),
        "attack": AttackAlone(variant_config("disadv", overrides)),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for variant in variants.values():
        variant.run(2)  # warm-up: allocator, threads, first snapshots
    for _ in range(rounds):  # alternating rounds: drift of the machine hits every variant alike
        for name, variant in variants.items():
            times[name] += variant.run(steps)
    return times


def with_attack_workers(overrides: list[str], steps: int, timeout: float) -> dict[str, Any]:
    """Run this script's worker mode on 2 processes (torchrun); returns rank 0's measurements."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "workers.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                   str(HERE), "--worker", str(out), "--steps", str(steps), *overrides]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                    env={**os.environ, "OMP_NUM_THREADS": "1"})
        except subprocess.TimeoutExpired:
            print(f"error: the attack-worker run (torchrun, 2 processes) did not finish within {timeout:g} s",
                  file=sys.stderr)
            raise SystemExit(1) from None
        if result.returncode != 0 or not out.exists():
            raise SystemExit(f"the attack-worker run failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
        return json.loads(out.read_text())


def worker_main(out: Path, steps: int, overrides: list[str]) -> None:
    """One trainer (rank 0) and one attack worker (rank 1): communication, then train-only and ConAdv
    stretches on the trainer, train-only before and after so that drift hits both."""
    cfg = variant_config("conadv", overrides, "conadv.attack_workers=1", f"steps={steps + 3}")
    ctx = init_distributed(cfg)
    comm = measure_communication(cfg, ctx)
    dist.barrier()
    result: dict[str, Any] = {"communication": comm}
    if ctx.rank == 0:
        only = Variant(variant_config("disadv", overrides), train_only=True)
        only.run(2)
        before = only.run(steps)
    dist.barrier()
    if ctx.rank == 0:
        trainer = Trainer(cfg, log=lambda _m: None, dist=ctx)
        trainer.open_batches(0)
        times, warm = [], {}
        for step in range(steps + 3):
            if step == 3:  # the first steps wait for the worker's start-up: not part of the steady state
                warm = trainer.method.timings()
            t0 = time.perf_counter()
            trainer.train_step(step, trainer.step_batches(step))
            sync(trainer.device)
            times.append(time.perf_counter() - t0)
        result["conadv_workers"] = times[3:]
        result["side"] = {k: v - warm.get(k, 0) for k, v in trainer.method.timings().items()}
        trainer.close()
    else:
        from conadv_repro.distributed.attack_worker import AttackWorker

        AttackWorker(cfg, ctx, log=lambda _m: None).run(0)
    dist.barrier()
    if ctx.rank == 0:
        result["train_only"] = before + only.run(steps)
        result["threads"] = torch.get_num_threads()
        atomic_write_json(out, result)
    ctx.close()


def measure_communication(cfg: Config, ctx: Any, repeats: int = 10) -> dict[str, float]:
    """Seconds of one weight broadcast, of one adversarial batch's transfer, and all-reduce bandwidth."""
    from conadv_repro.data.datasets import build_data
    from conadv_repro.distributed.attack_link import flatten
    from conadv_repro.engine.trainer import build_network, resolve_device

    device = resolve_device(cfg.runtime.device, ctx.local_rank)
    bundle = build_data(cfg.data, root=cfg.data_root, image_size=cfg.model.input_size, seed=cfg.seed)
    network = build_network(cfg, bundle, device, channels_last=False)
    flat = flatten(network).to(device)
    batch = torch.zeros((cfg.batch_size, bundle.in_channels, bundle.image_size, bundle.image_size), device=device)

    def timed(fn: Any) -> float:
        fn()  # warm-up
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync(device)
        return (time.perf_counter() - t0) / repeats

    broadcast = timed(lambda: dist.broadcast(flat, src=0, group=ctx.weights_group))

    def transfer() -> None:
        if ctx.rank == 1:
            dist.send(batch, dst=0)
        else:
            dist.recv(batch, src=1)

    transfer_s = timed(transfer)
    allreduce = timed(lambda: dist.all_reduce(flat))
    nbytes = flat.numel() * flat.element_size()
    return {"broadcast_s": broadcast, "weights_bytes": nbytes, "transfer_s": transfer_s,
            "transfer_s_per_example": transfer_s / cfg.batch_size, "allreduce_s": allreduce,
            "allreduce_bytes_per_s": nbytes / allreduce if allreduce > 0 else None,
            "params": sum(p.numel() for p in network.parameters()), "in_channels": bundle.in_channels,
            "image_size": bundle.image_size}


def median_ms(values: list[float]) -> float:
    return 1000 * statistics.median(values)


def report(single: dict[str, list[float]], workers: dict[str, Any], cfg: Config) -> dict[str, Any]:
    b = cfg.batch_size
    med = {name: statistics.median(v) for name, v in single.items()}
    med["conadv_workers"] = statistics.median(workers["conadv_workers"])
    med["train_only_workers_run"] = statistics.median(workers["train_only"])
    rows = [("vanilla", "vanilla, 1 process"), ("disadv", "DisAdv, 1 process"),
            ("conadv_sequential", "ConAdv sequential, 1 process"),
            ("conadv_concurrent", "ConAdv concurrent on one device (attack thread/stream)"),
            ("conadv_workers", "ConAdv, 1 trainer + 1 attack worker (trainer's step)"),
            ("train_only", "train-only (clean + adv, no attack), 1 process"),
            ("train_only_workers_run", "train-only, same process as the attack-worker run"),
            ("attack", "attack alone (one batch)")]
    print(f"{'variant':58s} {'step ms':>9s} {'images/s':>9s}")
    for key, label in rows:
        rate = f"{b / med[key]:9.1f}" if key != "attack" else f"{'':9s}"
        print(f"{label:58s} {1000 * med[key]:9.1f} {rate}")
    train, attack = med["train_only_workers_run"], med["attack"]
    ideal = (attack + med["train_only"]) / med["train_only"]
    dis_con = med["disadv"] / med["conadv_workers"]
    comm = workers["communication"]
    ratios = {
        "conadv_workers_over_train_only": med["conadv_workers"] / train,
        "disadv_over_conadv_workers": dis_con,
        "ideal_disadv_over_train_only": ideal,
        "fraction_of_ideal": dis_con / ideal,
        "disadv_over_conadv_concurrent": med["disadv"] / med["conadv_concurrent"],
        "conadv_concurrent_over_sequential": med["conadv_concurrent"] / med["conadv_sequential"],
    }
    print()
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED (an otherwise busy machine takes the ranks' cores: rerun it idle)"

    print(f"ConAdv with a worker / train-only (same run)  {ratios['conadv_workers_over_train_only']:.3f}  "
          f"(goal <= 1.05: {verdict(ratios['conadv_workers_over_train_only'] <= 1.05)})")
    print(f"DisAdv / ConAdv with a worker                 {dis_con:.3f}  ideal (attack + train)/train = "
          f"{ideal:.3f}, {100 * ratios['fraction_of_ideal']:.1f}% of it "
          f"(goal >= 95%: {verdict(ratios['fraction_of_ideal'] >= 0.95)})")
    print(f"DisAdv / ConAdv concurrent on one device      {ratios['disadv_over_conadv_concurrent']:.3f}")
    print(f"ConAdv concurrent / sequential, one device    {ratios['conadv_concurrent_over_sequential']:.3f}")
    print(f"weight broadcast {1000 * comm['broadcast_s']:.2f} ms for {comm['weights_bytes'] / 1e6:.2f} MB; "
          f"adversarial batch transfer {1000 * comm['transfer_s']:.2f} ms for {b} examples; "
          f"all-reduce {comm['allreduce_bytes_per_s'] / 1e9:.2f} GB/s")
    side = workers.get("side", {})
    if side:
        print(f"in the ConAdv run: trainer 0 spent {1000 * side['weights_broadcast_issue_s'] / max(len(workers['conadv_workers']), 1):.2f} "
              f"ms/step issuing broadcasts and {1000 * side['adversarial_wait_s'] / max(len(workers['conadv_workers']), 1):.2f} "
              "ms/step waiting for adversarial examples (on a GPU: its stream's wait, from CUDA events)")
    return {"median_s": med, "ratios": ratios, "communication": comm}


def check_save_path(path: Path) -> None:
    """Fail before the measurement, which takes minutes, rather than when its result cannot be written."""
    folder = path.parent
    if path.is_dir():
        raise UserError(f"--save {path}: is a folder; give a file name such as {path / 'mymachine.json'}")
    if not folder.is_dir():
        raise UserError(f"--save {path}: the folder {folder} does not exist")
    try:  # a trial file rather than os.access, which says yes to root even where writes fail (/proc)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UserError(f"--save {path}: cannot write in {folder} ({error.strerror or error})") from None


def save_calibration(path: Path, calibration: dict[str, Any]) -> None:
    try:
        atomic_write_json(path, calibration)
    except OSError as error:
        # The folder was checked before the measurement; losing it now (disk full, removed) still leaves
        # the numbers printed above.
        raise UserError(f"--save {path}: cannot write it ({error.strerror or error}); the numbers are printed above") from None


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides of every variant")
    parser.add_argument("--rounds", type=at_least_one, default=3,
                        help="alternating rounds of the one-process variants (at least 1)")
    parser.add_argument("--steps", type=at_least_one, default=6, help="timed steps per variant and round (at least 1)")
    parser.add_argument("--save", type=Path, default=None, help="write a calibration JSON here")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker_main(args.worker, args.steps, args.overrides)
        return 0
    if args.save is not None:
        check_save_path(args.save)
    cfg = variant_config("disadv", args.overrides)
    torch.set_num_threads(cfg.runtime.threads or torch.get_num_threads())
    device = Trainer(cfg, log=lambda _m: None).device
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"machine: {where}; {os.cpu_count()} cores; {cfg.runtime.threads or 'default'} torch thread(s) per "
          f"process; {cfg.model.name} width {cfg.model.width}, {cfg.model.input_size or 'default'} px, batch "
          f"{cfg.batch_size}, BN groups of {cfg.bn.group_size}")
    single = single_process(args.overrides, args.rounds, args.steps)
    workers = with_attack_workers(args.overrides, args.rounds * args.steps, timeout=1800)
    summary = report(single, workers, cfg)
    if args.save:
        med, comm = summary["median_s"], summary["communication"]
        b = cfg.batch_size
        save_calibration(args.save, {
            "schema": 1, "machine": f"{where}, {os.cpu_count()} cores, {device.type.upper()}",
            "device": device.type, "device_name": where, "model": cfg.model.name, "width": cfg.model.width,
            "in_channels": comm["in_channels"], "image_size": comm["image_size"], "params": comm["params"], "weights_bytes": comm["weights_bytes"],
            "batch": b, "command": "python benchmarks/throughput.py " + " ".join(argv or sys.argv[1:]),
            "date": datetime.date.today().isoformat(),
            "per_example_s": {"vanilla": med["vanilla"] / b, "train_only": med["train_only"] / b,
                              "attack": med["attack"] / b, "disadv": med["disadv"] / b,
                              "conadv_concurrent": med["conadv_concurrent"] / b},
            "broadcast_s": comm["broadcast_s"], "transfer_s_per_example": comm["transfer_s_per_example"],
            "allreduce_bytes_per_s": comm["allreduce_bytes_per_s"]})
        print(f"calibration written to {args.save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
