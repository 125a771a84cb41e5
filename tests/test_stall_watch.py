"""Rank 0's stall watch (distributed/stall_watch.py) on an in-memory store: it names the ranks whose heartbeat
is older than the step timeout, once, and never a rank that keeps beating."""

from __future__ import annotations

import threading

import torch.distributed as dist

from conadv_repro.distributed.stall_watch import HEARTBEAT_KEY, StallWatch, silent_ranks


def test_silent_ranks_are_those_past_the_timeout():
    store = dist.HashStore()
    for rank, last in ((1, 100.0), (2, 95.0), (3, 89.0)):
        store.set(HEARTBEAT_KEY.format(rank), repr(last))
    assert silent_ranks(store, [1, 2, 3], now=100.0, after_s=10.0) == [3]
    assert silent_ranks(store, [1, 2, 3], now=100.0, after_s=4.0) == [2, 3]


def test_the_watch_reports_a_stalled_rank_once_and_stops():
    store = dist.HashStore()
    now = [1000.0]
    store.set(HEARTBEAT_KEY.format(1), repr(now[0]))
    store.set(HEARTBEAT_KEY.format(2), repr(now[0]))
    calls: list[tuple[list[int], float]] = []
    fired = threading.Event()

    def on_stall(ranks: list[int], seconds: float) -> None:
        calls.append((ranks, seconds))
        fired.set()

    watch = StallWatch(store, [1, 2], 30.0, on_stall, clock=lambda: now[0], poll_s=0.01).start()
    # Rank 1 keeps beating, rank 2 stops: nothing until rank 2 is 30 s behind.
    for _ in range(5):
        now[0] += 10.0
        store.set(HEARTBEAT_KEY.format(1), repr(now[0]))
        if now[0] - 1000.0 <= 30.0:
            assert not fired.wait(0.1), calls
    assert fired.wait(5.0)
    watch.stop()
    assert calls == [([2], 30.0)] and watch.fired
