"""Section 1: the GPU paths give the right numbers (deterministic mode) and run at all (fast mode).

Deterministic mode (`runtime.deterministic=true`, engine/determinism.py) makes a CUDA run repeatable bit
for bit, so the claims tests/test_conadv.py and tests/test_resume.py make on the CPU can be made on the
GPU too, exactly: the side-stream executor gives the sequential executor's weights (a missing stream
synchronisation would show as a difference, not as a crash), ConAdv with tau=0 is DisAdv, and a run
resumed from a checkpoint written on the GPU ends where the uninterrupted run ends. Bit-identity is the
claim because both sides run the same kernels in the same order on the same inputs; a tolerance would
hide exactly the races this looks for.

Fast mode is what paper-scale runs use: bf16 autocast, channels_last, torch.compile, pinned loaders with
worker processes. There the check is that every method trains and its loss stays finite.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from conadv_repro.config import METHODS, config_from_overrides
from conadv_repro.engine.checkpoint import load_latest_checkpoint
from conadv_repro.engine.determinism import CUBLAS_ENV, deterministic_mode
from conadv_repro.engine.run import run_training
from conadv_repro.engine.trainer import Trainer
from conadv_repro.gpu_check.device import release
from conadv_repro.gpu_check.plan import Plan
from conadv_repro.gpu_check.report import CheckFailed, Report
from conadv_repro.runfiles import METRICS_FILE

TIMING_FIELDS = {"elapsed_s", "images_per_s"}
NONDETERMINISTIC = re.compile(r"(\S+) does not have a deterministic implementation")


def quiet(_message: str) -> None:
    pass


def build(overrides: Iterable[str]) -> Trainer:
    return Trainer(config_from_overrides(list(overrides)), log=quiet)


def train(trainer: Trainer, steps: int, *, opened: bool = False) -> list[float]:
    if not opened:
        trainer.open_batches(0)
    losses = []
    for step in range(steps):
        losses.append(trainer.train_step(step, trainer.step_batches(step))["loss"])
        trainer.step = step + 1
    return losses


def differences(a: dict[str, Any], b: dict[str, Any]) -> tuple[int, int, float]:
    """(tensors compared, tensors that differ, the largest difference relative to each tensor's largest value)."""
    if a.keys() != b.keys():
        raise CheckFailed(f"the states hold different keys: {sorted(set(a) ^ set(b))[:5]}")
    differ, worst = 0, 0.0
    for key, value in a.items():
        other = b[key]
        if torch.equal(value, other):
            continue
        differ += 1
        if value.is_floating_point():
            scale = value.abs().max().item() or 1.0
            worst = max(worst, (value.float() - other.float()).abs().max().item() / scale)
        else:
            worst = math.inf
    return len(a), differ, worst


def require_identical(what: str, a: dict[str, Any], b: dict[str, Any]) -> int:
    compared, differ, worst = differences(a, b)
    if differ:
        raise CheckFailed(f"{what}: {differ} of {compared} tensors differ, the largest by {worst:.2e} of the "
                          "tensor's scale")
    return compared


def concurrent_executor(plan: Plan) -> str:
    return "stream" if plan.device == "cuda" else "thread"


# ----------------------------------------------------------------------------- deterministic mode


def deterministic_section(plan: Plan, report: Report) -> None:
    report.section("1 correctness: deterministic mode (runtime.deterministic=true)")
    with warnings.catch_warnings(record=True) as caught, deterministic_mode():
        warnings.simplefilter("always")
        report.note(f"torch.use_deterministic_algorithms(True, warn_only=True), {CUBLAS_ENV}="
                    f"{os.environ[CUBLAS_ENV]}, cudnn.benchmark=False, cudnn.deterministic=True")
        executor = concurrent_executor(plan)
        report.check(f"ConAdv on the {executor} executor = the sequential executor", lambda: executors_agree(plan))
        report.check("ConAdv with tau=0 = DisAdv", lambda: tau0_is_disadv(plan))
        report.check(f"a resume from a checkpoint written on the {plan.device.upper()} = the uninterrupted run",
                     lambda: resume_is_exact(plan))
    ops = sorted({m.group(1) for w in caught if (m := NONDETERMINISTIC.search(str(w.message)))})
    report.note(f"ops that have no deterministic kernel and warned: {', '.join(ops) if ops else 'none'}")
    others = sorted({str(w.message).splitlines()[0][:200] for w in caught if not NONDETERMINISTIC.search(str(w.message))})
    for text in others[:5]:
        report.note(f"warning: {text}")


def exact_overrides(plan: Plan, *extra: str) -> list[str]:
    return [*plan.exact, "runtime.deterministic=true", f"steps={plan.exact_steps}", *extra]


def executors_agree(plan: Plan) -> str:
    executor = concurrent_executor(plan)
    sequential = build(exact_overrides(plan, "method=conadv", "conadv.executor=sequential"))
    concurrent = build(exact_overrides(plan, "method=conadv", f"conadv.executor={executor}"))
    where: list[str] = []
    attack = concurrent.method._attack

    def traced(micro: Any) -> Any:
        where.append(threading.current_thread().name)
        return attack(micro)

    concurrent.method._attack = traced
    try:
        train(sequential, plan.exact_steps)
        train(concurrent, plan.exact_steps)
        compared = require_identical("weights and BN statistics", sequential.model.state_dict(),
                                     concurrent.model.state_dict())
    finally:
        sequential.close()
        concurrent.close()
        release()
    beside = sum(name.startswith("conadv-attack") for name in where)
    if not beside:
        raise CheckFailed(f"none of the {len(where)} attacks ran on the {executor} executor's thread: nothing overlapped")
    return (f"bit-identical weights and BN statistics after {plan.exact_steps} steps ({compared} tensors); "
            f"{beside} of {len(where)} attacks ran beside the update")


def tau0_is_disadv(plan: Plan) -> str:
    disadv = build(exact_overrides(plan, "method=disadv"))
    conadv = build(exact_overrides(plan, "method=conadv", "conadv.tau=0"))
    try:
        train(disadv, plan.exact_steps)
        train(conadv, plan.exact_steps)
        compared = require_identical("weights and BN statistics", disadv.model.state_dict(), conadv.model.state_dict())
        label = conadv.method.executor_label()
    finally:
        disadv.close()
        conadv.close()
        release()
    return f"bit-identical after {plan.exact_steps} steps ({compared} tensors; ConAdv on the {label} executor)"


class _Interrupted(BaseException):
    """Stops a run between a checkpoint and the next one, as a kill would (not an Exception: the run must
    not record it as its own failure)."""


def _stop_at(step: int) -> Callable[[str], None]:
    marker = f"] step {step}/"

    def log(message: str) -> None:
        if marker in message:
            raise _Interrupted
    return log


def resume_is_exact(plan: Plan) -> str:
    # ConAdv: its weight snapshots and the side stream's pending attack are the state most likely to be lost.
    cfg = config_from_overrides(exact_overrides(plan, "method=conadv", f"runtime.checkpoint_every={plan.resume_at}",
                                                "runtime.log_every=1"))
    with tempfile.TemporaryDirectory(prefix="conadv-gpu-check-") as tmp:
        whole, cut = Path(tmp) / "whole", Path(tmp) / "cut"
        run_training(cfg, whole, log=quiet)
        try:
            run_training(cfg, cut, log=_stop_at(plan.resume_at + 1))
        except _Interrupted:
            pass
        else:
            raise CheckFailed("the run meant to be interrupted ran to its end")
        lines: list[str] = []
        record = run_training(cfg, cut, log=lines.append)
        resumed = [line for line in lines if line.startswith("resuming")]
        if not resumed or f"at step {plan.resume_at}/" not in resumed[0]:
            raise CheckFailed(f"the second run did not resume at step {plan.resume_at}: {resumed or lines[:1]}")
        if record.get("status") != "finished":
            raise CheckFailed(f"the resumed run ended {record.get('status')}: {record.get('error')}")
        a, b = _final_state(whole), _final_state(cut)
        compared = require_identical("weights", a["model"], b["model"])
        compared += require_identical("optimizer state", _optimizer_tensors(a), _optimizer_tensors(b))
        for step, snapshot in a["method"]["snapshots"].items():
            compared += require_identical(f"ConAdv's snapshot of theta_{step}", snapshot, b["method"]["snapshots"][step])
        if _metrics(whole) != _metrics(cut):
            raise CheckFailed("metrics.jsonl differs (timing fields aside)")
    return (f"stopped after step {plan.resume_at + 1}, resumed from step {plan.resume_at}: weights, optimizer, ConAdv "
            f"snapshots ({compared} tensors) and metrics bit-identical")


def _final_state(run_dir: Path) -> dict[str, Any]:
    loaded = load_latest_checkpoint(run_dir)
    if loaded is None or loaded[1].name != "final.pt":
        raise CheckFailed(f"no final checkpoint in {run_dir.name}")
    return loaded[0]


def _optimizer_tensors(state: dict[str, Any]) -> dict[str, Any]:
    return {f"{index}.{name}": value for index, buffers in state["optimizer"]["state"].items()
            for name, value in buffers.items() if isinstance(value, torch.Tensor)}


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip()]
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in rows]


# ----------------------------------------------------------------------------- fast mode


def fast_section(plan: Plan, report: Report) -> None:
    layout = "bf16 autocast" + (", channels_last" if plan.device == "cuda" else "")
    report.section(f"1 correctness: fast mode ({layout}{'' if plan.device == 'cuda' else '; channels_last is CUDA-only'})")
    for method in METHODS:
        report.check(f"{method} trains with {layout}", lambda m=method: fast_run([*plan.fast, f"method={m}"],
                                                                                  plan.fast_steps))
    if plan.compile is None:
        report.skip("runtime.compile=true", plan.skip_compile)
    else:
        for method in ("vanilla", "conadv"):
            report.check(f"{method} trains with runtime.compile=true",
                         lambda m=method: fast_run([*plan.compile, f"method={m}"], plan.fast_steps))
    pinned = " and pinned memory" if plan.device == "cuda" else ""
    report.check(f"a loader with runtime.workers=2{pinned} feeds a run", lambda: loader_run(plan))


def fast_run(overrides: list[str], steps: int) -> str:
    trainer = build([*overrides, f"steps={steps}"])
    try:
        t0 = time.perf_counter()
        trainer.open_batches(0)
        first = trainer.train_step(0, trainer.step_batches(0))["loss"]
        trainer.step = 1
        first_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        losses = [first]
        for step in range(1, steps):
            losses.append(trainer.train_step(step, trainer.step_batches(step))["loss"])
            trainer.step = step + 1
        rest_s = (time.perf_counter() - t1) / max(steps - 1, 1)
        evidence = f"{steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, finite"
        if trainer.channels_last:
            conv = next(p for p in trainer.model.parameters() if p.dim() == 4)
            if not conv.is_contiguous(memory_format=torch.channels_last):
                raise CheckFailed("runtime.channels_last=true but the convolution weights are not channels_last")
            evidence += ", channels_last weights"
        label = trainer.method.executor_label()
        if label:
            evidence += f", attack on the {label} executor"
        if trainer.cfg.runtime.compile:
            evidence += f"; first step (compiles) {first_s:.1f} s, then {rest_s * 1000:.0f} ms/step"
        return evidence
    finally:
        trainer.close()
        release()


def loader_run(plan: Plan) -> str:
    overrides = [*plan.fast, "method=vanilla", f"steps={plan.fast_steps}"]
    reference = build([*overrides, "runtime.workers=0"])
    trainer = build([*overrides, "runtime.workers=2"])
    try:
        reference.open_batches(0)
        trainer.open_batches(0)
        first, expected = trainer.batches.peek(0), reference.batches.peek(0)
        if plan.device == "cuda" and not first.inputs.is_pinned():
            raise CheckFailed("the loader's batches are not in pinned memory")
        if not (torch.equal(first.inputs, expected.inputs) and torch.equal(first.targets, expected.targets)):
            raise CheckFailed("the workers' first micro-batch differs from the one loaded without workers")
        losses = train(trainer, plan.fast_steps, opened=True)
    finally:
        trainer.close()
        reference.close()
        release()
    pinned = "pinned, " if plan.device == "cuda" else ""
    return (f"{plan.fast_steps} steps, loss {losses[-1]:.3f} finite; its batches {pinned}the same as without "
            "workers")
