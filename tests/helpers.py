"""Helpers shared by tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python ARGS` in a subprocess with `env` (see the cli_env fixture)."""
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def call_main(main: Callable[[list[str]], int | None], args: list[str],
              capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run a command line's `main(args)` in this process: (exit status, stdout, stderr).

    For tests that check only a status and a line, this saves the subprocess's torch import (seconds
    each); the `__main__` path itself is covered by a few tests that run the real command."""
    try:
        status = main(args)
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    captured = capsys.readouterr()
    return int(status or 0), captured.out, captured.err
