"""Build the network a config names, with every BatchNorm swapped for a split ghost BN."""

from __future__ import annotations

import importlib

from torch import nn

from conadv_repro.config import ModelConfig
from conadv_repro.errors import UserError
from conadv_repro.model.resnet import CIFAR_DEPTHS, TORCHVISION, cifar_resnet, torchvision_resnet
from conadv_repro.model.split_bn import BRANCHES, convert_to_split_bn


def resolve_import_path(path: str, what: str) -> object:
    """`pkg.module:attr` -> the attribute, or a one-line UserError."""
    module_name, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as error:
        raise UserError(f"{what} {path!r} cannot be imported ({error})") from None


def build_model(cfg: ModelConfig, *, num_classes: int, in_channels: int, image_size: int,
                bn_group_size: int, bn_momentum: float, bn_eps: float,
                bn_branches: tuple[str, ...] = BRANCHES) -> nn.Module:
    """A user's builder `pkg.module:build` is called as `build(num_classes=, in_channels=, image_size=)`
    and returns an nn.Module with ordinary BatchNorm2d layers; they are converted like ours."""
    if cfg.name in CIFAR_DEPTHS:
        if cfg.stem == "imagenet":
            raise UserError(f"model.stem=imagenet is not available for model.name={cfg.name}; allowed: auto, cifar")
        model = cifar_resnet(cfg.name, width=cfg.width, num_classes=num_classes, in_channels=in_channels,
                             zero_init_residual=cfg.zero_init_residual)
    elif cfg.name in TORCHVISION:
        stem = "imagenet" if cfg.stem == "auto" else cfg.stem
        model = torchvision_resnet(cfg.name, num_classes=num_classes, in_channels=in_channels, stem=stem,
                                   zero_init_residual=cfg.zero_init_residual)
    else:
        builder = resolve_import_path(cfg.name, "model.name")
        if not callable(builder):
            raise UserError(f"model.name={cfg.name!r} is not callable")
        model = builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
        if not isinstance(model, nn.Module):
            raise UserError(f"model.name={cfg.name!r} returned {type(model).__name__}, not an nn.Module")
    return convert_to_split_bn(model, group_size=bn_group_size, momentum=bn_momentum, eps=bn_eps,
                               branches=bn_branches)
