"""The pieces of the GPU paths that run on a CPU: bf16 autocast for every method, channels_last through the
split BN and the attack, ResNet-50's step, torch.compile's tracing, deterministic mode, and the synthetic
data of the GPU check's speed section. (The normalisation on the device is tested with the loader.)"""

from __future__ import annotations

import functools
import math
import os

import pytest
import torch

from conadv_repro.config import config_from_overrides
from conadv_repro.engine.determinism import (
    CUBLAS_ENV,
    configure_kernels,
    current_state,
    deterministic_mode,
    restore_state,
)
from conadv_repro.engine.trainer import Trainer
from conadv_repro.errors import UserError
from conadv_repro.gpu_check.correctness import train as train_steps
from conadv_repro.gpu_check.synthetic import SyntheticTrainer

BASE = ["data=digits", "model.name=resnet8", "model.width=4", "batch_size=32", "bn.group_size=8",
        "runtime.micro_batch=16", "runtime.device=cpu", "runtime.threads=1", "runtime.wandb=disabled", "steps=2",
        "optim.lr=1.0", "schedule.warmup_epochs=0.1"]


def quiet(_msg: str) -> None:
    pass


def trainer(*overrides: str, cls: type[Trainer] = Trainer) -> Trainer:
    return cls(config_from_overrides([*BASE, *overrides]), log=quiet)


def train(t: Trainer, steps: int = 2) -> list[float]:
    return train_steps(t, steps)


def output_dtypes(t: Trainer) -> list[torch.dtype]:
    """The dtype of every logits tensor the network produces (the training forwards and the attack's)."""
    seen: list[torch.dtype] = []
    for module in (t.model, *getattr(t.method, "snapshots", {}).values()):
        module.fc.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


@pytest.mark.parametrize("method", ["vanilla", "disadv", "conadv", "noise"])
def test_bf16_autocast_trains_every_method_on_the_cpu(method):
    t = trainer(f"method={method}", "runtime.autocast=bf16")
    seen = output_dtypes(t)
    try:
        losses = train(t)
    finally:
        t.close()
    assert all(math.isfinite(loss) for loss in losses)
    # The training forwards and, for the adversarial methods, the attack's forwards ran under autocast.
    per_micro = {"vanilla": 1, "disadv": 3, "conadv": 3, "noise": 2}[method]  # branches, and the attack
    assert seen == [torch.bfloat16] * (2 * 2 * per_micro)  # 2 steps of 2 micro-batches


class ChannelsLastTrainer(Trainer):
    """The engine with its CUDA memory format forced on, so the channels_last path runs on a CPU."""

    @property
    def channels_last(self) -> bool:
        return True

    @channels_last.setter
    def channels_last(self, _value: bool) -> None:
        pass


def test_channels_last_runs_the_split_bn_and_the_attack_and_matches_the_contiguous_run():
    # Width 8: torch's CPU backward of a strided 1x1 channels_last convolution with fewer than 8 input
    # channels corrupts memory and aborts (torch 2.14, e.g. Conv2d(4, 8, 1, stride=2) on a (16, 4, 16, 16) input);
    # the engine uses channels_last on CUDA only, where cuDNN runs it.
    inputs: list[bool] = []
    reference = trainer("method=disadv", "model.width=8")
    nhwc = trainer("method=disadv", "model.width=8", cls=ChannelsLastTrainer)
    nhwc.model.stem[0].register_forward_pre_hook(
        lambda _m, args: inputs.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    try:
        a, b = train(reference), train(nhwc)
        assert inputs and all(inputs)  # the clean and the adversarial batch arrive channels_last
        assert nhwc.model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
        assert b == pytest.approx(a, rel=1e-4)  # other convolution kernels: the same numbers up to rounding
        for (name, x), y in zip(reference.model.state_dict().items(), nhwc.model.state_dict().values(), strict=True):
            if x.is_floating_point():
                torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-4, msg=name)
    finally:
        reference.close()
        nhwc.close()


def test_resnet50_takes_one_fp32_step_at_a_small_input():
    # 32 px through the ImageNet stem reaches layer4 at 1x1; BN groups of 2 keep a batch of 2 trainable.
    t = trainer("model.name=resnet50", "model.width=16", "model.input_size=32", "batch_size=2", "bn.group_size=2",
                "runtime.micro_batch=0", "steps=1")
    try:
        before = t.model.fc.weight.detach().clone()
        (loss,) = train(t, 1)
        assert math.isfinite(loss) and not torch.equal(before, t.model.fc.weight)
        assert sum(p.numel() for p in t.model.parameters()) > 23_000_000  # ResNet-50 at 10 classes, 2 BNs
    finally:
        t.close()


def test_torch_compile_traces_the_vanilla_step(monkeypatch):
    # aot_eager runs Dynamo's tracing and AOTAutograd's functionalisation of the split BN's buffer writes
    # (what breaks first under compile) without inductor's C++ build, which takes about 2 minutes on a
    # 2-core CPU with a cold cache. `make gpu-check` compiles with inductor on the GPU.
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", functools.partial(compile_, backend="aot_eager"))
    torch._dynamo.reset()
    eager = trainer("method=vanilla")
    compiled = trainer("method=vanilla", "runtime.compile=true")
    try:
        assert compiled.train_model is not compiled.model
        assert train(compiled) == pytest.approx(train(eager), rel=1e-5)
        for x, y in zip(eager.model.state_dict().values(), compiled.model.state_dict().values(), strict=True):
            if x.is_floating_point():
                torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    finally:
        eager.close()
        compiled.close()
        torch._dynamo.reset()


def test_deterministic_mode_is_set_by_the_config_and_scoped_by_its_context(monkeypatch):
    monkeypatch.delenv(CUBLAS_ENV, raising=False)
    before = current_state()
    try:
        t = trainer("method=vanilla", "runtime.deterministic=true")
        t.close()
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ[CUBLAS_ENV] == ":4096:8"
    finally:
        restore_state(before)
    assert current_state() == before
    with deterministic_mode():
        assert torch.are_deterministic_algorithms_enabled()
    assert current_state() == before
    # Another cuBLAS setting that is deterministic is kept; one that is not is a one-line error.
    monkeypatch.setenv(CUBLAS_ENV, ":16:8")
    with deterministic_mode():
        assert os.environ[CUBLAS_ENV] == ":16:8"
    monkeypatch.setenv(CUBLAS_ENV, ":0:0")
    with pytest.raises(UserError, match=r"CUBLAS_WORKSPACE_CONFIG=':0:0' is set.*allowed: :4096:8 or :16:8"):
        trainer("method=vanilla", "runtime.deterministic=true")
    assert current_state().algorithms == before.algorithms
    # It picks kernels, not the result's distribution: not part of the run id.
    cfg = config_from_overrides(BASE)
    assert cfg.replace({"runtime.deterministic": "true"}).run_id() == cfg.run_id()


def test_cudnn_autotunes_runs_on_cuda_unless_they_are_deterministic(monkeypatch):
    monkeypatch.delenv(CUBLAS_ENV, raising=False)
    before = current_state()
    try:
        torch.backends.cudnn.benchmark = False
        configure_kernels(False, torch.device("cpu"))
        assert not torch.backends.cudnn.benchmark  # the CPU has no cuDNN to tune
        configure_kernels(False, torch.device("cuda"))
        assert torch.backends.cudnn.benchmark
        configure_kernels(True, torch.device("cuda"))  # a later deterministic run in the same process
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    finally:
        restore_state(before)
    assert current_state() == before


def test_the_synthetic_stream_feeds_the_engine_and_conadv_attacks_ahead():
    cfg = config_from_overrides(["method=conadv", "data=imagenet", "model.name=resnet8", "model.width=4",
                                 "model.input_size=8", "batch_size=16", "bn.group_size=8", "runtime.micro_batch=8",
                                 "runtime.device=cpu", "runtime.threads=1", "steps=1000", "conadv.executor=thread"])
    t = SyntheticTrainer(cfg)
    try:
        assert t.bundle.num_classes == 1000 and t.pool[0][0].shape == (8, 3, 8, 8)
        t.open_batches(0)
        keys = [(m.key.step, m.key.micro) for m in (t.batches.peek(k) for k in range(4))]
        assert keys == [(0, 0), (0, 1), (1, 0), (1, 1)]
        indices = torch.cat([t.batches.peek(k).indices for k in range(4)])
        assert indices.unique().numel() == 32  # distinct examples: the attack's keyed noise differs
        for step in range(2):
            assert math.isfinite(t.train_step(step, t.step_batches(step))["loss"])
        assert t.method.pending  # the attack of the next micro-batch was started beside the update
        assert [s for s, _, _ in t.method.trace][:4] == [0, 0, 1, 1]
    finally:
        t.close()
