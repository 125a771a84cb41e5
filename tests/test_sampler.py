"""The batch plan, the micro-batch sampler and the look-ahead: seeded, resumable, rank-independent."""

from __future__ import annotations

import pickle

import pytest
import torch

from conadv_repro.data.keys import STREAM_ATTACK, STREAM_AUGMENT, STREAM_SHUFFLE, example_seed
from conadv_repro.data.sampler import BatchPlan, Lookahead, MicroBatchKey, MicroBatchSampler
from conadv_repro.errors import UserError


def test_example_seed_is_fixed_and_separates_streams() -> None:
    # Pinned: a change here silently changes every run's shuffle, augmentation and attack noise.
    assert example_seed(0, 1, 2, STREAM_AUGMENT) == 4576450826804251301
    seeds = {example_seed(7, 0, 5, stream) for stream in (STREAM_SHUFFLE, STREAM_AUGMENT, STREAM_ATTACK)}
    assert len(seeds) == 3
    assert example_seed(3) != example_seed(3, 0)
    assert example_seed(-1, 2) == example_seed(-1, 2)
    assert all(0 <= example_seed(s, e) < 2**63 for s in range(-3, 3) for e in range(3))
    with pytest.raises(TypeError):
        example_seed(1.5)  # type: ignore[arg-type]


def test_each_epoch_is_a_permutation_and_drops_the_remainder() -> None:
    plan = BatchPlan(num_examples=10, batch_size=3, seed=0)
    assert plan.steps_per_epoch == 3
    for epoch in range(3):
        steps = range(epoch * 3, epoch * 3 + 3)
        taken = torch.cat([plan.indices(step) for step in steps])
        assert len(set(taken.tolist())) == 9 and all(0 <= i < 10 for i in taken.tolist())
        assert torch.equal(taken, plan.epoch_permutation(epoch)[:9])
        assert all(plan.epoch_of(step) == epoch for step in steps)
    assert plan.indices(0).dtype == torch.int64


def test_epochs_and_seeds_give_different_plans() -> None:
    plan = BatchPlan(num_examples=100, batch_size=10, seed=1)
    assert not torch.equal(plan.epoch_permutation(0), plan.epoch_permutation(1))
    assert torch.equal(plan.epoch_permutation(4), BatchPlan(100, 10, seed=1).epoch_permutation(4))
    assert not torch.equal(plan.epoch_permutation(0), BatchPlan(100, 10, seed=2).epoch_permutation(0))
    # The plan is infinite: a step far past any epoch budget still has a full batch.
    assert plan.indices(10**6).shape == (10,)
    # The cached permutation is not handed out for modification.
    plan.epoch_permutation(0).zero_()
    assert torch.equal(plan.epoch_permutation(0), BatchPlan(100, 10, seed=1).epoch_permutation(0))


def test_plan_pickles_and_compares_by_numbers() -> None:
    plan = BatchPlan(num_examples=50, batch_size=5, seed=3, dataset="digits")
    plan.indices(12)
    copy = pickle.loads(pickle.dumps(plan))
    assert copy == plan and torch.equal(copy.indices(12), plan.indices(12))


def test_indices_are_the_concatenation_of_micro_batches_over_ranks() -> None:
    plan = BatchPlan(num_examples=97, batch_size=24, seed=5)
    for step in (0, 3, 4, 9):
        parts = [
            plan.micro_indices(step, micro, 3, rank=rank, world_size=2)
            for rank in range(2)
            for micro in range(4)
        ]
        assert torch.equal(torch.cat(parts), plan.indices(step))
        assert torch.equal(torch.cat([plan.micro_indices(step, m, 6) for m in range(4)]), plan.indices(step))


def _items(sampler: MicroBatchSampler) -> list[list[tuple[int, int, int, int]]]:
    return list(sampler)


def test_sampler_items_and_length() -> None:
    plan = BatchPlan(num_examples=20, batch_size=8, seed=0)
    sampler = MicroBatchSampler(plan, 0, 5, micro_size=4)
    batches = _items(sampler)
    assert len(batches) == len(sampler) == 10
    for n, batch in enumerate(batches):
        step, micro = divmod(n, 2)
        assert all(item[1:] == (plan.epoch_of(step), step, micro) for item in batch)
        assert [item[0] for item in batch] == plan.micro_indices(step, micro, 4).tolist()
    assert list(sampler.keys())[3] == MicroBatchKey(step=1, micro=1, epoch=0)
    assert [batch[0][1] for batch in batches] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]


def test_sampler_resumes_mid_epoch_exactly() -> None:
    plan = BatchPlan(num_examples=50, batch_size=8, seed=11)  # 6 steps per epoch
    full = _items(MicroBatchSampler(plan, 0, 20, micro_size=2))
    for start in (1, 4, 6, 13):
        assert _items(MicroBatchSampler(plan, start, 20, micro_size=2)) == full[start * 4 :]


def test_rank_shards_partition_each_batch() -> None:
    plan = BatchPlan(num_examples=64, batch_size=16, seed=2)
    shards = [_items(MicroBatchSampler(plan, 0, 8, micro_size=2, rank=r, world_size=4)) for r in range(4)]
    for step in range(8):
        union = [item[0] for r in range(4) for batch in shards[r][step * 2 : step * 2 + 2] for item in batch]
        assert union == plan.indices(step).tolist()


def test_lookahead_peeks_across_epoch_boundaries() -> None:
    plan = BatchPlan(num_examples=10, batch_size=4, seed=0)  # 2 steps per epoch
    ahead = Lookahead(MicroBatchSampler(plan, 1, 5, micro_size=2))
    first = ahead.peek(0)
    crossing = ahead.peek(2)  # step 2 is the first step of epoch 1
    assert crossing is not None and crossing[0][1:] == (1, 2, 0)
    assert next(ahead) == first
    assert next(ahead) is not None
    assert next(ahead) == crossing
    rest = list(ahead)
    assert len(rest) == 5 and ahead.peek() is None and ahead.peek(3) is None


def test_bad_shapes_are_user_errors() -> None:
    with pytest.raises(UserError, match="batch_size 4096 .* 1257 .*digits"):
        BatchPlan(num_examples=1257, batch_size=4096, seed=0, dataset="digits")
    plan = BatchPlan(num_examples=100, batch_size=12, seed=0)
    with pytest.raises(UserError, match="micro_size 5 .* 12"):
        MicroBatchSampler(plan, 0, 1, micro_size=5)
    with pytest.raises(UserError, match="world_size 5"):
        MicroBatchSampler(plan, 0, 1, micro_size=1, world_size=5)
    with pytest.raises(UserError, match="micro_size 4 .* 6"):
        plan.micro_indices(0, 0, 4, world_size=2)
    with pytest.raises(UserError, match="rank 2"):
        MicroBatchSampler(plan, 0, 1, micro_size=3, rank=2, world_size=2)
    with pytest.raises(UserError, match="end_step 2"):
        MicroBatchSampler(plan, 3, 2, micro_size=3)
    with pytest.raises(UserError, match="step -1"):
        plan.indices(-1)
    with pytest.raises(UserError, match="batch_size 0"):
        BatchPlan(num_examples=10, batch_size=0, seed=0)
