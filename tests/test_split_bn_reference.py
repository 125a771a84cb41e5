"""The fused split ghost BN held to the first release's definition (tests/reference_split_bn.py): outputs,
the gradients of the input and of both branches' parameters, and the committed running statistics."""

from __future__ import annotations

import pytest
import torch

from conadv_repro.model.split_bn import SplitBatchNorm2d, bn_route, commit_bn_statistics
from tests.reference_split_bn import ReferenceSplitBatchNorm2d

CHANNELS, GROUP = 6, 4


def pair() -> tuple[SplitBatchNorm2d, ReferenceSplitBatchNorm2d]:
    torch.manual_seed(0)
    fused = SplitBatchNorm2d(CHANNELS, group_size=GROUP, momentum=0.1, eps=1e-5)
    reference = ReferenceSplitBatchNorm2d(CHANNELS, group_size=GROUP, momentum=0.1, eps=1e-5)
    with torch.no_grad():
        for branch in fused.branches:
            getattr(fused, branch).weight.uniform_(0.5, 1.5)
            getattr(fused, branch).bias.uniform_(-0.5, 0.5)
    reference.load_state_dict(fused.state_dict())
    return fused, reference


def run(module: torch.nn.Module, x: torch.Tensor, branch: str, *, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward through `branch` and a backward of a fixed random projection; (output, input grad)."""
    x = x.detach().clone().requires_grad_(True)
    if isinstance(module, SplitBatchNorm2d):
        route = bn_route(module, branch)
    else:
        module.branch = branch
        route = torch.autocast("cpu", enabled=False)  # a no-op context: the reference is routed above
    with route, torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = module(x.bfloat16() if bf16 else x)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    (y.float() * weights).sum().backward()
    module.branch = "main"
    return y.detach(), x.grad


# fp32: both compute in float32, in another order (a fused kernel against seven operations).
# bf16: both normalise bf16 inputs in float32 and round the output to bf16 once; the kernel's float32
# arithmetic differs in the last bits, which moves a rounding by one bf16 step (2^-8 relative) here and
# there, and the input gradient is bf16 in both.
CASES = {
    "fp32": dict(layout=torch.contiguous_format, bf16=False, rtol=1e-5, atol=1e-5, grad_atol=1e-5),
    "fp32-channels-last": dict(layout=torch.channels_last, bf16=False, rtol=1e-5, atol=1e-5, grad_atol=1e-5),
    "bf16-autocast": dict(layout=torch.contiguous_format, bf16=True, rtol=8e-3, atol=1e-3, grad_atol=1e-3),
}


@pytest.mark.parametrize("case", CASES)
def test_the_fused_split_bn_matches_the_reference_definition(case):
    spec = CASES[case]
    fused, reference = pair()
    torch.manual_seed(2)
    batches = [(torch.randn(3 * GROUP, CHANNELS, 5, 7) * 3 + 1).to(memory_format=spec["layout"]) for _ in range(3)]
    for x, branch in zip(batches, ("main", "main", "aux"), strict=True):
        y, gx = run(fused, x, branch, bf16=spec["bf16"])
        y_ref, gx_ref = run(reference, x, branch, bf16=spec["bf16"])
        assert y.dtype == y_ref.dtype == (torch.bfloat16 if spec["bf16"] else torch.float32)
        assert y.is_contiguous(memory_format=spec["layout"])
        torch.testing.assert_close(y.float(), y_ref.float(), rtol=spec["rtol"], atol=spec["atol"])
        torch.testing.assert_close(gx.float(), gx_ref.float(), rtol=spec["rtol"], atol=spec["grad_atol"])
    for name, p in fused.named_parameters():
        # Sums over every example and position: float32 in both, compared with a tolerance for the order.
        torch.testing.assert_close(p.grad, dict(reference.named_parameters())[name].grad, rtol=1e-4, atol=1e-4,
                                   msg=name)
    commit_bn_statistics(fused)
    reference.commit()
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(fused.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert int(fused.main.num_batches_tracked) == int(fused.aux.num_batches_tracked) == 1
