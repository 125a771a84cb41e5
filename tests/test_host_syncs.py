"""One host sync per training step, after the update is queued.

On a GPU every `.item()`, `.tolist()`, `bool(tensor)` or `float(tensor)` of a device tensor makes the host
wait for the device, which then idles while the host issues the next kernels. On the CPU,
`engine/host_syncs.py` counts the calls that would wait on a GPU, during whole steps of the engine (the
attack's, on ConAdv's worker thread, included)."""

from __future__ import annotations

import pytest
import torch

from conadv_repro.config import config_from_overrides
from conadv_repro.engine.host_syncs import count_host_syncs
from conadv_repro.engine.trainer import Trainer

BASE = ["data=digits", "model.name=resnet8", "model.width=4", "batch_size=32", "bn.group_size=8",
        "runtime.micro_batch=16", "runtime.device=cpu", "runtime.threads=1", "runtime.wandb=disabled", "steps=4",
        "optim.lr=1.0", "schedule.warmup_epochs=0.1"]


@pytest.mark.parametrize("method, extra", [("vanilla", []), ("disadv", []), ("noise", []),
                                           ("conadv", ["conadv.executor=thread"])])
def test_a_step_syncs_with_the_host_once_after_its_update_is_queued(monkeypatch, method, extra):
    t = Trainer(config_from_overrides([*BASE, f"method={method}", *extra]), log=lambda _m: None)
    try:
        t.open_batches(0)
        t.train_step(0, t.step_batches(0))  # the first step builds state (LARS buffers, ConAdv's snapshots)
        t.method.wait_idle()
        with count_host_syncs(t.device) as syncs:
            update = t.optimizer.step

            def queued_update() -> None:
                syncs.add("update")
                update()

            monkeypatch.setattr(t.optimizer, "step", queued_update)
            for step in (1, 2):
                t.train_step(step, t.step_batches(step))
            t.method.wait_idle()
        # The sync comes after the update is issued: the device works while the host waits.
        assert syncs.calls == ["update", "tolist", "update", "tolist"], syncs.calls
    finally:
        t.close()


def test_the_counter_sees_a_sync_and_leaves_torch_as_it_was():
    before = torch.Tensor.item
    with count_host_syncs(torch.device("cpu")) as syncs:
        torch.ones(2).sum().item()
        bool(torch.ones(()) > 0)
        torch.arange(3).tolist()  # int64: indices stay on the host
    assert syncs.calls == ["item", "__bool__"] and torch.Tensor.item is before


def test_device_time_sums_its_spans_on_the_host_clock_on_a_cpu():
    from conadv_repro.distributed.device_time import DeviceTime

    clock = iter([10.0, 10.5, 11.0, 12.25])  # two spans: 0.5 s and 1.25 s, with 0.5 s between them
    timer = DeviceTime(torch.device("cpu"), clock=lambda: next(clock))
    for _ in range(2):
        with timer.span():
            pass
    assert timer.seconds == 1.75
