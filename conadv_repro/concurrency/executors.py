"""Attack executors: the sequential reference, a worker thread (CPU), a side CUDA stream (GPU).

All three run the same attack function; they differ only in when and where it runs, so they give the
same numbers (tests/test_conadv.py checks the thread against the sequential executor bit for bit).

- `SequentialExecutor` runs the attack when its result is needed: the reference execution.
- `ThreadExecutor` runs it on one worker thread while the caller trains. torch releases the GIL in its
  kernels, so on two cores the attack and the update overlap for real. The worker uses the caller's
  intra-op thread count, so the kernels (and their reduction order) are those of the reference.
- `StreamExecutor` is the thread executor whose worker issues its kernels on a side CUDA stream. The
  stream pitfalls (see the project's reference notes) are handled here: the side stream waits for the
  main stream's snapshot copy before reading it (`wait_event`), the main stream waits for the attack
  before using its result, and the result is `record_stream`-ed on the main stream so its memory is not
  reused while the main stream still reads it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor

from conadv_repro.errors import UserError


class SequentialExecutor:
    concurrent = False
    name = "sequential"

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn())
        except BaseException as error:  # re-raised by wait(), like a thread's
            future.set_exception(error)
        return future

    def wait(self, future: Future[Any]) -> Any:
        return future.result()

    def close(self) -> None:
        pass


class ThreadExecutor:
    concurrent = True
    name = "thread"

    def __init__(self) -> None:
        threads = torch.get_num_threads()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="conadv-attack",
                                        initializer=torch.set_num_threads, initargs=(threads,))

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        return self._pool.submit(fn)

    def wait(self, future: Future[Any]) -> Any:
        return future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class StreamExecutor(ThreadExecutor):
    name = "stream"

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self.side = torch.cuda.Stream(device=device)

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(self.device))  # after the snapshot copy was issued

        def on_side_stream() -> tuple[Any, torch.cuda.Event]:
            with torch.cuda.device(self.device), torch.cuda.stream(self.side):
                self.side.wait_event(ready)
                out = fn()
                done = torch.cuda.Event()
                done.record(self.side)
            return out, done

        return self._pool.submit(on_side_stream)

    def wait(self, future: Future[Any]) -> Any:
        out, done = future.result()
        main = torch.cuda.current_stream(self.device)
        main.wait_event(done)
        for tensor in _tensors_in(out):
            if tensor.is_cuda:
                tensor.record_stream(main)
        return out


def _tensors_in(value: Any) -> list[Tensor]:
    """The tensors of a result: a tensor, or tuples, lists and dataclasses (a MicroBatch) holding them;
    all were made on the side stream and are read on the main one."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors_in(item)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [t for f in dataclasses.fields(value) for t in _tensors_in(getattr(value, f.name))]
    return []


def executor_name(name: str, device: torch.device, *, moves_running_stats: bool) -> str:
    """`auto`: the side stream on CUDA, the worker thread on the CPU; sequential whenever the attack
    writes running statistics (it would race with the update that reads them)."""
    if moves_running_stats:
        return "sequential"
    if name == "auto":
        return "stream" if device.type == "cuda" else "thread"
    return name


def make_executor(name: str, device: torch.device, *, moves_running_stats: bool) -> Any:
    """The executor `executor_name` resolves to."""
    name = executor_name(name, device, moves_running_stats=moves_running_stats)
    if name == "sequential":
        return SequentialExecutor()
    if name == "thread":
        return ThreadExecutor()
    if name == "stream":
        if device.type != "cuda":
            raise UserError(f"conadv.executor=stream needs a CUDA device, not {device}; allowed here: "
                            "auto, sequential, thread")
        return StreamExecutor(device)
    raise UserError(f"conadv.executor={name!r} is not allowed; allowed: auto, sequential, thread, stream")
