"""Exactness of DisAdv and ConAdv, on the CPU with a fixed thread count."""

from __future__ import annotations

import threading

import pytest
import torch

from conadv_repro.concurrency.executors import SequentialExecutor, ThreadExecutor
from conadv_repro.config import config_from_overrides
from conadv_repro.engine.trainer import Trainer
from conadv_repro.methods.base import Branch, Method
from conadv_repro.model.split_bn import split_bn_modules

BASE = ["batch_size=64", "bn.group_size=16", "runtime.micro_batch=32", "model.width=8", "runtime.threads=1",
        "runtime.device=cpu", "steps=6", "optim.lr=1.0", "schedule.warmup_epochs=0.1"]


def quiet(_msg: str) -> None:
    pass


def trainer(*overrides: str) -> Trainer:
    return Trainer(config_from_overrides([*BASE, *overrides]), log=quiet)


def train(t: Trainer, steps: int = 6) -> Trainer:
    t.open_batches(0)
    for step in range(steps):
        t.train_step(step, t.step_batches(step))
        t.step = step + 1
    return t


def assert_same_weights(a: Trainer, b: Trainer) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("bn_mode", ["train_frozen", "eval"])
def test_conadv_with_tau_0_is_disadv_bit_for_bit(bn_mode):
    dis = train(trainer("method=disadv", f"attack.bn_mode={bn_mode}"))
    con = train(trainer("method=conadv", "conadv.tau=0", f"attack.bn_mode={bn_mode}", "conadv.executor=thread"))
    try:
        assert_same_weights(dis, con)
        assert {source for step, _, source in con.method.trace if step == 5} == {5}
    finally:
        dis.close()
        con.close()


@pytest.mark.parametrize("tau", [1, 2])
def test_the_attack_of_step_t_uses_theta_t_minus_tau(tau):
    t = trainer("method=conadv", f"conadv.tau={tau}", "conadv.executor=sequential")
    thetas: dict[int, dict] = {0: {k: v.clone() for k, v in t.model.state_dict().items()}}
    used: dict[tuple[int, int], torch.Tensor] = {}
    method = t.method
    original_after, original_branches = method.after_update, method.branches

    def after_update(step):
        original_after(step)
        thetas[step + 1] = {k: v.clone() for k, v in t.model.state_dict().items()}

    def branches(micro):
        out = original_branches(micro)
        used[(micro.key.step, micro.key.micro)] = (micro, out[1].inputs.clone())
        return out

    method.after_update, method.branches = after_update, branches
    train(t)
    assert [source for step, _, source in method.trace] == [max(step - tau, 0) for step in range(6) for _ in (0, 1)]
    # Recompute step 4's adversarial micro-batches independently from theta_(4 - tau): identical.
    probe = trainer("method=disadv")
    probe.model.load_state_dict(thetas[4 - tau])
    for micro_index in (0, 1):
        micro, adv = used[(4, micro_index)]
        assert torch.equal(probe.method.adversarial(probe.model, micro), adv)
    # ...and not what the current weights theta_4 would give.
    probe.model.load_state_dict(thetas[4])
    micro, adv = used[(4, 0)]
    assert not torch.equal(probe.method.adversarial(probe.model, micro), adv)
    t.close()
    probe.close()


@pytest.mark.parametrize("tau", [0, 1])
def test_a_real_worker_thread_gives_the_sequential_weights_bit_for_bit(tau):
    seq = trainer("method=conadv", f"conadv.tau={tau}", "conadv.executor=sequential")
    thr = trainer("method=conadv", f"conadv.tau={tau}", "conadv.executor=thread")
    assert isinstance(seq.method.executor, SequentialExecutor)
    assert isinstance(thr.method.executor, ThreadExecutor)
    threads: set[str] = set()
    original = thr.method._attack

    def attack(micro):
        threads.add(threading.current_thread().name)
        return original(micro)

    thr.method._attack = attack
    train(seq)
    train(thr)
    try:
        assert_same_weights(seq, thr)
        assert any(name.startswith("conadv-attack") for name in threads), threads
    finally:
        seq.close()
        thr.close()


class TwiceClean(Method):
    name = "twice-clean"

    def branches(self, micro):
        return [Branch("clean", micro.inputs, micro.targets, "main", 1.0),
                Branch("adv", micro.inputs, micro.targets, "aux", 1.0)]


@pytest.mark.parametrize("method", ["disadv", "conadv"])
def test_epsilon_0_without_random_init_is_the_clean_batch_twice_through_two_bns(method):
    extra = ["conadv.executor=thread"] if method == "conadv" else []
    adv = train(trainer(f"method={method}", "attack.epsilon=0", "attack.random_init=false", *extra))
    ref = trainer("method=vanilla")
    ref.method = TwiceClean(ref.method.ctx)
    train(ref)
    try:
        assert_same_weights(adv, ref)
    finally:
        adv.close()


def test_train_moving_mode_moves_the_auxiliary_running_statistics():
    frozen = train(trainer("method=conadv", "attack.bn_mode=train_frozen", "conadv.executor=sequential"), 2)
    moving = train(trainer("method=conadv", "attack.bn_mode=train_moving"), 2)
    assert isinstance(moving.method.executor, SequentialExecutor)  # auto falls back to sequential
    bn_f, bn_m = next(split_bn_modules(frozen.model)), next(split_bn_modules(moving.model))
    assert int(bn_f.aux.num_batches_tracked) == int(bn_m.aux.num_batches_tracked) == 2
    assert not torch.equal(bn_f.aux.running_mean, bn_m.aux.running_mean)
    torch.testing.assert_close(bn_f.main.running_mean, bn_m.main.running_mean)  # main BN: clean only
    frozen.close()
    moving.close()


def test_autoaugment_the_attack_starts_from_the_augmented_image_and_three_way_bn():
    t = trainer("method=disadv", "autoaugment=true", "attack.epsilon=4")
    t.open_batches(0)
    micro = t.to_device(next(t.batches))
    clean, adv = t.method.branches(micro)
    assert torch.equal(clean.inputs, micro.inputs) and clean.bn == "main" and adv.bn == "aux"
    assert (adv.inputs - micro.inputs).abs().max() <= t.method.geometry.epsilon.max() + 1e-6
    t.close()
    three = train(trainer("method=conadv", "autoaugment=true", "bn.three_way=true", "conadv.executor=thread"), 2)
    bn = next(split_bn_modules(three.model))
    assert bn.branches == ("main", "aux", "aug")
    assert all(int(getattr(bn, b).num_batches_tracked) == 2 for b in bn.branches)
    three.close()


def test_conadv_checkpoint_holds_the_snapshots_and_resumes_them():
    t = train(trainer("method=conadv", "conadv.tau=2", "conadv.executor=sequential"), 3)
    state = t.state_dict()
    assert sorted(state["method"]["snapshots"]) == [1, 2, 3]
    fresh = trainer("method=conadv", "conadv.tau=2", "conadv.executor=sequential")
    fresh.load_state_dict(state)
    for s, snap in t.method.snapshots.items():
        for key, value in snap.state_dict().items():
            assert torch.equal(fresh.method.snapshots[s].state_dict()[key], value)
    t.close()
    fresh.close()


def test_the_noise_control_perturbs_by_a_random_corner_of_the_same_ball():
    t = trainer("method=noise", "attack.epsilon=4")
    t.open_batches(0)
    micro = t.to_device(next(t.batches))
    clean, noisy = t.method.branches(micro)
    assert clean.bn == "main" and noisy.bn == "aux" and torch.equal(clean.inputs, micro.inputs)
    g = t.method.geometry
    delta = noisy.inputs - micro.inputs
    inside = (noisy.inputs > g.low + 1e-6) & (noisy.inputs < g.high - 1e-6)
    torch.testing.assert_close(delta.abs()[inside], g.epsilon.expand_as(delta)[inside])
    # Keyed per example: a micro-batch split gives the same perturbation.
    half = type(micro)(micro.key, micro.inputs[:16], micro.targets[:16], micro.indices[:16])
    assert torch.equal(t.method.perturbed(half), noisy.inputs[:16])
    t.close()


def test_the_noise_control_at_epsilon_0_is_the_clean_batch_twice():
    noise = train(trainer("method=noise", "attack.epsilon=0"))
    ref = trainer("method=vanilla")
    ref.method = TwiceClean(ref.method.ctx)
    train(ref)
    assert_same_weights(noise, ref)


def test_a_run_saved_with_the_stream_executor_builds_on_a_cpu_for_evaluation():
    # The executor is made at the first attack: evaluating needs neither a thread nor a CUDA stream.
    t = trainer("method=conadv", "conadv.executor=stream")
    assert t.method._executor is None
    assert 0 <= t.evaluate("test")["top1"] <= 100
    t.close()
