"""The option table printed by `--help`, generated from the config's field metadata."""

from __future__ import annotations

import textwrap

from conadv_repro.config import METHOD_KEYS, describe_fields


def options_table(width: int = 100) -> str:
    lines = ["config keys (key=value; defaults shown; 32k means 32 x 1024).",
             "scale=smoke|proxy|cifar10|paper applies that scale's defaults first (see conadv_repro/presets.py);",
             "attack.* apply to method=disadv and conadv, conadv.* to method=conadv only; method=noise (no",
             f"attack step) takes only {', '.join(METHOD_KEYS['noise'])}:", ""]
    for key, default, help_text in describe_fields():
        head = f"  {key}={default}"
        body = textwrap.wrap(help_text, width=width - 8) or [""]
        lines.append(head)
        lines.extend("        " + line for line in body)
    return "\n".join(lines)
