"""Training methods as strategy objects over the one engine (see methods/base.py)."""

from __future__ import annotations

from conadv_repro.errors import UserError
from conadv_repro.methods.base import Branch, Method, MethodContext
from conadv_repro.methods.conadv import ConAdv
from conadv_repro.methods.conadv_workers import ConAdvWithWorkers
from conadv_repro.methods.disadv import DisAdv
from conadv_repro.methods.noise import NoiseControl
from conadv_repro.methods.vanilla import Vanilla

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (Vanilla, DisAdv, ConAdv, NoiseControl)}


def build_method(ctx: MethodContext) -> Method:
    try:
        cls = METHODS[ctx.cfg.method]
    except KeyError:
        raise UserError(f"method={ctx.cfg.method!r} is not allowed; allowed: {', '.join(METHODS)}") from None
    if cls is ConAdv and ctx.dist.attack_workers:
        # The same method with its attack moved to dedicated ranks (a run that has them).
        return ConAdvWithWorkers(ctx)
    return cls(ctx)


__all__ = ["Branch", "Method", "MethodContext", "METHODS", "build_method"]
