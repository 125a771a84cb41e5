"""Take a trained network away: `python -m conadv_repro.export RUN_DIR OUT.pt`.

Writes the run's network as it is evaluated, through its main BatchNorm (split BN keeps a main branch
for clean images and auxiliary ones for adversarial or augmented images; evaluation uses the main one,
see model/split_bn.py), as a plain state dict of tensors that needs nothing of this package to load:

  OUT.pt    the state dict; for resnet18/50 (ImageNet stem, 3 channels) it is torchvision's own layout:
            torchvision.models.resnet50(num_classes=K).load_state_dict(torch.load("OUT.pt",
            weights_only=True), strict=True) gives this suite's evaluation logits in eval mode
  OUT.json  the builder that loads it strict, the class names in label order, the eval preprocessing
            (resize, crop, mean, std), and which checkpoint and step it came from

The CIFAR-style networks (resnet8/14/20/32) have no torchvision counterpart: their builder line
rebuilds them with this package (`cifar_network`). A finished run exports checkpoints/final.pt; an
unfinished one only with --allow-unfinished (its newest valid checkpoint). Nothing is replaced
without --force. An ImageNet run's class names come from data_root/train: --data-root points a moved
run at its dataset. See docs/export.md.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conadv_repro.errors import OneLineParser, UserError, cli_entry

if TYPE_CHECKING:
    from torch import Tensor, nn

    from conadv_repro.config import Config

__all__ = ["Exported", "check_destination", "cifar_network", "export_run", "json_path_for", "main",
           "write_export"]

FORMAT = "conadv-export/1"
DEFAULT_BN_EPS = 1e-5  # torch.nn.BatchNorm2d's, which the builders below use unless told otherwise
# torchvision's CIFAR10 class names (the label_names of the dataset's batches.meta), in label order.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The dataset builders' default image sides (conadv_repro/data/datasets.py), for model.input_size=0.
DEFAULT_IMAGE_SIZE = {"digits": 16, "cifar10": 32, "imagenet": 224}

EXAMPLES = """examples:
  python -m conadv_repro.export runs/paper/0123456789ab r50.pt        # writes r50.pt and r50.json
  python -m conadv_repro.export runs/smoke/0123456789ab r8.pt --force # replace an earlier export
  python -m conadv_repro.export RUN_DIR mid.pt --allow-unfinished     # newest checkpoint of a running run
  python -m conadv_repro.export moved/run r50.pt --data-root /mnt/imagenet   # class names from a moved dataset

load it:
  import json, torch, torchvision
  model = torchvision.models.resnet50(num_classes=len(json.load(open("r50.json"))["classes"]))
  model.load_state_dict(torch.load("r50.pt", weights_only=True), strict=True)
  model.eval()
"""


def cifar_network(name: str, *, width: int, num_classes: int, in_channels: int,
                  bn_eps: float = DEFAULT_BN_EPS) -> nn.Module:
    """A CIFAR-style ResNet of this package with plain BatchNorm2d layers: what an export of one loads into."""
    from torch import nn

    from conadv_repro.model.resnet import cifar_resnet

    model = cifar_resnet(name, width=width, num_classes=num_classes, in_channels=in_channels,
                         zero_init_residual=False)  # the initialisation is overwritten by the load
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = bn_eps
    return model


@dataclass(frozen=True)
class Exported:
    """What `export_run` found: the state dict to write and the description that goes beside it."""

    state_dict: dict[str, Tensor]
    info: dict[str, Any]
    source: Path


def export_run(run_dir: Path, *, allow_unfinished: bool = False, data_root: Path | None = None) -> Exported:
    """The main-BN network of the run in `run_dir` and its description; writes nothing. `data_root`
    replaces the dataset folder stored in the run's config (a run or dataset that has moved)."""
    from conadv_repro.engine.checkpoint import finished_or_newest
    from conadv_repro.engine.rundir import RunDirectory, read_run_config

    # The dataset is read only for ImageNet's class names, which are optional: check_data=False.
    cfg = read_run_config(run_dir, data_root=data_root, check_data=False)
    rd = RunDirectory(Path(run_dir))
    builder_kind = _check_exportable(cfg)
    state, source, finished = finished_or_newest(rd.path, rd.read_record(), cfg.run_id(),
                                                 allow_unfinished=allow_unfinished, verb="export")
    model_state = state.get("model")
    if not isinstance(model_state, dict) or "fc.weight" not in model_state:
        raise UserError(f"checkpoint {source} holds no network of model.name={cfg.model.name}")
    num_classes = int(model_state["fc.weight"].shape[0])
    first_conv = next(t for t in model_state.values() if t.dim() == 4)  # the stem comes first in both nets
    in_channels = int(first_conv.shape[1])
    if builder_kind == "torchvision" and in_channels != 3:
        raise UserError(f"model.name={cfg.model.name} on {in_channels}-channel data (data={cfg.data}) is not "
                        "torchvision's network; allowed: 3-channel data for a torchvision export")
    exported = _main_branch_state(cfg, model_state, num_classes=num_classes, in_channels=in_channels,
                                  source=source)
    builder, target = _builder(cfg, builder_kind, num_classes=num_classes, in_channels=in_channels)
    # The promise of OUT.json: its builder loads OUT.pt strict. Checked here, before anything is written.
    target.load_state_dict(exported, strict=True)
    classes, classes_from = _class_names(cfg, num_classes)
    record = rd.read_record() or {}
    info = {
        "format": FORMAT,
        "run_id": cfg.run_id(),
        "model": cfg.model.name,
        "builder": builder,
        "load": "model.load_state_dict(torch.load(OUT.pt, weights_only=True), strict=True); model.eval()",
        "bn": "main branch of the split BatchNorm (the one evaluation uses)",
        "bn_eps": cfg.bn.eps,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "classes": classes,
        "classes_from": classes_from,
        "preprocessing": _preprocessing(cfg),
        "data": cfg.data,
        "checkpoint": source.name,
        "step": int(state.get("step", 0)),
        "total_steps": record.get("total_steps"),
        "finished": finished,
        "final": record.get("final") if finished else None,
    }
    return Exported(state_dict=exported, info=info, source=source)


def _check_exportable(cfg: Config) -> str:
    from conadv_repro.model.resnet import CIFAR_DEPTHS, TORCHVISION

    name, stem = cfg.model.name, cfg.model.stem
    if name in TORCHVISION:
        if stem == "cifar":
            raise UserError(f"model.name={name} with model.stem=cifar (3x3 stem, no max-pool) is not torchvision's "
                            f"{name}; allowed: resnet18/50 with model.stem=imagenet or auto, or resnet8/14/20/32")
        return "torchvision"
    if name in CIFAR_DEPTHS:
        return "cifar"
    # A user's builder may return anything, whatever it is called: no builder line could be promised.
    raise UserError(f"model.name={name!r} is a user's builder, which export cannot describe; allowed: "
                    f"{', '.join([*CIFAR_DEPTHS, *TORCHVISION])}")


def _main_branch_state(cfg: Config, model_state: dict[str, Tensor], *, num_classes: int, in_channels: int,
                       source: Path) -> dict[str, Tensor]:
    """The checkpoint's network with every split BN replaced by its main branch's parameters and stats."""
    from conadv_repro.model.registry import build_model
    from conadv_repro.model.split_bn import BRANCHES, THREE_WAY, SplitBatchNorm2d

    # The run's own network, so that which tensors belong to a split BN is known from the module types,
    # not guessed from key names, and a checkpoint that does not fit its config is refused.
    model = build_model(cfg.model, num_classes=num_classes, in_channels=in_channels,
                        image_size=cfg.model.input_size, bn_group_size=cfg.bn.group_size,
                        bn_momentum=cfg.bn.momentum, bn_eps=cfg.bn.eps,
                        bn_branches=THREE_WAY if cfg.bn.three_way else BRANCHES)
    try:
        model.load_state_dict(model_state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise UserError(f"checkpoint {source} does not fit its run's config ({first})") from None
    split = {name for name, module in model.named_modules() if isinstance(module, SplitBatchNorm2d)}
    exported: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        owner, branch, leaf = _split_key(key)
        if owner in split:
            if branch == "main":
                exported[f"{owner}.{leaf}"] = value.detach().cpu().contiguous().clone()
            continue
        exported[key] = value.detach().cpu().contiguous().clone()
    return exported


def _split_key(key: str) -> tuple[str, str, str]:
    """"layer1.0.bn1.main.weight" -> ("layer1.0.bn1", "main", "weight")."""
    parts = key.split(".")
    return ".".join(parts[:-2]), ".".join(parts[-2:-1]), parts[-1]


def _builder(cfg: Config, kind: str, *, num_classes: int, in_channels: int) -> tuple[str, nn.Module]:
    eps = cfg.bn.eps
    if kind == "torchvision":
        import functools

        import torch
        import torchvision

        name = cfg.model.name
        if eps == DEFAULT_BN_EPS:
            line = f"torchvision.models.{name}(num_classes={num_classes})"
            model = getattr(torchvision.models, name)(num_classes=num_classes)
        else:
            line = (f"torchvision.models.{name}(num_classes={num_classes}, "
                    f"norm_layer=functools.partial(torch.nn.BatchNorm2d, eps={eps!r}))")
            model = getattr(torchvision.models, name)(
                num_classes=num_classes, norm_layer=functools.partial(torch.nn.BatchNorm2d, eps=eps))
        return line, model
    extra = "" if eps == DEFAULT_BN_EPS else f", bn_eps={eps!r}"
    line = (f"conadv_repro.export.cifar_network({cfg.model.name!r}, width={cfg.model.width}, "
            f"num_classes={num_classes}, in_channels={in_channels}{extra})")
    return line, cifar_network(cfg.model.name, width=cfg.model.width, num_classes=num_classes,
                               in_channels=in_channels, bn_eps=eps)


def _class_names(cfg: Config, num_classes: int) -> tuple[list[str], str]:
    """The label names in label order, and where they came from (the dataset is never built for them)."""
    if cfg.data == "digits":
        names, origin = [str(i) for i in range(10)], "digits: the digit each label stands for"
    elif cfg.data == "cifar10":
        names, origin = list(CIFAR10_CLASSES), "cifar10: torchvision's CIFAR10 label names"
    elif cfg.data == "imagenet" and cfg.data_root and (Path(cfg.data_root) / "train").is_dir():
        train = Path(cfg.data_root) / "train"
        # torchvision's ImageFolder order (what the run trained with): the sorted class folder names.
        names = sorted(entry.name for entry in os.scandir(train) if entry.is_dir())
        origin = "imagenet: the class folders of data_root/train (ImageFolder order)"
        if len(names) != num_classes:
            raise UserError(f"{train} has {len(names)} class folders but the network has {num_classes} outputs; "
                            "allowed: the data_root the run trained on")
    else:
        what = "data_root/train is not here" if cfg.data == "imagenet" else "a user's dataset"
        hint = "; --data-root DIR names the dataset's folder" if cfg.data == "imagenet" else ""
        print(f"note: class names of data={cfg.data} are unknown here ({what}); writing label indices{hint}",
              file=sys.stderr)
        return [str(i) for i in range(num_classes)], f"label indices ({what})"
    if len(names) != num_classes:
        raise UserError(f"data={cfg.data} has {len(names)} classes but the network has {num_classes} outputs")
    return names, origin


def _preprocessing(cfg: Config) -> dict[str, Any]:
    """The eval transform (data/transforms.py), in numbers: a uint8 RGB image -> the network's input."""
    size = cfg.model.input_size or DEFAULT_IMAGE_SIZE.get(cfg.data, 0)
    steps = ("resize (shorter side, bilinear, antialiased), then center crop; pixels / 255; "
             "then (x - mean) / std per channel; NCHW float32")
    if cfg.data == "imagenet":
        from conadv_repro.data.datasets import IMAGENET_MEAN, IMAGENET_STD

        return {"resize": int(size * 256 / 224), "crop": size, "mean": list(IMAGENET_MEAN),
                "std": list(IMAGENET_STD), "steps": steps}
    if cfg.data == "cifar10":
        from conadv_repro.data.datasets import CIFAR10_MEAN, CIFAR10_STD

        return {"resize": None, "crop": None, "mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD),
                "steps": "the 32x32 image as is; pixels / 255; then (x - mean) / std per channel; NCHW float32"}
    if cfg.data == "digits":
        from conadv_repro.data.datasets import build_digits

        bundle = build_digits(cfg.data_root, cfg.model.input_size)  # embedded and small: the mean and std
        return {"resize": bundle.image_size, "crop": None, "mean": list(bundle.mean), "std": list(bundle.std),
                "steps": "scikit-learn's 8x8 digit (0..16) scaled to 0..255, resized to resize x resize "
                         "(bilinear, antialiased) and rounded; pixels / 255; then (x - mean) / std; NCHW float32"}
    return {"resize": None, "crop": None, "mean": None, "std": None,
            "steps": f"a user's dataset ({cfg.data}): see its builder's eval transform"}


def json_path_for(out: Path) -> Path:
    """Where the description of an export to `out` goes: beside it, with the suffix .json."""
    return out.with_suffix(".json")


def check_destination(out: Path, *, force: bool) -> Path:
    """Refuse a destination that would overwrite something without --force; returns OUT.json's path."""
    if out.suffix == ".json":
        raise UserError(f"OUT {out} ends in .json, the name of the description beside it; allowed: e.g. "
                        f"{out.with_suffix('.pt')}")
    described = json_path_for(out)
    for path in (out, described):
        if path.is_dir():
            raise UserError(f"{path} is a directory; allowed: a file name such as {path / 'model.pt'}")
    if not out.parent.is_dir():
        raise UserError(f"directory {out.parent} does not exist; create it first or pick another OUT")
    if not force:
        for path in (out, described):
            if path.exists():
                raise UserError(f"{path} exists; pass --force to replace it")
    return described


def write_export(exported: Exported, out: Path, *, force: bool = False) -> tuple[Path, Path]:
    """Write OUT and OUT.json atomically, the state dict first (the JSON records its sha256)."""
    import torch

    from conadv_repro.atomic import atomic_write_bytes, atomic_write_json

    described = check_destination(out, force=force)
    buffer = io.BytesIO()
    torch.save(exported.state_dict, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(out, data)
    atomic_write_json(described, {**exported.info, "state_dict": out.name,
                                  "state_dict_sha256": hashlib.sha256(data).hexdigest()})
    return out, described


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m conadv_repro.export", description=__doc__, epilog=EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run directory written by conadv_repro.train")
    parser.add_argument("out", type=Path, help="the state dict to write, e.g. model.pt (model.json goes beside it)")
    parser.add_argument("--force", action="store_true", help="replace OUT and OUT.json if they exist")
    parser.add_argument("--allow-unfinished", action="store_true",
                        help="export the newest valid checkpoint of a run that has not finished")
    parser.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                        help="the dataset folder, in place of the data_root stored in the run's config (an "
                             "ImageNet run's class names are its train/ folders)")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_destination(args.out, force=args.force)  # before the slow part, so a clash costs nothing
    exported = export_run(args.run_dir, allow_unfinished=args.allow_unfinished, data_root=args.data_root)
    out, described = write_export(exported, args.out, force=args.force)
    info = exported.info
    print(f"wrote {out} ({len(exported.state_dict)} tensors; {info['builder']}) and {described} "
          f"({info['num_classes']} classes) from {exported.source} at step {info['step']}")
    if not info["finished"]:
        print(f"note: the run has not finished; this is step {info['step']} of {info['total_steps']}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
