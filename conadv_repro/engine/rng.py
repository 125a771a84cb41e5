"""The random generators' state as plain data, so that a checkpoint loads with `weights_only=True`.

A weights-only `torch.load` accepts tensors, numbers, strings, lists, tuples and dicts, and refuses
anything else. numpy's `np.random.get_state()` is a tuple holding an ndarray, so it is stored here as
its components (the MT19937 key as an int64 tensor); python's `random.getstate()` is stored as lists.
Restoring gives exactly the streams that were captured. Checkpoints of earlier releases stored numpy's
tuple as is (engine/checkpoint.py reads those through an allow-list); `restore_rng` accepts both forms.

CUDA: only the generator of the run's own GPU is saved (the `device` given, else the current device),
as one state tensor, and restoring sets it into the restoring process's own GPU. Only rank 0 writes
checkpoints, and every trainer of a run restores from rank 0's (engine/ranks.py), so each trainer's GPU
gets rank 0's GPU's state, as each gets rank 0's CPU, numpy and python states. That is what the trainers
would have had without the interruption: `torch.manual_seed(cfg.seed)` seeds every GPU alike on every
rank, and the trainers run the same random calls on their GPUs, so their generators stay equal. A GPU's
index is not a property of the run (a resume may see fewer GPUs, or each task only its own as device 0),
so no index is saved. Checkpoints of earlier releases hold a list with one state per GPU that rank 0
saw: a resume takes the entry of its own GPU's index, and leaves the generator as seeded where the list
has none.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch


def capture_rng(device: torch.device | None = None) -> dict[str, Any]:
    """torch's, CUDA's (of `device`'s GPU, by default the current one; when present), numpy's global and
    python's generator states."""
    gpu = _gpu_index(device)
    name, key, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        # int64: the uint32 key fits exactly, and every torch version handles int64 tensors.
        "numpy": {"name": str(name), "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": [version, list(internal), gauss_next],
        "cuda": None if gpu is None else torch.cuda.get_rng_state(gpu),
    }


def restore_rng(state: Mapping[str, Any], device: torch.device | None = None) -> None:
    """Set every generator `capture_rng` (or an earlier release's checkpoint) recorded; CUDA's into
    `device`'s GPU (by default the current one), see the module's docstring."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_state(state["numpy"]))
    random.setstate(_python_state(state["python"]))
    cuda, gpu = state.get("cuda"), _gpu_index(device)
    if cuda is None or gpu is None:
        return
    if isinstance(cuda, torch.Tensor):
        torch.cuda.set_rng_state(cuda, gpu)
    elif gpu < len(cuda):  # an earlier release's list, one state per GPU that rank 0 saw
        torch.cuda.set_rng_state(cuda[gpu], gpu)


def _gpu_index(device: torch.device | None) -> int | None:
    """The GPU whose generator is the run's: `device`'s (the current one for an unindexed "cuda"), none
    for a CPU run or without CUDA."""
    if not torch.cuda.is_available() or (device is not None and device.type != "cuda"):
        return None
    if device is None or device.index is None:
        return torch.cuda.current_device()
    return device.index


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
