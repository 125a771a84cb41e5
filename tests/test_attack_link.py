"""The weights broadcast between trainer 0 and an attack worker, in two gloo processes: the worker queues a
receipt without waiting on the host, and checks its header (the step, or STOP) only when asked."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from conadv_repro.distributed.attack_link import WeightsReceiver, WeightsSender, weights_numel
from conadv_repro.distributed.context import DistContext
from conadv_repro.engine.host_syncs import count_host_syncs


def network(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def _rank(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    ctx = DistContext(rank=rank, world_size=2, trainers=1, attack_workers=1, backend="gloo")
    cpu = torch.device("cpu")
    numel = weights_numel(network(0))
    try:
        if rank == 0:
            # The attacks of steps [0, 4) with tau=1 need theta_0, theta_1, theta_2; trainer 0 stops after theta_1.
            sender = WeightsSender(ctx, cpu, 0, 4, 1, numel)
            sender.offer(0, network(10))
            sender.offer(1, network(11))
            sender.stop()
            sender.wait()
            return
        receiver = WeightsReceiver(ctx, cpu, numel)
        first, second, third = network(0), network(0), network(0)
        with count_host_syncs(cpu) as posting:
            receiver.post(0, first)
        result = {"syncs_while_posting": len(posting), "first": receiver.confirm(),
                  "first_matches": all(torch.equal(a, b) for a, b in
                                       zip(first.state_dict().values(), network(10).state_dict().values(), strict=True))}
        receiver.post(5, second)  # theta_1 arrives where theta_5 was expected
        try:
            receiver.confirm()
            result["mismatch"] = "not raised"
        except RuntimeError as error:
            result["mismatch"] = str(error)
        receiver.post(2, third)
        result["after_stop"] = receiver.confirm()
        Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_a_worker_posts_weights_without_waiting_and_confirms_steps_and_stop(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "receiver.json"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_rank, args=(port, str(out)), nprocs=2, join=True)
    result = json.loads(out.read_text())
    assert result["syncs_while_posting"] == 0
    assert result["first"] is True and result["first_matches"] is True
    assert result["mismatch"] == "attack worker expected the weights of step 5, got step 1"
    assert result["after_stop"] is False
