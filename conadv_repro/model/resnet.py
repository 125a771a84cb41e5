"""ResNets for the suite: torchvision's for ResNet-18/50, a CIFAR-style one for small inputs.

torchvision's `resnet50` is ResNet-50 v1.5 (stride 2 in the 3x3 convolution of the bottleneck), the
MLPerf baseline the paper uses. The CIFAR-style networks follow He et al. (2016), section 4.2: a 3x3
stem with no max-pool, three stages of basic blocks (6n+2 layers), widths w, 2w, 4w.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

CIFAR_DEPTHS = {"resnet8": 1, "resnet14": 2, "resnet20": 3, "resnet32": 5}
# torchvision's builders, imported when one is built: torchvision's import costs about 3 s on a CPU.
TORCHVISION = ("resnet18", "resnet50")


class _BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage: int, width: int, num_classes: int, in_channels: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        in_ch = width
        for stage, out_ch in enumerate((width, 2 * width, 4 * width)):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(_BasicBlock(in_ch, out_ch, stride))
                in_ch = out_ch
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def cifar_resnet(name: str, *, width: int, num_classes: int, in_channels: int,
                 zero_init_residual: bool) -> nn.Module:
    model = CifarResNet(CIFAR_DEPTHS[name], width, num_classes, in_channels)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, _BasicBlock):
                nn.init.zeros_(m.bn2.weight)
    return model


def torchvision_resnet(name: str, *, num_classes: int, in_channels: int, stem: str,
                       zero_init_residual: bool) -> nn.Module:
    from torchvision.models import resnet as tv_resnet

    model = getattr(tv_resnet, name)(weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    if stem == "cifar" or in_channels != 3:
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model
