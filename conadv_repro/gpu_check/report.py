"""The check's output: one line per result as it happens (flushed), and the tally at the end.

Line forms, so that a log reads at a glance and greps well:

    == 1 correctness: deterministic mode ==          a section
      PASS  what was checked: the evidence  (1.2 s)
      FAIL  what was checked: why  (0.4 s)          (and the innermost frames of an exception)
      SKIP  what: why not
      goal  met | MISSED | not judged: a speed goal and its figure
      ....  a measurement or a note
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO


class CheckFailed(Exception):
    """A check's claim does not hold; the message says what was seen."""


@dataclass
class Report:
    out: TextIO = field(default_factory=lambda: sys.stdout)
    passed: int = 0
    failed: list[str] = field(default_factory=list)
    skipped: int = 0
    goals_met: int = 0
    goals_missed: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def line(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def section(self, title: str) -> None:
        self.line(f"== {title} ==")

    def note(self, text: str) -> None:
        self.line(f"  ....  {text}")

    def skip(self, what: str, why: str) -> None:
        self.skipped += 1
        self.line(f"  SKIP  {what}: {why}")

    def goal(self, met: bool | None, text: str) -> None:
        """`met` None: the goal does not apply here (a CPU smoke, another GPU)."""
        if met is None:
            self.line(f"  goal  not judged: {text}")
            return
        if met:
            self.goals_met += 1
        else:
            self.goals_missed.append(text)
        self.line(f"  goal  {'met' if met else 'MISSED'}: {text}")

    def check(self, what: str, body: Callable[[], str]) -> bool:
        """Run `body`; it returns the evidence (PASS) or raises (FAIL). Any exception is a FAIL, so one
        broken path does not hide the checks after it."""
        t0 = time.perf_counter()
        try:
            evidence = body()
        except CheckFailed as failure:
            self._fail(what, str(failure), time.perf_counter() - t0)
            return False
        except Exception as error:  # a GPU path that crashes is exactly what the check is for
            self._fail(what, f"{type(error).__name__}: {_first_line(error)}", time.perf_counter() - t0)
            for frame in traceback.extract_tb(error.__traceback__)[-3:]:
                self.line(f"          at {frame.filename}:{frame.lineno} in {frame.name}")
            return False
        self.passed += 1
        self.line(f"  PASS  {what}: {evidence}  ({time.perf_counter() - t0:.1f} s)")
        return True

    def _fail(self, what: str, why: str, seconds: float) -> None:
        self.failed.append(what)
        self.line(f"  FAIL  {what}: {why}  ({seconds:.1f} s)")

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def summary(self, budget_s: float | None) -> None:
        took = self.elapsed()
        budget = f" (budget {budget_s / 60:.0f} min{', OVER' if took > budget_s else ''})" if budget_s else ""
        goals = f"; goals {self.goals_met} met, {len(self.goals_missed)} missed" \
            if self.goals_met or self.goals_missed else ""
        self.line(f"gpu-check: {self.passed} PASS, {len(self.failed)} FAIL, {self.skipped} SKIP{goals}; "
                  f"{took:.0f} s{budget}")
        for what in self.failed:
            self.line(f"  failed: {what}")
        for what in self.goals_missed:
            self.line(f"  missed: {what}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:400] if text else "(no message)"


def seconds(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0
