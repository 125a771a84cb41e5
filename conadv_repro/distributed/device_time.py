"""Seconds of work that runs asynchronously on a GPU, measured where it happens.

Around an NCCL wait or a stretch of kernels, a host clock reads about 0 on a GPU: `Work.wait()` and kernel
launches return before the device has done anything. On CUDA each span is bracketed by two events on the
current stream and the spans' device time is summed when it is read (which waits for the last span to
end); on the CPU, where waits and kernels block the host, it is the host clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


class DeviceTime:
    def __init__(self, device: torch.device, clock: Callable[[], float] = time.perf_counter):
        self.cuda = device.type == "cuda"
        self._clock = clock
        self._host_s = 0.0
        self._spans: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    @contextmanager
    def span(self) -> Iterator[None]:
        if not self.cuda:
            t0 = self._clock()
            try:
                yield
            finally:
                self._host_s += self._clock() - t0
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        try:
            yield
        finally:
            end.record()
            self._spans.append((start, end))

    @property
    def seconds(self) -> float:
        """The spans' total (on CUDA this waits for the last span to end: read it outside the hot path)."""
        if self._spans:
            self._spans[-1][1].synchronize()
            self._host_s += sum(start.elapsed_time(end) for start, end in self._spans) / 1000.0
            self._spans = []
        return self._host_s
