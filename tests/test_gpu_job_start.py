"""What a first GPU job trips on, checked on the CPU with the GPUs faked: a rank's GPU when each Slurm task sees
only its own, the CUDA generator a checkpoint saves and restores per rank, and the uint8 batch's copy to the
device in its own layout."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import conadv_repro.distributed.context as context
import conadv_repro.distributed.replicas as replicas
from conadv_repro.config import config_from_overrides
from conadv_repro.data.loader import MicroBatch
from conadv_repro.data.sampler import MicroBatchKey
from conadv_repro.data.transforms import Normalise
from conadv_repro.distributed.context import DistContext, init_distributed, local_gpu
from conadv_repro.engine.checkpoint import load_latest_checkpoint, save_checkpoint
from conadv_repro.engine.rng import capture_rng, restore_rng
from conadv_repro.engine.trainer import resolve_device
from conadv_repro.errors import UserError


def fake_gpus(monkeypatch: pytest.MonkeyPatch, count: int, current: int = 0) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)


# ----------------------------------------------------------------------------------- a rank's GPU
@pytest.mark.parametrize("local_rank", [0, 1, 3, 7])
def test_a_rank_that_sees_one_gpu_takes_it_whatever_its_local_rank(monkeypatch, local_rank):
    fake_gpus(monkeypatch, 1)
    assert local_gpu(local_rank) == 0
    assert resolve_device("auto", local_rank) == torch.device("cuda")  # the current device, which is 0
    assert resolve_device("cuda", local_rank) == torch.device("cuda")


def test_a_rank_that_sees_every_gpu_of_its_node_takes_its_local_rank(monkeypatch):
    fake_gpus(monkeypatch, 4)
    assert [local_gpu(r) for r in range(4)] == [0, 1, 2, 3]
    assert resolve_device("auto", 3) == torch.device("cuda", 3)
    assert resolve_device("auto", 0) == torch.device("cuda")


@pytest.mark.parametrize("count, seen", [(4, "sees 4 GPUs (devices 0..3)"), (2, "sees 2 GPUs (devices 0..1)"),
                                         (0, "sees no GPU")])
def test_a_rank_past_the_gpus_it_sees_is_refused_in_one_line(monkeypatch, count, seen):
    fake_gpus(monkeypatch, count)
    with pytest.raises(UserError) as error:
        local_gpu(4)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"local rank 4 has no GPU of its own: this process {seen}")
    assert "runtime.device=cpu" in message


def test_resolve_device_refuses_a_rank_past_the_gpus_it_sees(monkeypatch):
    fake_gpus(monkeypatch, 2)
    with pytest.raises(UserError, match="local rank 2 has no GPU of its own"):
        resolve_device("auto", 2)
    assert resolve_device("cuda:1", 5) == torch.device("cuda", 1)  # a named GPU is the user's choice


class _Stop(Exception):
    """Raised in place of joining a process group: the test ends there."""


def _start_rank(monkeypatch: pytest.MonkeyPatch, local_rank: int) -> list[int]:
    """init_distributed as rank `local_rank` of 4 on one node with NCCL, up to joining the group: the GPU it
    set as its device."""
    for name, value in {"WORLD_SIZE": "4", "RANK": str(local_rank), "LOCAL_RANK": str(local_rank)}.items():
        monkeypatch.setenv(name, value)
    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)

    def joined(*_args: Any, **_kwargs: Any) -> None:
        raise _Stop

    monkeypatch.setattr(context.dist, "init_process_group", joined)
    cfg = config_from_overrides(["batch_size=64", "bn.group_size=16", "runtime.dist_backend=nccl"])
    with pytest.raises(_Stop):
        init_distributed(cfg)
    return chosen


def test_a_slurm_task_bound_to_one_gpu_starts_on_device_0(monkeypatch):
    fake_gpus(monkeypatch, 1)
    assert _start_rank(monkeypatch, 3) == [0]


def test_ranks_that_see_the_whole_node_start_on_their_local_rank(monkeypatch):
    fake_gpus(monkeypatch, 4)
    assert _start_rank(monkeypatch, 3) == [3]


def test_a_rank_past_its_nodes_gpus_is_refused_before_joining(monkeypatch):
    fake_gpus(monkeypatch, 2)
    with pytest.raises(UserError, match="^local rank 3 has no GPU of its own: this process sees 2 GPUs"):
        _start_rank(monkeypatch, 3)


@pytest.mark.parametrize("count, device, expected", [(1, torch.device("cuda"), 0), (4, torch.device("cuda"), 0),
                                                     (4, torch.device("cuda", 3), 3), (1, torch.device("cpu"), None)])
def test_ddp_is_given_the_rank_s_gpu(monkeypatch, count, device, expected):
    fake_gpus(monkeypatch, count)
    given: dict[str, Any] = {}

    def ddp(model: nn.Module, device_ids: list[int] | None = None, **kwargs: Any) -> nn.Module:
        given["device_ids"] = device_ids
        return model

    monkeypatch.setattr(replicas, "DistributedDataParallel", ddp)
    # Local rank 3 with one visible GPU: Slurm's binding; with four, an unindexed "cuda" is rank 0's.
    local_rank = 3 if count == 1 else (0 if device.index is None else device.index)
    ctx = DistContext(rank=local_rank, world_size=4, local_rank=local_rank, trainers=4)
    replicas.DataParallelReplicas(ctx, device).wrap(nn.Linear(2, 2), ())
    assert given["device_ids"] == (None if expected is None else [expected])


# ----------------------------------------------------------------------------------- CUDA generator
def fake_cuda_rng(monkeypatch: pytest.MonkeyPatch, count: int, current: int = 0) -> list[tuple[int, int]]:
    """GPU i's generator state is the byte tensor [i]; returns the (state, GPU) pairs set."""
    fake_gpus(monkeypatch, count, current)
    restored: list[tuple[int, int]] = []

    def get_rng_state(device: int | str = "cuda") -> torch.Tensor:
        assert isinstance(device, int) and 0 <= device < count, device
        return torch.tensor([device], dtype=torch.uint8)

    def set_rng_state(state: torch.Tensor, device: int | str = "cuda") -> None:
        assert isinstance(device, int) and 0 <= device < count, device  # never a GPU this process lacks
        restored.append((int(state[0]), device))

    def every_gpu(*_args: Any) -> Any:
        raise AssertionError("the CUDA generators of every GPU are not the run's")

    monkeypatch.setattr(torch.cuda, "get_rng_state", get_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", every_gpu)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", every_gpu)
    return restored


@pytest.mark.parametrize("device, expected", [(torch.device("cuda", 2), 2), (torch.device("cuda"), 1), (None, 1)])
def test_a_checkpoint_saves_the_generator_of_the_run_s_gpu_only(monkeypatch, device, expected):
    fake_cuda_rng(monkeypatch, 4, current=1)
    cuda = capture_rng(device)["cuda"]
    assert isinstance(cuda, torch.Tensor) and cuda.tolist() == [expected]


def test_a_cpu_run_saves_no_cuda_generator(monkeypatch):
    fake_cuda_rng(monkeypatch, 4)
    assert capture_rng(torch.device("cpu"))["cuda"] is None


def test_every_rank_restores_the_saved_generator_into_its_own_gpu(monkeypatch, tmp_path):
    restored = fake_cuda_rng(monkeypatch, 4, current=0)
    save_checkpoint(tmp_path, 1, {"rng": capture_rng(torch.device("cuda"))})  # rank 0, on GPU 0
    loaded = load_latest_checkpoint(tmp_path)  # weights-only: the state is still plain data
    assert loaded is not None
    for gpu in (torch.device("cuda"), torch.device("cuda", 3)):  # rank 0, and a follower on GPU 3
        restore_rng(loaded[0]["rng"], gpu)
    assert restored == [(0, 0), (0, 3)]
    restored.clear()
    fake_cuda_rng(monkeypatch, 1)  # a resume where each task sees its own GPU only
    restore_rng(loaded[0]["rng"], torch.device("cuda"))
    restore_rng(loaded[0]["rng"], torch.device("cpu"))  # a CPU resume leaves CUDA alone


def test_an_old_checkpoint_s_list_resumes_with_the_entry_of_the_gpu_or_none(monkeypatch):
    # Earlier releases saved one state per GPU that rank 0 saw: here 4, the entry of GPU i being [10 + i].
    old = {**capture_rng(torch.device("cpu")), "cuda": [torch.tensor([10 + i], dtype=torch.uint8) for i in range(4)]}
    restored = fake_cuda_rng(monkeypatch, 8)
    restore_rng(old, torch.device("cuda", 2))
    restore_rng(old, torch.device("cuda", 6))  # no entry for GPU 6: left as seeded, no IndexError
    assert restored == [(12, 2)]
    restored = fake_cuda_rng(monkeypatch, 1)  # a Slurm task bound to one GPU: its device 0
    restore_rng(old, torch.device("cuda"))
    restore_rng(old)
    assert restored == [(10, 0), (10, 0)]


# ----------------------------------------------------------------------------------- the batch's copy
class _Spy(TorchFunctionMode):
    """Records each tensor function called: (name, self, keyword arguments)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        kwargs = kwargs or {}
        self.calls.append((getattr(func, "__name__", str(func)), args[0] if args else None, kwargs))
        return func(*args, **kwargs)


def uint8_batch() -> MicroBatch:
    """A loader's uint8 micro-batch: channels-last in memory, as `assemble` lays it out."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8, generator=generator).permute(0, 3, 1, 2)
    assert not pixels.is_contiguous() and pixels.is_contiguous(memory_format=torch.channels_last)
    return MicroBatch(key=MicroBatchKey(step=0, micro=0, epoch=0), inputs=pixels,
                      targets=torch.arange(4), indices=torch.arange(4),
                      normalise=Normalise((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_batch_is_copied_in_its_own_layout_and_laid_out_on_the_device(channels_last):
    # "meta" stands for the GPU: another device, whose tensors keep their layout and carry no data.
    micro = uint8_batch()
    with _Spy() as spy:
        moved = micro.to(torch.device("meta"), non_blocking=True, channels_last=channels_last)
    on_host = [(name, kwargs) for name, first, kwargs in spy.calls
               if isinstance(first, torch.Tensor) and first.device.type == "cpu"]
    copies = [(name, kwargs) for name, first, kwargs in spy.calls if first is micro.inputs]
    # The loader's tensor itself (pinned on a GPU run) goes to the device, in its own layout, not blocking.
    assert len(copies) == 1 and copies[0][0] == "to", copies
    assert copies[0][1].get("non_blocking") is True
    assert copies[0][1].get("memory_format", torch.preserve_format) == torch.preserve_format, copies
    assert not [call for call in on_host if call[0] == "contiguous" or "memory_format" in call[1]], on_host
    assert moved.inputs.device.type == "meta" and moved.inputs.dtype == torch.float32
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert moved.inputs.is_contiguous(memory_format=layout)
    if not channels_last:
        assert any(name == "contiguous" and first.device.type == "meta" for name, first, _ in spy.calls)


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_batch_on_the_device_is_the_old_path_s_bit_for_bit(channels_last):
    micro = uint8_batch()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    old = micro.normalise(micro.inputs.to("cpu", memory_format=layout))  # the host-side transpose it replaces
    moved = micro.to(torch.device("cpu"), channels_last=channels_last)
    assert torch.equal(moved.inputs, old) and moved.inputs.stride() == old.stride()
    assert moved.inputs.is_contiguous(memory_format=layout)
