"""A progress line every N steps: loss, training top-1, LR, images/s and the time left.

Plain lines rather than a redrawn bar, so Slurm log files and `tail -f` read well.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


@dataclass
class ProgressPrinter:
    name: str
    total_steps: int
    steps_per_epoch: int
    batch_size: int
    start_step: int
    log: Callable[[str], None]
    start_time: float
    _window_start: float = field(default=0.0)
    _window_first_step: int = 0

    def __post_init__(self) -> None:
        self._window_start = self.start_time
        self._window_first_step = self.start_step

    def images_per_second(self, now: float, steps: int) -> float:
        elapsed = max(now - self._window_start, 1e-9)
        return steps * self.batch_size / elapsed

    def step_line(self, steps_done: int, loss: float, top1: float, lr: float) -> float:
        """Print one line and start a new timing window; returns the images/s of the window."""
        now = time.time()
        img_s = self.images_per_second(now, steps_done - self._window_first_step)
        done_here = steps_done - self.start_step
        rate = done_here / max(now - self.start_time, 1e-9)
        eta = (self.total_steps - steps_done) / rate if rate > 0 else float("nan")
        epoch = steps_done / self.steps_per_epoch
        self.log(f"[{self.name}] step {steps_done}/{self.total_steps} (epoch {epoch:.2f}) "
                 f"loss {loss:.4f} top1 {top1:.2f}% lr {lr:.4g} {img_s:,.0f} img/s "
                 f"eta {format_duration(eta) if eta == eta else '?'}")
        self._window_start = now
        self._window_first_step = steps_done
        return img_s

    def restart_window(self, steps_done: int) -> None:
        """Leave evaluation and checkpoint time out of the next images/s figure."""
        self._window_start = time.time()
        self._window_first_step = steps_done
