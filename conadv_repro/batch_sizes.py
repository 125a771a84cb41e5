"""Batch sizes as the paper writes them: `32k` is 32 x 1024 (the official code's 96k is 98,304).

Its own module, below both `config` and `presets`, so that neither has to import the other to read one.
"""

from __future__ import annotations

import re

KIBI = 1024


def parse_batch(text: str) -> int:
    """`32k` -> 32768; plain digits as is. Anything else (or a fraction of an example) is a ValueError."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kK]?)\s*", text)
    if not match:
        raise ValueError(text)
    number = float(match.group(1)) * (KIBI if match.group(2) else 1)
    if number != int(number):
        raise ValueError(text)
    return int(number)


def format_batch(value: int) -> str:
    """32768 -> `32k`; a size that is not a whole number of k stays plain."""
    return f"{value // KIBI}k" if value % KIBI == 0 and value >= KIBI else str(value)
