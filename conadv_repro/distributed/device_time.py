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

FOLD_EVERY = 64  # spans kept before the ended ones are added up


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
            if len(self._spans) >= FOLD_EVERY:
                self._fold(wait=False)

    @property
    def seconds(self) -> float:
        """The spans' total (on CUDA this waits for the last span to end: read it outside the hot path)."""
        self._fold(wait=True)
        return self._host_s

    def _fold(self, *, wait: bool) -> None:
        """Add up the spans that have ended (all of them, waiting, with `wait`), so that a long run keeps
        only a few events."""
        if wait and self._spans:
            self._spans[-1][1].synchronize()
        ended = 0
        while ended < len(self._spans) and (wait or self._spans[ended][1].query()):
            ended += 1  # events of one stream end in order: the ended spans are a prefix
        self._host_s += sum(start.elapsed_time(end) for start, end in self._spans[:ended]) / 1000.0
        del self._spans[:ended]
