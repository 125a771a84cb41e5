"""The random generators' state as plain data, so that a checkpoint loads with `weights_only=True`.

A weights-only `torch.load` accepts tensors, numbers, strings, lists, tuples and dicts, and refuses
anything else. numpy's `np.random.get_state()` is a tuple holding an ndarray, so it is stored here as
its components (the MT19937 key as an int64 tensor); python's `random.getstate()` is stored as lists.
Restoring gives exactly the streams that were captured. Checkpoints of earlier releases stored numpy's
tuple as is (engine/checkpoint.py reads those through an allow-list); `restore_rng` accepts both forms.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch


def capture_rng() -> dict[str, Any]:
    """torch's, CUDA's (when present), numpy's global and python's generator states."""
    name, key, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        # int64: the uint32 key fits exactly, and every torch version handles int64 tensors.
        "numpy": {"name": str(name), "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": [version, list(internal), gauss_next],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng(state: Mapping[str, Any]) -> None:
    """Set every generator `capture_rng` (or an earlier release's checkpoint) recorded."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_state(state["numpy"]))
    random.setstate(_python_state(state["python"]))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state(state: Any) -> tuple[Any, ...]:
    if isinstance(state, Mapping):
        key = state["key"]
        key = key.cpu().numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
        return (state["name"], key.astype(np.uint32), int(state["pos"]), int(state["has_gauss"]),
                float(state["cached_gaussian"]))
    return tuple(state)  # an earlier release's `np.random.get_state()` tuple


def _python_state(state: Sequence[Any]) -> tuple[Any, ...]:
    version, internal, gauss_next = state
    return (version, tuple(int(word) for word in internal), gauss_next)
