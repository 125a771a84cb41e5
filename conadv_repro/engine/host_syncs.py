"""Counting the host's waits for the device in a stretch of code (benchmarks/engine_overhead.py, the tests).

On CUDA, torch's sync debug mode warns at every operation that synchronises the host with the device
(`.item()`, `.tolist()`, a tensor's truth value, a blocking copy); the warnings are counted. A CPU has no
device to wait for, so there the calls that would wait on a GPU are counted instead: `.item()`,
`.tolist()` and the conversions to bool, float and int of any tensor except int64 ones, which are the
example indices and keys that stay on the host (`MicroBatch.to`).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

WAITING_CALLS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


class SyncCount:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def add(self, what: str) -> None:
        with self._lock:
            self.calls.append(what)

    def __len__(self) -> int:
        return len(self.calls)


def _counting(count: SyncCount, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    def counted(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if tensor.dtype != torch.int64:
            count.add(name)
        return original(tensor, *args, **kwargs)
    return counted


@contextmanager
def count_host_syncs(device: torch.device) -> Iterator[SyncCount]:
    """The host syncs of the block, in every thread (ConAdv's attack thread included)."""
    count = SyncCount()
    if device.type == "cuda":
        before = torch.cuda.get_sync_debug_mode()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield count
            finally:
                torch.cuda.set_sync_debug_mode(before)
        for warning in seen:
            if "synchroniz" in str(warning.message):
                count.add(str(warning.message).splitlines()[0])
        return
    originals = {name: getattr(torch.Tensor, name) for name in WAITING_CALLS}
    for name, original in originals.items():
        setattr(torch.Tensor, name, _counting(count, name, original))
    try:
        yield count
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
