"""Helpers shared by tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python ARGS` in a subprocess with `env` (see the cli_env fixture)."""
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
