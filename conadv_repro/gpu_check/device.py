"""The device the check runs on: its description, synchronisation, and memory between checks."""

from __future__ import annotations

import gc
import os
import platform

import torch

from conadv_repro.machine import cpu_name


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release() -> None:
    """Give the memory of the trainers just dropped back, so each check starts from the same state."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def gpu_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""


def describe(device: str) -> str:
    """One line: the device, the software that drives it, the host's cores."""
    cores = f"{os.cpu_count()} CPU cores ({cpu_name()})"
    software = f"torch {torch.__version__}, Python {platform.python_version()}"
    if device != "cuda":
        return f"CPU smoke on {cores}; {software}"
    props = torch.cuda.get_device_properties(0)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return (f"{props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB, "
            f"{props.multi_processor_count} SMs) x {torch.cuda.device_count()}; {software}, CUDA "
            f"{torch.version.cuda}, cuDNN {cudnn}; {cores}")
