from __future__ import annotations

import pytest
import torch

from conadv_repro.model.split_bn import (
    SplitBatchNorm2d,
    bn_route,
    commit_bn_statistics,
    convert_to_split_bn,
    discard_bn_statistics,
    move_pending_statistics,
)


def make_bn(group: int = 4) -> SplitBatchNorm2d:
    torch.manual_seed(0)
    bn = SplitBatchNorm2d(3, group_size=group, momentum=0.1, eps=1e-5)
    with torch.no_grad():
        for branch in (bn.main, bn.aux):
            branch.weight.uniform_(0.5, 1.5)
            branch.bias.uniform_(-0.5, 0.5)
    return bn


def test_ghost_groups_normalise_independently():
    bn = make_bn(group=4)
    x = torch.randn(8, 3, 5, 5) * 3 + 1
    whole = bn(x)
    halves = torch.cat([bn(x[:4]), bn(x[4:])])
    torch.testing.assert_close(whole, halves)
    # Each group matches torch's own BatchNorm in training mode on that group alone.
    ref = torch.nn.functional.batch_norm(x[4:], None, None, bn.main.weight, bn.main.bias, True, 0.0, 1e-5)
    torch.testing.assert_close(whole[4:], ref, rtol=1e-5, atol=1e-5)


def test_running_statistics_move_once_per_commit_from_the_group_mean():
    bn = make_bn(group=4)
    x = torch.randn(8, 3, 5, 5) * 2 + 0.5
    bn(x[:4])
    bn(x[4:])
    torch.testing.assert_close(bn.main.running_mean, torch.zeros(3))  # nothing until the commit
    commit_bn_statistics(bn)
    groups = x.reshape(2, 4, 3, 25)
    mean = groups.mean(dim=(1, 3)).mean(0)
    var = groups.var(dim=(1, 3), unbiased=True).mean(0)
    torch.testing.assert_close(bn.main.running_mean, 0.1 * mean)
    torch.testing.assert_close(bn.main.running_var, 0.9 + 0.1 * var)
    assert int(bn.main.num_batches_tracked) == 1
    # The auxiliary branch saw nothing and did not move.
    torch.testing.assert_close(bn.aux.running_mean, torch.zeros(3))
    assert int(bn.aux.num_batches_tracked) == 0


def test_routing_to_aux_and_frozen_recording():
    bn = make_bn(group=4)
    x = torch.randn(4, 3, 2, 2)
    with bn_route(bn, "aux"):
        y_aux = bn(x)
    y_main = bn(x)
    assert not torch.allclose(y_aux, y_main)  # different affine parameters
    commit_bn_statistics(bn)
    assert int(bn.aux.num_batches_tracked) == 1 and int(bn.main.num_batches_tracked) == 1
    with bn_route(bn, "aux", record=False):
        bn(x)
    commit_bn_statistics(bn)
    assert int(bn.aux.num_batches_tracked) == 1
    assert bn.branch == "main" and bn.record  # the route is restored
    with pytest.raises(ValueError, match="unknown BN branch"):
        with bn_route(bn, "adv"):
            pass


def test_eval_uses_main_running_statistics():
    bn = make_bn(group=2)
    bn.eval()
    with torch.no_grad():
        bn.main.running_mean.fill_(1.0)
        bn.main.running_var.fill_(4.0)
    x = torch.randn(3, 3, 2, 2)  # any size in eval mode
    expected = (x - 1.0) / torch.sqrt(torch.tensor(4.0 + 1e-5)) * bn.main.weight.view(1, 3, 1, 1) \
        + bn.main.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(bn(x), expected)


def test_batch_must_be_whole_groups():
    bn = make_bn(group=4)
    with pytest.raises(ValueError, match="not a whole number of BN groups of 4"):
        bn(torch.randn(6, 3, 2, 2))


def test_conversion_replaces_every_batchnorm():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2),
                              torch.nn.Sequential(torch.nn.BatchNorm2d(2)))
    convert_to_split_bn(net, group_size=2, momentum=0.1, eps=1e-5)
    kinds = [type(m).__name__ for m in net.modules()]
    assert kinds.count("SplitBatchNorm2d") == 2
    assert not any(type(m) is torch.nn.BatchNorm2d and "main" not in name and "aux" not in name
                   for name, m in net.named_modules())


def test_a_group_with_one_value_per_channel_is_refused():
    bn = make_bn(group=1)
    with pytest.raises(ValueError, match=r"a BN group of 1 examples of \(1, 1\) positions has one value per channel"):
        bn(torch.randn(4, 3, 1, 1))


def test_recording_committing_and_moving_statistics_never_sync_with_the_host(monkeypatch):
    live, snapshot = make_bn(group=4), make_bn(group=4)
    x = torch.randn(8, 3, 5, 5)

    def forbidden(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("host sync")

    for name in ("item", "__bool__", "__float__", "__int__", "__index__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    live(x)
    with bn_route(snapshot, "aux"):
        snapshot(x)
    move_pending_statistics(snapshot, live)
    commit_bn_statistics(live)
    live(x)
    discard_bn_statistics(live)
    commit_bn_statistics(live)
    monkeypatch.undo()
    # The snapshot's aux groups moved to the live network and were committed with its main groups, once.
    assert int(live.main.num_batches_tracked) == int(live.aux.num_batches_tracked) == 1
    torch.testing.assert_close(live.aux.running_mean, live.main.running_mean)
    assert not snapshot.pending("aux").any() and not live.pending("main").any()
