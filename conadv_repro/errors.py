"""The one error type for a user's mistake, and the one for work that stopped on what it read.

Everything a user can get wrong (a bad key, value, path or state) raises `UserError`; the command-line
entry points turn it into one line on stderr and exit status 2, without a traceback, and nothing is
written. A `OneLineFailure` (an unreadable image met mid-run, a run whose checkpoints all fail to
verify) is a run that started and failed: one line too, but exit status 1, what was written stays.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn


class UserError(Exception):
    """A mistake in what the user asked for. Its message is one line naming the value and what is allowed."""


class OneLineFailure(Exception):
    """Work that started and stopped on something it read, e.g. an image file that does not decode.

    Not a `UserError`: the command line was fine, and the run directory already holds the failure (its
    record says failed, its checkpoints stay), so the exit status is 1, as for any failed run. The
    message is one line naming the file and why.
    """


def fail(message: str) -> NoReturn:
    """Print `message` as one line on stderr and exit with status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def cli_entry(main: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command-line main so that a `UserError` becomes one line and exit status 2, and a
    `OneLineFailure` one line and exit status 1."""

    @wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except UserError as error:
            fail(str(error))
        except OneLineFailure as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None

    return wrapper


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit status 2, like every other user error."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)")


def count_at_least(minimum: int, why: str = "") -> Callable[[str], int]:
    """An argparse type: an integer of at least `minimum` (`why` says why, after the bound), or the one-line
    usage error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is not allowed; it must be at least {minimum}{why}")
        return value
    return parse


at_least_one = count_at_least(1)  # a count (rounds, steps, GPUs)


def calibration_name(text: str) -> str:
    """An argparse type: the NAME of a `--save NAME` calibration file, or the one-line usage error."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text) or text.endswith(".json"):
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; allowed: a name of letters, digits, '.', "
                                         "'_' and '-', without .json (e.g. amd-epyc-2-cores)")
    return text


def existing_folder(folder: Path, option: str, allowed: str) -> Path:
    """`folder` made absolute, or the one-line error naming `option` when it is not a folder here."""
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise UserError(f"{option} {folder} {what}; allowed: {allowed}")
    return folder.absolute()


def check_writable_folder(folder: Path, option: str) -> None:
    """Fail before a measurement, which takes minutes, rather than when its result cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UserError(f"{option}: cannot write in {folder} ({error.strerror or error})") from None
