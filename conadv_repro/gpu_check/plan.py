"""What the check trains: the GPU sizes and the CPU smoke's, in one place.

The GPU plan keeps the whole check within 5 minutes of one H100/H200, first compiles included: the
correctness runs use small networks on the embedded digits (every path, few seconds each), the speed
runs ResNet-50 at 224 px. The CPU smoke runs the same code at sizes a 2-core CI machine trains in
seconds; its numbers check the plumbing, not the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

SECTIONS = ("deterministic", "fast", "speed", "memory", "calibration", "multi-gpu")


@dataclass(frozen=True)
class Plan:
    name: str
    device: str
    # Section 1, deterministic: bit-exactness runs (bf16 as at the paper scale; two micro-batches a step,
    # so the attack of micro-batch j+1 overlaps j within a step and across step boundaries).
    exact: tuple[str, ...]
    exact_steps: int
    resume_at: int  # the checkpoint the interrupted run resumes from (the run stops one step later)
    # Section 1, fast: every method with bf16 autocast and channels_last (channels_last is CUDA-only).
    fast: tuple[str, ...]
    fast_steps: int
    compile: tuple[str, ...] | None  # None: torch.compile is skipped (see skip_compile)
    # Section 2: the speed runs' network (model.* and runtime.* overrides), micro-batches, and the
    # torchvision network of the plain loop.
    speed: tuple[str, ...]
    plain_model: str
    micro_batches: tuple[int, ...]
    rounds: int
    steps_per_round: int
    warmup_steps: int
    # The memory section: one step per method at each of these micro-batches, in the speed runs' network.
    memory_micro_batches: tuple[int, ...]
    skip_compile: str = ""

    @property
    def smoke(self) -> bool:
        return self.device == "cpu"


_COMMON = ("data=digits", "runtime.wandb=disabled", "optim.lr=1.0", "schedule.warmup_epochs=0.1")
# One torch thread on the CPU: the attack thread takes the other core, and a shared 2-core machine runs
# tiny kernels several times faster without intra-op threads.
_CPU = ("runtime.device=cpu", "runtime.threads=1")

GPU = Plan(
    name="gpu", device="cuda",
    exact=(*_COMMON, "runtime.device=cuda", "model.name=resnet20", "model.width=16", "model.input_size=32",
           "batch_size=64", "bn.group_size=16", "runtime.micro_batch=32", "runtime.autocast=bf16"),
    exact_steps=6, resume_at=3,
    fast=(*_COMMON, "runtime.device=cuda", "model.name=resnet18", "model.input_size=32", "batch_size=64",
          "bn.group_size=16", "runtime.micro_batch=32", "runtime.autocast=bf16", "runtime.channels_last=true"),
    fast_steps=4,
    # The smallest network: compile time, not the network, is what this checks.
    compile=(*_COMMON, "runtime.device=cuda", "model.name=resnet8", "model.width=16", "batch_size=64",
             "bn.group_size=16", "runtime.micro_batch=32", "runtime.autocast=bf16", "runtime.compile=true"),
    speed=("model.name=resnet50", "model.input_size=224", "runtime.device=cuda", "runtime.autocast=bf16",
           "runtime.channels_last=true"),
    plain_model="resnet50", micro_batches=(64, 128, 256), rounds=5, steps_per_round=3, warmup_steps=3,
    memory_micro_batches=(128, 256),
)

SMOKE = Plan(
    name="cpu-smoke", device="cpu",
    exact=(*_COMMON, *_CPU, "model.name=resnet8", "model.width=4", "batch_size=32",
           "bn.group_size=8", "runtime.micro_batch=16", "runtime.autocast=bf16"),
    exact_steps=3, resume_at=1,
    fast=(*_COMMON, *_CPU, "model.name=resnet8", "model.width=4", "batch_size=32",
          "bn.group_size=8", "runtime.micro_batch=16", "runtime.autocast=bf16"),
    fast_steps=2,
    compile=None,
    skip_compile="CPU smoke: inductor's C++ build of even the smallest network takes minutes on a small CPU "
                 "(tests/test_gpu_paths.py traces it with the aot_eager backend)",
    # fp32: CPU bf16 kernels of resnet-sized layers are orders of magnitude slower than fp32 ones. The
    # plain loop keeps a torchvision network (no CIFAR-style one there): the smoke's ratios mean nothing.
    speed=("model.name=resnet8", "model.width=4", "model.input_size=16", "runtime.device=cpu",
           "runtime.autocast=none", "runtime.threads=1"),
    plain_model="resnet18", micro_batches=(16,), rounds=2, steps_per_round=1, warmup_steps=1,
    memory_micro_batches=(8, 16),
)
