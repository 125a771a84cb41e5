"""`python -m conadv_repro.launch EXPERIMENT --scale S [--profile P] --estimate`: what a grid would cost.

For every planned run: its method, batch, devices (trainers + attack workers, one GPU each), steps (the
config's `steps`, else epochs x floor(N / B) with N the scale's training set), and the performance
model's projected wall time and GPU-hours (conadv_repro/throughput_model.py), from measured step times: the
newest calibration in benchmarks/calibrations/ of the profile's hardware (its `constraint`, e.g. a100,
for a GPU profile; a CPU one for a profile without GPUs), or `--calibration PATH`, or `--calibration
published` for NVIDIA's published A100 figure (labelled "published, not measured here"). Then the grid's
total. With a GPU profile and ImageNet runs, a line says whether the profile's CPUs per task can feed a
GPU at the projected rate, from the newest loader calibration (benchmarks/calibrations/loader/, see
launch/loader_check.py), and whether each run's micro-batch fits the profile's GPUs (`gpu_mem_gb`, from
benchmarks/calibrations/memory/, see launch/memory_check.py). With a profile, a line says whether its `mem_gb`
(memory per node) over a node's tasks holds what a rank needs on the host (launch/host_memory.py). Nothing is submitted, nothing is written, and no dataset is needed. No torch import.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

from conadv_repro import throughput_model
from conadv_repro.batch_sizes import format_batch
from conadv_repro.config import Config
from conadv_repro.errors import UserError
from conadv_repro.landscape_state import assumed_passes, declared_for, settings_of
from conadv_repro.launch.host_memory import host_memory_report
from conadv_repro.launch.loader_check import feed_line, find_loader_calibration
from conadv_repro.launch.memory_check import memory_report
from conadv_repro.launch.plan import PlannedRun, expand
from conadv_repro.launch.profiles import Profile, gpus_line, load_profile
from conadv_repro.launch.submit import MAX_REQUEUES
from conadv_repro.presets import IMAGENET_TRAIN, SCALE_TRAIN_SIZE
from conadv_repro.registry import ORDER, experiment_names, load_experiments

# conadv_repro/data/datasets.py holds IMAGENET_VAL_PER_CLASS (3) training images of each of the 1000
# classes out for validation: the paper scale trains on the rest.
IMAGENET_HELD_OUT = 3 * 1000
TRAIN_EXAMPLES = {**SCALE_TRAIN_SIZE, "paper": IMAGENET_TRAIN - IMAGENET_HELD_OUT}


def train_examples(cfg: Config) -> int:
    if cfg.scale in TRAIN_EXAMPLES:
        return TRAIN_EXAMPLES[cfg.scale]
    raise UserError(f"--estimate needs a launch scale; allowed: {', '.join(TRAIN_EXAMPLES)}")


def run_steps(cfg: Config) -> int:
    """The run's optimizer steps, as the engine counts them."""
    if cfg.steps is not None:
        return cfg.steps
    per_epoch = train_examples(cfg) // cfg.batch_size
    return max(1, round(cfg.epochs * per_epoch))


def run_devices(cfg: Config) -> tuple[int, int]:
    """(trainers, attack workers): `runtime.trainers` (0: one, what the launcher starts for it) and
    ConAdv's `conadv.attack_workers`."""
    workers = cfg.conadv.attack_workers if cfg.method == "conadv" else 0
    return max(1, cfg.runtime.trainers), workers


def hardware_tokens(profile: Profile) -> tuple[str, ...]:
    """The GPU models a profile's constraint names (tokens with a digit: 'a100&ib' -> ('a100',))."""
    tokens = re.split(r"[&|,\s\[\]*()]+", profile.constraint or "")
    return tuple(t for t in tokens if t and any(ch.isdigit() for ch in t))


def choose(args: argparse.Namespace, profile: Profile, model: ModuleType) -> Any:
    """The calibration to project with, or a one-line error naming --calibration."""
    choice = getattr(args, "calibration", None)
    if choice:
        return model.calibration_from_choice(choice)
    if args.profile is None:
        device = "cuda" if shutil.which("nvidia-smi") else "cpu"
        what = f"this machine ({'a GPU' if device == 'cuda' else 'CPU only'})"
    else:
        device = "cuda" if profile.gpus_per_node > 0 else "cpu"
        what = f"profile {profile.name} ({'GPUs' if device == 'cuda' else 'no GPU'}" + \
            (f", constraint {profile.constraint}" if profile.constraint else "") + ")"
    tokens = hardware_tokens(profile) if device == "cuda" else ()
    found = model.find_calibration(match=tokens, device=device)
    if found is None:
        folder = model.calibrations_dir()
        benchmark = f"python benchmarks/throughput.py --save {folder}/NAME.json"
        # gpu-check is the one command a GPU cluster's user runs anyway, and it writes the calibration
        # --estimate looks for; a CPU machine has only the benchmark.
        how = (f"make gpu-check on one of the cluster's GPUs writes one (or {benchmark} there)" if device == "cuda"
               else f"measure one with {benchmark} on that machine")
        raise UserError(f"--estimate found no calibration for {what} in {folder}: {how}, or pass "
                        f"--calibration PATH (or --calibration published: NVIDIA's published A100 ResNet-50 rate, "
                        "not measured here)")
    return found


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def cmd_estimate(runs: list[PlannedRun], args: argparse.Namespace) -> int:
    model = throughput_model
    profile = load_profile(args.profile)
    calibration = choose(args, profile, model)
    unit = "GPU-hours" if calibration.device == "cuda" else "device-hours"
    where = f"profile {profile.name}" if args.profile else "no profile"
    print(f"estimate of {len(runs)} run{'s' if len(runs) != 1 else ''} ({', '.join(args.experiments)}, "
          f"{args.scale} scale, {where}); nothing is submitted")
    print(f"calibration: {calibration.describe()}")
    if calibration.published:
        print("  (published, not measured here: measure this hardware with benchmarks/throughput.py --save)")
    costs_of: dict[Any, Any] = {}
    header = (f"{'method':8s} {'AA':2s} {'paper':>5s} {'batch':>6s} {'devices':>11s} {'steps':>9s} "
              f"{'step (s)':>9s} {'wall time':>11s} {unit:>12s}  run id")
    print(header)
    total_hours, total_wall, longest = 0.0, 0.0, 0.0
    over_limit: list[tuple[float, PlannedRun]] = []  # (projected wall time, run) past the profile's time limit
    feeds: list[tuple[float, float, bool, str]] = []  # (loader need, images/s per GPU, AA, what) of ImageNet runs
    loader = find_loader_calibration() if profile.gpus_per_node > 0 and calibration.device == "cuda" else None
    # Landscape measurements the experiments declare (landscape_state.py), run on the job after training.
    declared = {e.name: declared_for(e.settings, args.scale) for e in load_experiments(args.experiments)}
    measured_runs, measure_hours = 0, 0.0
    training_hours: dict[str, float] = {}  # run id -> its projected training device-hours
    for run in runs:
        cfg = run.config
        network = model.network_of_config(cfg.flat())
        if network not in costs_of:
            costs_of[network] = model.costs_for(calibration, network)
        trainers, workers = run_devices(cfg)
        projection = model.project(cfg.method, cfg.batch_size, run_steps(cfg), trainers, workers, costs_of[network])
        total_hours += projection.device_hours
        training_hours[run.run_id] = projection.device_hours
        total_wall += projection.wall_s
        longest = max(longest, projection.wall_s)
        if loader is not None and cfg.data == "imagenet":
            # A task per GPU, each loading its share: the trainers' of the batch, or an attack worker's.
            per_gpu = max(cfg.batch_size / trainers, cfg.batch_size / workers if workers else 0.0) / \
                projection.step.seconds
            what = f"{cfg.method}{' AA' if cfg.autoaugment else ''} at batch {format_batch(cfg.batch_size)}"
            feeds.append((loader.cores_per_gpu(per_gpu, cfg.autoaugment), per_gpu, cfg.autoaugment, what))
        measure = next((declared[name] for name, _, _ in run.uses if declared.get(name)), None)
        if measure is not None:
            # Assumed, not measured: a forward+backward pass per example costs what the calibrated vanilla
            # step costs per example at the sample's micro-batch, on one device.
            settings = settings_of(measure, cfg.data)
            per_example = model.project("vanilla", settings.micro_batch, 1, 1, 0, costs_of[network]).step.seconds / \
                settings.micro_batch
            seconds = per_example * settings.examples * assumed_passes(measure, cfg.optim.label_smoothing)
            measured_runs += 1
            measure_hours += seconds / 3600
            total_hours += seconds / 3600
            total_wall += seconds
        devices = f"{trainers} + {workers}"
        if args.profile and projection.wall_s > profile.time_min * 60:
            over_limit.append((projection.wall_s, run))
        print(f"{cfg.method:8s} {'AA' if cfg.autoaugment else '--':2s} {cfg.paper_batch:>5s} "
              f"{format_batch(cfg.batch_size):>6s} {devices:>11s} {projection.steps:>9,d} "
              f"{projection.step.seconds:>9.4g} {duration(projection.wall_s):>11s} "
              f"{projection.device_hours:>12,.2f}  {run.run_id}")
    for network, costs in costs_of.items():
        scaled = "" if costs.compute_scale == 1 else f", compute x{costs.compute_scale:.4g} of the calibrated network's"
        print(f"network: {network.describe()}, {model.forward_macs(network) / 1e6:,.1f} M MACs per image{scaled}")
    print("devices: trainers + attack workers, one GPU each" if calibration.device == "cuda" else
          "devices: trainers + attack workers, each one machine like the calibration's")
    print("assumptions: " + "; ".join(model.assumptions_text(next(iter(costs_of.values())), calibration)[1:])
          if costs_of else "assumptions: none (no run)")
    imagenet_on_gpus = profile.gpus_per_node > 0 and calibration.device == "cuda" and \
        any(run.config.data == "imagenet" for run in runs)
    if imagenet_on_gpus:
        if feeds:
            _, rate, autoaugment, what = max(feeds)
            print(feed_line(profile.name, profile.cpus_per_task, rate, autoaugment, what, loader))
        else:
            print(feed_line(profile.name, profile.cpus_per_task, 0.0, False, "", None))
    if calibration.device == "cuda":
        for line in memory_report(runs, profile):
            print(line)
    if args.profile:  # mem_gb is what the jobs ask Slurm for, per node
        for line in host_memory_report(runs, profile):
            print(line)
    if args.profile:
        from conadv_repro.launch.submit import request_lines
        from conadv_repro.layout import run_processes

        print(f"jobs on Slurm, one per run at this scale ({gpus_line(args, profile)}):")
        for line in request_lines("slurm", profile, [run_processes(run.config) for run in runs]):
            print(line)
    if measured_runs:
        print(f"landscape: {measured_runs} run{'s' if measured_runs != 1 else ''} measured after training, "
              f"{measure_hours:,.2f} {unit} in all (in the grid's total); assumed, not measured: a Hessian-vector "
              "product ~ 3 forward+backward passes over the sample, power iteration at most 20 of them, a trace "
              "probe 1, each pass at the calibrated vanilla step's cost per example")
    for line in shared_lines(runs, args.experiments, training_hours, unit, measured_runs, args.runs_dir):
        print(line)
    lines = time_limit_lines(over_limit, profile)
    if args.profile and not lines:
        lines = [f"time limit: every run fits profile {profile.name}'s time_min ({duration(profile.time_min * 60)})"]
    for line in lines:
        print(line)
    print(f"grid: {len(runs)} run{'s' if len(runs) != 1 else ''}, {total_hours:,.1f} {unit}, "
          f"{duration(total_wall)} of run time in all (the longest run {duration(longest)}; runs in parallel "
          "finish sooner)")
    if args.scale in ("smoke", "proxy"):
        # Steps of a few milliseconds: start-up, evaluation and per-step overheads, which the model leaves
        # out, are most of such a run's time.
        print(f"note: at the {args.scale} scale these are lower bounds that leave out most of the time (start-up, "
              "evaluation, per-step overheads); the projection is meant for the cifar10 and paper scales")
    return 0


def shared_lines(runs: list[PlannedRun], estimated: list[str], training_hours: dict[str, float], unit: str,
                 measured: int, runs_dir: Path) -> list[str]:
    """Which runs other experiments share (a run is trained once, by whichever launch comes first), and what
    the grid adds beyond the experiment that shares most of them."""
    if "all" in estimated or not runs:
        return []
    others = [e for e in load_experiments(experiment_names()) if e.name not in estimated]
    scale = runs[0].config.scale
    # Planned on their own (without --set: a variation's runs are its own), matched by run id.
    theirs_by_id: dict[str, set[str]] = {}
    for run in expand(others, scale=scale, runs_dir=runs_dir, sets={}, check_data=False):
        theirs_by_id[run.run_id] = {name for name, _, _ in run.uses}
    sharing: dict[str, list[PlannedRun]] = {}
    for run in runs:
        for other in sorted(theirs_by_id.get(run.run_id, set())):
            sharing.setdefault(other, []).append(run)
    if not sharing:
        return []
    # The paper's tables first (the runs a user has most likely trained already), then by how many they share.
    ranked = sorted(sharing.items(), key=lambda item: (item[0] not in ORDER, -len(item[1]), item[0]))
    lines = ["shared: " + ", ".join(f"{len(mine)} of the {len(runs)} runs are {other}'s" for other, mine in ranked)
             + " (a run is trained once, by whichever launch comes first; the estimate above counts each here)"]
    top, theirs = ranked[0]
    beyond = [run for run in runs if run not in theirs]
    what = ", ".join(f"{run.config.method} {run.config.paper_batch or run.config.batch_size}" for run in beyond[:6])
    if not beyond:
        lines.append(f"beyond {top}: nothing to train; once {top} is trained, this grid "
                     + (f"only measures {measured} runs" if measured else "trains nothing"))
        return lines
    lines.append(f"beyond {top}: {len(beyond)} run{'s' if len(beyond) != 1 else ''} to train"
                 + f" ({what}{', ...' if len(beyond) > 6 else ''})"
                 + f", {sum(training_hours[run.run_id] for run in beyond):,.1f} {unit} of training; once {top} "
                 f"is trained, this grid trains only these" + (f" and measures {measured}" if measured else ""))
    return lines


def requeues(wall_s: float, limit_min: int) -> int:
    """Times a run of `wall_s` seconds is requeued under a time limit of `limit_min` minutes (it checkpoints
    at the limit and resumes in a new job), leaving out the time each restart costs."""
    return max(0, math.ceil(wall_s / (limit_min * 60)) - 1)


def time_limit_lines(over_limit: list[tuple[float, PlannedRun]], profile: Profile) -> list[str]:
    if not over_limit:
        return []
    limit = duration(profile.time_min * 60)
    lines = [f"time limit: {len(over_limit)} run{'s' if len(over_limit) != 1 else ''} would outlast profile "
             f"{profile.name}'s time_min ({limit}) and be requeued from their checkpoints (more GPUs per run: "
             "--gpus-per-run):"]
    for wall_s, run in sorted(over_limit, key=lambda item: -item[0]):
        cfg = run.config
        count = requeues(wall_s, profile.time_min)
        capped = f" (more than submitit's {MAX_REQUEUES}: it stops unfinished, and a relaunch resumes it)" \
            if count > MAX_REQUEUES else ""
        lines.append(f"  {cfg.method}{' AA' if cfg.autoaugment else ''} at {format_batch(cfg.batch_size)} "
                     f"({run.run_id}): {duration(wall_s)}, {count} requeue{'s' if count != 1 else ''}{capped}")
    return lines
