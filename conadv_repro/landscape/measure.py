"""A run directory in, a landscape entry out: the network, the sample, the measures, the key.

The network is the run's as the suite evaluates it (engine/evaluation.py): built from its stored config
by the data and model builders (data.datasets.build_data, engine.trainer.build_network), the checkpoint's
weights and BN statistics loaded, eval mode, main BN. The sample is `examples` training examples through
the eval transform (the bundle's `train_eval`: no augmentation), chosen by a fixed seed
(settings.SAMPLE_SEED) and sorted, cut into micro-batches of `micro_batch` in that order. Then each
measure runs under `fp32_numerics` and reports its time on the log.
"""

from __future__ import annotations

import hashlib
import math
import platform
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from conadv_repro.errors import UserError
from conadv_repro.landscape import hessian, sharpness, slices, store
from conadv_repro.landscape.objective import Objective, fp32_numerics, main_route_parameters, main_statistics
from conadv_repro.landscape.runs import RunAtCheckpoint, check_same_setup, open_run, read_config
from conadv_repro.landscape.settings import Settings
from conadv_repro.landscape_state import checkpoint_stat


def sample_indices(num_train: int, examples: int, seed: int) -> list[int]:
    """`examples` distinct training indices: the first of numpy's RandomState(seed) permutation (the same
    in every numpy version), sorted."""
    if examples > num_train:
        raise ValueError(f"{examples} examples from a training set of {num_train}")
    return sorted(int(i) for i in np.random.RandomState(seed).permutation(num_train)[:examples])


def load_sample(dataset: Any, indices: Sequence[int], micro_batch: int,
                device: torch.device) -> list[tuple[Tensor, Tensor]]:
    """(inputs, targets) micro-batches of `dataset[i]` for `indices`, in order, on `device`."""
    batches = []
    for start in range(0, len(indices), micro_batch):
        chunk = list(indices[start : start + micro_batch])
        getitems = getattr(dataset, "__getitems__", None)
        items = getitems(chunk) if getitems is not None else [dataset[i] for i in chunk]
        if hasattr(items, "inputs"):  # the suite's StackedSamples
            inputs, targets = items.inputs, items.targets
        else:
            inputs = torch.stack([item[0] for item in items])
            targets = torch.as_tensor([int(item[1]) for item in items], dtype=torch.int64)
        batches.append((inputs.to(device=device, dtype=torch.float32).contiguous(), targets.to(device)))
    return batches


def network_at(run: RunAtCheckpoint, bundle: Any, device: torch.device) -> nn.Module:
    """The run's network with its checkpoint loaded, in eval mode, float32, contiguous layout."""
    from conadv_repro.engine.trainer import build_network

    model = build_network(run.cfg, bundle, device, channels_last=False)
    try:
        model.load_state_dict(run.state["model"])
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise UserError(f"checkpoint {run.path / 'checkpoints' / run.checkpoint.file} does not fit the run's "
                        f"network ({first})") from None
    return model.float().eval()


def measure_key(settings: Settings, run: RunAtCheckpoint, other: RunAtCheckpoint | None) -> dict[str, Any]:
    # The key's one definition is torch-free (landscape_state.py): the launcher's status compares keys too.
    from conadv_repro.landscape_state import measure_key as key_of

    return key_of(settings, run.checkpoint.as_dict(),
                  None if other is None else {"run_id": other.run_id, "checkpoint": other.checkpoint.as_dict()})


def measure_run(run_dir: Path, settings: Settings, *, device: torch.device, allow_unfinished: bool = False,
                between: Path | None = None, data_root: Path | None = None, recompute: bool = False,
                log: Callable[[str], None] = lambda _line: None) -> tuple[dict[str, Any], bool]:
    """Measure `run_dir` (or find the entry of the same key in its landscape.json): (entry, reused)."""
    from conadv_repro.data.datasets import build_data

    run = open_run(run_dir, allow_unfinished=allow_unfinished, data_root=data_root)
    cfg = run.cfg
    other = None
    if between is not None:
        # The configs first: a run of another network or dataset is refused before its checkpoint is read.
        check_same_setup(cfg, read_config(between, option="--between", check_data=False), between)
        other = open_run(between, allow_unfinished=allow_unfinished, option="--between", check_data=False)
    key = measure_key(settings, run, other)
    found = None if recompute else store.find(store.read_entries(run.path), key)
    if found is not None:
        log(f"landscape: {run.path}: reusing entry {store.key_id(key)} measured {found.get('measured_at')} "
            f"({run.checkpoint.file}, step {run.checkpoint.step}); --recompute measures again")
        return found, True
    started = time.perf_counter()
    bundle = build_data(cfg.data, root=cfg.data_root, image_size=cfg.model.input_size, autoaugment=cfg.autoaugment,
                        seed=cfg.seed, decoder=cfg.data_decoder)
    if settings.examples > bundle.num_train:
        raise UserError(f"--examples {settings.examples} is more than the {bundle.num_train} training examples of "
                        f"data={cfg.data}; allowed: 1 to {bundle.num_train}")
    indices = sample_indices(bundle.num_train, settings.examples, settings.sample_seed)
    model = network_at(run, bundle, device)
    named = main_route_parameters(model)
    params = [p for _, p in named]
    end: list[Tensor] | None = None
    if other is not None:
        end = _other_end(model, network_at(other, bundle, device), other)
    batches = load_sample(bundle.train_eval, indices, settings.micro_batch, device)
    objective = Objective(model, params, batches, label_smoothing=cfg.optim.label_smoothing)
    log(f"landscape: {run.path} ({run.checkpoint.file}, step {run.checkpoint.step}): "
        f"{sum(p.numel() for p in params):,} parameters, {len(indices)} examples in micro-batches of "
        f"{settings.micro_batch}, {device} with {torch.get_num_threads()} threads; set up in "
        f"{time.perf_counter() - started:.1f} s")
    seconds: dict[str, float] = {"setup": time.perf_counter() - started}
    with fp32_numerics():
        point = objective.evaluate()
        results: dict[str, Any] = {}
        for measure in settings.measures:
            began = time.perf_counter()
            results[measure] = _MEASURES[measure](objective, settings, end=end, model=model)
            seconds[measure] = time.perf_counter() - began
            log(f"landscape: {measure}: {summary_line(measure, results[measure])} in {seconds[measure]:.1f} s")
    entry = {
        "key": key, "key_id": store.key_id(key),
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": _environment(device),
        "run": {"run_id": run.run_id, "method": cfg.method, "batch_size": cfg.batch_size,
                "paper_batch": cfg.paper_batch, "seed": cfg.seed, "finished": run.finished,
                "checkpoint": run.checkpoint.as_dict(), "last_lr": run.last_lr(),
                "peak_lr": run.derived.get("peak_lr"), "label_smoothing": cfg.optim.label_smoothing},
        "sample": {"examples": len(indices), "of": bundle.num_train, "seed": settings.sample_seed,
                   "indices_sha256": hashlib.sha256(",".join(map(str, indices)).encode()).hexdigest(), **point},
        "weights": {"parameters": sum(p.numel() for p in params),
                    "norm": hessian.norm([p.detach() for p in params]),
                    "layers": {name: float(p.detach().double().norm()) for name, p in named}},
        "results": results,
        "seconds": seconds,
        # Not part of the key: lets `status` trust the stored hash while the file is untouched (landscape_state).
        "checkpoint_stat": checkpoint_stat(run.path / "checkpoints" / run.checkpoint.file),
    }
    store.store(run.path, entry)
    return entry, False


def _other_end(model: nn.Module, other_model: nn.Module, other: RunAtCheckpoint) -> list[Tensor]:
    """The other run's main-route parameters and main BN statistics, in the order of this run's."""
    ours = [(name, tuple(t.shape)) for name, t in [*main_route_parameters(model), *main_statistics(model)]]
    theirs = [*main_route_parameters(other_model), *main_statistics(other_model)]
    if ours != [(name, tuple(t.shape)) for name, t in theirs]:
        raise UserError(f"--between {other.path} is another architecture (its parameters differ in names or "
                        "shapes from this run's); allowed: a run of the same network on the same data")
    return [t.detach().clone() for _, t in theirs]


def _generator(settings: Settings, measure: str) -> torch.Generator:
    return torch.Generator().manual_seed(settings.generator_seed(measure))


def _eigenvalue(objective: Objective, settings: Settings, **_: Any) -> dict[str, Any]:
    def top(smoothing: float | None) -> dict[str, object]:
        return hessian.power_iteration(lambda v: objective.hvp(v, smoothing=smoothing), objective.params,
                                       _generator(settings, "eigenvalue"), max_iterations=settings.power_max_iterations,
                                       tolerance=settings.power_tolerance).as_dict()

    train = top(None)
    # Without label smoothing the training loss is plain cross-entropy: the same number, not measured twice.
    ce = dict(train) if objective.label_smoothing == 0.0 else top(0.0)
    return {**train, "ce": ce}


def _trace(objective: Objective, settings: Settings, **_: Any) -> dict[str, Any]:
    return hessian.hutchinson_trace(objective.hvp, objective.params, _generator(settings, "trace"),
                                    probes=settings.probes).as_dict()


def _adaptive(objective: Objective, settings: Settings, **_: Any) -> dict[str, Any]:
    operator = sharpness.adaptive_operator(objective.hvp, objective.params)
    return hessian.power_iteration(operator, objective.params, _generator(settings, "adaptive"),
                                   max_iterations=settings.power_max_iterations,
                                   tolerance=settings.power_tolerance).as_dict()


def _epsilon(objective: Objective, settings: Settings, **_: Any) -> dict[str, Any]:
    return sharpness.epsilon_sharpness(objective.value_and_grad, objective.value, objective.params,
                                       epsilon=settings.epsilon, steps=settings.ascent_steps).as_dict()


def _slice(objective: Objective, settings: Settings, **_: Any) -> dict[str, Any]:
    direction = slices.filter_normalised_direction(objective.params, _generator(settings, "slice"))
    return {"points": slices.slice_along(objective.evaluate, objective.params, direction, settings.slice_alphas)}


def _between(objective: Objective, settings: Settings, *, end: list[Tensor], model: nn.Module,
             **_: Any) -> dict[str, Any]:
    tensors = [*objective.params, *(t for _, t in main_statistics(model))]
    count = len(objective.params)
    distance = hessian.norm(hessian.combine(end[:count], [p.detach() for p in objective.params], -1.0))
    points = slices.slice_between(objective.evaluate, tensors, end, settings.between_alphas)
    return {"distance": distance, "points": points}


_MEASURES: dict[str, Callable[..., dict[str, Any]]] = {
    "eigenvalue": _eigenvalue, "trace": _trace, "adaptive": _adaptive, "epsilon": _epsilon, "slice": _slice,
    "between": _between,
}


def summary_line(measure: str, result: dict[str, Any]) -> str:
    """One line of a measure's result, for the log and the command's output."""
    if measure in ("eigenvalue", "adaptive"):
        line = (f"{result['value']:+.6g} ({result['iterations']} iterations, residual {result['residual']:.3g}"
                f"{'' if result['converged'] else ', not converged'})")
        if measure == "eigenvalue":
            ce = result["ce"]
            line += f"; plain cross-entropy {ce['value']:+.6g} ({ce['iterations']} iterations)"
        return line
    if measure == "trace":
        return f"{result['value']:.6g} +- {result['stderr']:.3g} ({result['probes']} probes)"
    if measure == "epsilon":
        return (f"phi {result['value']:.6g}% (loss {result['loss']:.6g} -> {result['max_loss']:.6g}, eps "
                f"{result['epsilon']:g}, {result['steps']} steps)")
    points = result["points"]
    worst = max(points, key=lambda row: row["loss"] if math.isfinite(row["loss"]) else math.inf)
    middle = points[len(points) // 2]
    prefix = f"distance {result['distance']:.4g}, " if measure == "between" else ""
    return (f"{prefix}{len(points)} points, loss {middle['loss']:.4g} at alpha {middle['alpha']:g}, "
            f"highest {worst['loss']:.4g} at alpha {worst['alpha']:g}")


def _environment(device: torch.device) -> dict[str, Any]:
    import conadv_repro
    from conadv_repro.machine import cpu_name

    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
            "python": platform.python_version(), "package_version": conadv_repro.__version__}


__all__ = ["load_sample", "measure_key", "measure_run", "network_at", "sample_indices", "summary_line"]
