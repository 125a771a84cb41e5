"""Vanilla training (with or without AutoAugment, which is a data choice, not a method)."""

from __future__ import annotations

from conadv_repro.data.loader import MicroBatch
from conadv_repro.methods.base import Branch, Method


class Vanilla(Method):
    name = "vanilla"

    def branches(self, micro: MicroBatch) -> list[Branch]:
        return [Branch("clean", micro.inputs, micro.targets, bn="main", weight=1.0)]
