"""torch.compile traces the training forward once per BN branch and never again: the split BN keeps no
Python state that changes between calls (its group counts are tensors), so neither the micro-batch index,
the step nor a resume adds a graph. Dynamo's eager backend: the guards and graphs are Dynamo's, whatever
backend compiles them (inductor on a GPU, `make gpu-check`)."""

from __future__ import annotations

import functools

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from conadv_repro.config import config_from_overrides
from conadv_repro.engine.trainer import Trainer

# Accumulation 4: four micro-batches of one BN group each per step.
BASE = ["data=digits", "model.name=resnet8", "model.width=4", "batch_size=32", "bn.group_size=8",
        "runtime.micro_batch=8", "runtime.device=cpu", "runtime.threads=1", "runtime.wandb=disabled", "steps=3",
        "optim.lr=1.0", "schedule.warmup_epochs=0.1", "runtime.compile=true"]
TRAINED_BRANCHES = {"vanilla": 1, "conadv": 2}


def step(t: Trainer, index: int) -> None:
    t.train_step(index, t.step_batches(index))
    t.step = index + 1


@pytest.mark.parametrize("method", TRAINED_BRANCHES)
def test_one_graph_per_trained_branch_and_no_recompile_after_step_1_or_on_resume(monkeypatch, method):
    counter = CompileCounterWithBackend("eager")
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=counter))
    torch._dynamo.reset()
    overrides = [*BASE, f"method={method}", *(["conadv.executor=sequential"] if method == "conadv" else [])]
    first = Trainer(config_from_overrides(overrides), log=lambda _m: None)
    resumed = None
    try:
        first.open_batches(0)
        step(first, 0)
        assert counter.frame_count == TRAINED_BRANCHES[method]
        with torch.compiler.set_stance("fail_on_recompile"):
            step(first, 1)
            resumed = Trainer(config_from_overrides(overrides), log=lambda _m: None)
            resumed.load_state_dict(first.state_dict())
            resumed.open_batches(resumed.step)
            step(resumed, 2)
        assert counter.frame_count == TRAINED_BRANCHES[method]
    finally:
        first.close()
        if resumed is not None:
            resumed.close()
        torch._dynamo.reset()
