"""Rank 0's watch over the other ranks' heartbeats, so that a stalled or lost rank is named in the record.

Every rank writes its time into the rendezvous store each second (distributed/context.py). A rank that
stops beating is stopped (SIGSTOP, a hung host), dead, or cut off. Its peers' collectives then time out
after `runtime.dist_step_timeout_s`; on gloo that is an exception, which the engine records as a failure
naming the rank, but on NCCL the watchdog tears the process down (TORCH_NCCL_ASYNC_ERROR_HANDLING's
default) before Python sees anything, and the record would still say running. So rank 0 watches from a
thread of its own, which keeps running while its main thread waits in a collective or on the device: when
a rank has been silent for the step timeout, it reports it once (the engine writes the record as failed)
and the run ends as it would have anyway. A rank that is merely slow keeps beating: its thread runs
beside whatever its main thread does, so a long evaluation or checkpoint never looks like a stall.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

HEARTBEAT_KEY = "conadv/heartbeat/{}"
LEFT_KEY = "conadv/left/{}"  # set by a rank as it leaves (distributed/context.py: close): silent, not lost
POLL_S = 1.0


def silent_ranks(store: Any, ranks: list[int], now: float, after_s: float) -> list[int]:
    """The ranks whose last heartbeat in `store` is older than `after_s` at `now`, leaving out those that
    said they left (after their own error, or at the end of their work)."""
    silent = []
    for rank in ranks:
        last = float(store.get(HEARTBEAT_KEY.format(rank)))
        if now - last > after_s and not store.check([LEFT_KEY.format(rank)]):
            silent.append(rank)
    return silent


class StallWatch:
    """A daemon thread calling `on_stall(ranks, seconds)` once when some of `ranks` have been silent for
    `after_s` seconds. Best effort: a store that cannot be read ends the watch (the collectives' own
    timeouts still end the run)."""

    def __init__(self, store: Any, ranks: list[int], after_s: float, on_stall: Callable[[list[int], float], None],
                 *, clock: Callable[[], float] = time.time, poll_s: float = POLL_S):
        self._store, self._ranks, self._after_s = store, ranks, after_s
        self._on_stall, self._clock, self._poll_s = on_stall, clock, poll_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="conadv-stall-watch", daemon=True)
        self.fired = False

    def start(self) -> StallWatch:
        self._thread.start()
        return self

    def _watch(self) -> None:
        try:
            self._store.set_timeout(timedelta(seconds=max(5.0, self._poll_s)))
        except Exception:  # noqa: BLE001 - a store without set_timeout keeps its own
            pass
        while not self._stopped.wait(self._poll_s):
            try:
                silent = silent_ranks(self._store, self._ranks, self._clock(), self._after_s)
            except Exception:  # noqa: BLE001 - the store is gone: the collectives report it
                return
            if silent and not self._stopped.is_set():
                self.fired = True
                self._on_stall(silent, self._after_s)
                return

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * self._poll_s + 5.0)
