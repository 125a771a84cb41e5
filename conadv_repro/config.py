"""The one run configuration: frozen dataclasses, validated when built, strict about unknown keys.

A run is described by dotted `key=value` overrides of `Config` (e.g. `batch_size=32k optim.lr=35`).
Every field carries its help text and its allowed values in the dataclass metadata, so `--help`, the
validation messages and the docs come from one place.

The run id is a stable hash of the fields that change the result. Fields at their default are left out
of the hash, so adding a field later (with a default that keeps the old behaviour) keeps existing ids;
paths, the device, worker counts, compile and logging never enter it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from conadv_repro.batch_sizes import format_batch, parse_batch
from conadv_repro.errors import UserError
from conadv_repro.presets import preset_values, scale_batch
from conadv_repro.throughput_model import (
    CIFAR_DEPTHS,
    TORCHVISION_LAYERS,
    network_of_config,
    smallest_bn_side,
)

SCHEMA_VERSION = 1

# Each method and the config sections (and keys) only it uses: setting one for a method with no use for
# it is a mistake, not a silent no-op (and keeps e.g. vanilla's run ids free of attack fields).
METHOD_KEYS: dict[str, tuple[str, ...]] = {
    "vanilla": (),
    "disadv": ("attack.",),
    "conadv": ("attack.", "conadv."),
    # The control draws a random corner of the epsilon ball: no attack step, no attack forward.
    "noise": ("attack.epsilon", "attack.units", "attack.loss_weighting"),
}
METHODS = tuple(METHOD_KEYS)
METHOD_SPECIFIC = ("attack.", "conadv.", "bn.three_way")
# The built-in datasets read from data_root (a user's pkg.module:build is given it too); digits is embedded.
ROOTED_DATA = ("cifar10", "imagenet")


def _f(default: Any, help: str, *, choices: Iterable[Any] | None = None, minimum: float | None = None,
       maximum: float | None = None, positive: bool = False, batch: bool = False, hashed: bool = True,
       open_choices: bool = False, path: bool = False) -> Any:
    """A dataclass field with its help text and constraints in the metadata (`path`: a folder, made
    absolute when the config is built)."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "min": minimum,
            "max": maximum, "positive": positive, "batch": batch, "hashed": hashed,
            "open_choices": open_choices, "path": path}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ModelConfig:
    name: str = _f("resnet8", "network: resnet8/14/20/32 (CIFAR-style, 6n+2 layers), resnet18, resnet50 "
                   "(torchvision, v1.5), or your own builder as pkg.module:build",
                   choices=("resnet8", "resnet14", "resnet20", "resnet32", "resnet18", "resnet50"),
                   open_choices=True)
    width: int = _f(16, "base channels of the CIFAR-style ResNets (doubled per stage)", positive=True)
    stem: str = _f("auto", "input stem: cifar (3x3 conv, no max-pool), imagenet (7x7 conv + max-pool), "
                   "auto (cifar for the CIFAR-style nets, imagenet for resnet18/50)",
                   choices=("auto", "cifar", "imagenet"))
    zero_init_residual: bool = _f(True, "start the last BN scale of every residual block at 0 "
                                  "(Goyal et al. 2017; the MLPerf reference)")
    input_size: int = _f(0, "image side the network sees; 0 = the dataset's default (digits 16, "
                         "cifar10 32, imagenet 224)", minimum=0)


@dataclass(frozen=True)
class OptimConfig:
    name: str = _f("lars", "optimizer: lars (MLPerf LARS) or sgd (momentum SGD, no trust ratio)",
                   choices=("lars", "sgd"))
    lr: float = _f(2.0, "peak learning rate (used as is with optim.lr_rule=fixed)", positive=True)
    lr_rule: str = _f("fixed", "fixed: use optim.lr and schedule.warmup_epochs as given; table6: the "
                      "paper's Table 6 peak LR and warmup for batch_size (see docs/fidelity.md)",
                      choices=("fixed", "table6"))
    momentum: float = _f(0.9, "momentum", minimum=0.0, maximum=0.999999)
    momentum_form: str = _f("lr_inside", "lr_inside: v = m*v + lr*trust*d (MLPerf TF LARS); "
                            "lr_outside: v = m*v + trust*d, w -= lr*v (timm)",
                            choices=("lr_inside", "lr_outside"))
    weight_decay: float = _f(5e-4, "weight decay (not applied to BN parameters and biases)", minimum=0.0)
    trust_coefficient: float = _f(0.001, "LARS trust coefficient eta", positive=True)
    eps: float = _f(0.0, "LARS epsilon in the trust-ratio denominator", minimum=0.0)
    label_smoothing: float = _f(0.1, "label smoothing of the cross-entropy", minimum=0.0, maximum=0.999)


@dataclass(frozen=True)
class ScheduleConfig:
    warmup_epochs: float = _f(2.0, "linear warmup length in epochs (used with optim.lr_rule=fixed)",
                              minimum=0.0)
    power: float = _f(2.0, "polynomial decay power after warmup (MLPerf: 2)", positive=True)
    end_lr: float = _f(1e-4, "learning rate at the last step (MLPerf: 1e-4)", minimum=0.0)


@dataclass(frozen=True)
class BNConfig:
    group_size: int = _f(32, "ghost BatchNorm: examples of one branch per statistics group "
                         "(the paper: 64)", positive=True)
    momentum: float = _f(0.1, "running-statistics momentum, applied once per optimizer step",
                         positive=True, maximum=1.0)
    eps: float = _f(1e-5, "BatchNorm epsilon", positive=True)
    three_way: bool = _f(False, "with autoaugment: a third BN for the augmented images, the original images "
                         "through the main BN and the adversarial ones through the auxiliary BN (the "
                         "official code)")


@dataclass(frozen=True)
class AttackConfig:
    epsilon: float = _f(3.0, "L-infinity radius in 0-255 pixel units (Table 5's p), applied per channel "
                        "through the input std", minimum=0.0, maximum=255.0)
    step_size: float = _f(1.0, "step of the one PGD step, as a multiple of epsilon", minimum=0.0)
    random_init: bool = _f(True, "start from a uniform random point of the epsilon ball (PGD's random init)")
    clean_start_prob: float = _f(0.0, "probability that an example starts from the clean image instead "
                                 "(the official code: 0.2)", minimum=0.0, maximum=1.0)
    gradient: str = _f("sign", "step direction: sign (PGD, L-infinity steepest ascent) or raw (eq. 3 and 5 "
                       "write x + alpha * grad)", choices=("sign", "raw"))
    target: str = _f("none", "none: ascend the loss of the true label; random: descend toward a random "
                     "wrong label (the official code)", choices=("none", "random"))
    units: str = _f("pixel", "pixel: epsilon/255 of the [0,1] image, divided by the channel std; tf_official: "
                    "epsilon*2/255 added to the standardised input, as the official code does",
                    choices=("pixel", "tf_official"))
    bn: str = _f("aux", "the BN branch the attack's forward uses: aux (AdvProp) or main", choices=("aux", "main"))
    bn_mode: str = _f("train_frozen", "BN mode during the attack: train_frozen (batch statistics, running "
                      "statistics untouched), eval (running statistics), train_moving (batch statistics, and "
                      "the attack's statistics move the running ones, as the official code; sequential "
                      "executor only)", choices=("train_frozen", "eval", "train_moving"))
    loss_weighting: str = _f("sum", "sum: clean + adversarial losses (eq. 2, Algorithm 1); mean: the mean of the "
                             "branch losses, 1/2 each (eq. 4)", choices=("sum", "mean"))


@dataclass(frozen=True)
class ConAdvConfig:
    tau: int = _f(1, "staleness: the adversarial examples of step t come from theta_(t-tau) "
                  "(theta_0 for the first tau steps)", minimum=0)
    executor: str = _f("auto", "where the attack runs: sequential (the reference), thread (a worker thread on "
                       "the CPU), stream (a side CUDA stream), auto (stream on CUDA, thread on the CPU); "
                       "all give the same numbers", choices=("auto", "sequential", "thread", "stream"),
                       hashed=False)
    attack_workers: int = _f(0, "ranks dedicated to attacks in a multi-process run: they receive theta_t by "
                             "broadcast after each update and send the trainers their adversarial examples "
                             "point to point (0: none, the attack runs on the trainers' executor); not part of "
                             "the run id, like runtime.trainers: the same weights up to summation order (a "
                             "timed experiment pins its layout with runtime.timed_layout)", minimum=0,
                             hashed=False)


@dataclass(frozen=True)
class RuntimeConfig:
    device: str = _f("auto", "cpu, cuda, cuda:N, or auto (cuda when available)", hashed=False)
    micro_batch: int = _f(0, "examples per forward/backward on this process, a whole number of BN groups "
                          "dividing batch_size; the batch is accumulated over its micro-batches (same "
                          "result up to floating-point summation order); capped at the process's share of "
                          "the batch; 0 = the whole share",
                          minimum=0, batch=True, hashed=False)
    workers: int = _f(0, "data-loader worker processes", minimum=0, hashed=False)
    normalise: str = _f("auto", "where uint8 images become normalised float32: loader (in the loader's workers), "
                        "device (after the copy to the device: a quarter of the bytes to copy and pin; the "
                        "suite's datasets and make_bundle's, others normalise in the loader), auto (device on "
                        "CUDA, loader on the CPU); the same numbers either way",
                        choices=("auto", "loader", "device"), hashed=False)
    threads: int = _f(0, "torch CPU threads; 0 = torch's default", minimum=0, hashed=False)
    trainers: int = _f(0, "trainer processes of a multi-process run (one GPU each); the launcher asks for "
                       "trainers + conadv.attack_workers tasks (launch --gpus-per-run sets it); 0 = every rank "
                       "that is not an attack worker (1 when the launcher starts it); not part of the run id: "
                       "the results do not depend on it up to summation order, so a run started on one layout "
                       "resumes on another", minimum=0, hashed=False)
    timed_layout: str = _f("", "the layout a timed experiment measures, TRAINERS+WORKERS (e.g. 64+64): part of "
                           "the run id, so that cells differing only in their devices stay separate runs, and "
                           "checked against runtime.trainers and conadv.attack_workers; empty for runs whose "
                           "results do not depend on their devices")
    dist_backend: str = _f("auto", "torch.distributed backend: auto (nccl on CUDA, gloo on the CPU), nccl, gloo",
                           choices=("auto", "nccl", "gloo"), hashed=False)
    dist_timeout_s: float = _f(1800.0, "timeout of every collective and point-to-point transfer until each "
                               "rank's first step is done (start-up, torch.compile and cuDNN autotuning happen "
                               "there), seconds: a lost rank ends the job with an error instead of a hang",
                               positive=True, hashed=False)
    dist_step_timeout_s: float = _f(600.0, "the same timeout from each rank's second step on, seconds: a stalled "
                                    "or lost rank ends the run as failed, naming the rank, within about this "
                                    "long; it must exceed rank 0's end-of-epoch evaluation plus a checkpoint "
                                    "write, which the other ranks wait out in a collective", positive=True,
                                    hashed=False)
    autocast: str = _f("none", "mixed precision on CUDA: none or bf16 (changes the numbers, so it "
                       "is part of the run id)", choices=("none", "bf16"))
    channels_last: bool = _f(True, "channels_last memory format on CUDA", hashed=False)
    compile: bool = _f(False, "torch.compile the network", hashed=False)
    deterministic: bool = _f(False, "deterministic kernels: torch.use_deterministic_algorithms (warn_only), "
                             "CUBLAS_WORKSPACE_CONFIG=:4096:8, cuDNN deterministic without autotuning; repeatable "
                             "bits on one machine at some speed (docs/gpu-check.md); for the whole process. "
                             "false: cuDNN autotunes its convolutions on CUDA (a run repeats its shapes)",
                             hashed=False)
    log_every: int = _f(10, "steps between progress lines and metrics rows", positive=True, hashed=False)
    eval_every: int = _f(1, "epochs between test-set evaluations (and always at the end)",
                         positive=True, hashed=False)
    checkpoint_every: int = _f(200, "steps between checkpoints (and always at each epoch end)",
                               positive=True, hashed=False)
    eval_batch: int = _f(512, "batch size of evaluation passes", positive=True, batch=True, hashed=False)
    wandb: str = _f("auto", "W&B logging: auto (online when logged in, offline otherwise), online, offline, "
                    "disabled", choices=("auto", "online", "offline", "disabled"), hashed=False)


@dataclass(frozen=True)
class Config:
    method: str = _f("vanilla", "training method: vanilla, disadv (attack batch t with theta_t), conadv "
                     "(attack batch t with theta_(t-tau), concurrently with the update), noise (the control: "
                     "DisAdv's two branches with a random +-epsilon perturbation)", choices=METHODS)
    autoaugment: bool = _f(False, "train on AutoAugment (ImageNet policy) images instead of the originals")
    data: str = _f("digits", "dataset: digits (embedded, scikit-learn's 8x8 digits), cifar10, imagenet, "
                   "or your own builder as pkg.module:build", choices=("digits", "cifar10", "imagenet"),
                   open_choices=True)
    data_root: str = _f("", "dataset directory (cifar10, imagenet, or your own builder); stored absolute",
                        hashed=False, path=True)
    data_decoder: str = _f("pil", "image decoder of data=imagenet: pil (Pillow, torchvision's ImageFolder), "
                           "torchvision (torchvision.io's libjpeg-turbo, faster; deprecated since torchvision "
                           "0.29) or torchcodec (TorchCodec on the CPU, pip install -e '.[torchcodec]'; it turns "
                           "EXIF-rotated images upright); the augmentation is the same, but another decoder may "
                           "give other pixels, so it is part of the run id; never chosen for you",
                           choices=("pil", "torchvision", "torchcodec"))
    batch_size: int = _f(128, "global batch size trained (32k = 32 x 1024)", positive=True, batch=True)
    epochs: float = _f(30.0, "training length in epochs (an epoch is floor(N / batch_size) steps)",
                       positive=True)
    steps: int | None = _f(None, "training length in steps; overrides epochs (e.g. the official code's "
                           "1301)", positive=True)
    seed: int = _f(0, "seed of initialisation, data order, augmentation and attacks", minimum=0)
    scale: str = _f("", "preset the run belongs to: smoke, proxy, cifar10, paper (applies its defaults "
                    "before your overrides); empty for a free run",
                    choices=("", "smoke", "proxy", "cifar10", "paper"))
    paper_batch: str = _f("", "the paper's batch size this run stands for (e.g. 32k); empty for a free run")
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    bn: BNConfig = field(default_factory=BNConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    conadv: ConAdvConfig = field(default_factory=ConAdvConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        _validate_fields(self, "")
        _validate_cross_fields(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted key -> value of every field."""
        return dict(_walk(self, ""))

    def run_id(self) -> str:
        """Stable 12-hex-digit hash of the non-default fields that change the result."""
        default_flat = dict(_walk_defaults(Config, ""))
        hashed = {key: value for key, value in self.flat().items()
                  if _field_meta(key).get("hashed", True) and value != default_flat[key]}
        payload = json.dumps({"schema": SCHEMA_VERSION, "fields": hashed}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def replace(self, overrides: Mapping[str, Any]) -> Config:
        """A new config with dotted-key overrides applied (values already typed or strings)."""
        return build_config({**self.flat(), **overrides}, _explicit=set(overrides))


SECTIONS: dict[str, type] = {"model": ModelConfig, "optim": OptimConfig, "schedule": ScheduleConfig,
                             "bn": BNConfig, "attack": AttackConfig, "conadv": ConAdvConfig,
                             "runtime": RuntimeConfig}


def _walk(obj: Any, prefix: str) -> Iterable[tuple[str, Any]]:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _walk(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


def _walk_defaults(cls: type, prefix: str) -> Iterable[tuple[str, Any]]:
    for f in dataclasses.fields(cls):
        if f.name in SECTIONS and cls is Config:
            yield from _walk_defaults(SECTIONS[f.name], f"{f.name}.")
        else:
            yield f"{prefix}{f.name}", f.default


def _field_objects() -> dict[str, dataclasses.Field[Any]]:
    out: dict[str, dataclasses.Field[Any]] = {}
    for f in dataclasses.fields(Config):
        if f.name in SECTIONS:
            for sub in dataclasses.fields(SECTIONS[f.name]):
                out[f"{f.name}.{sub.name}"] = sub
        else:
            out[f.name] = f
    return out


FIELDS = _field_objects()


def _field_meta(key: str) -> Mapping[str, Any]:
    return FIELDS[key].metadata


@functools.cache
def _field_type(key: str) -> Any:
    # Cached: get_type_hints evaluates every annotation of the class (a few hundred microseconds), and a
    # grid's expansion coerces tens of thousands of values.
    section, _, name = key.rpartition(".")
    cls = SECTIONS[section] if section else Config
    return typing.get_type_hints(cls)[name]


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce(key: str, raw: Any) -> Any:
    """Turn a raw value (a string from the command line, or a JSON value) into the field's type."""
    kind = _field_type(key)
    meta = _field_meta(key)
    optional = typing.get_origin(kind) in (typing.Union, getattr(__import__("types"), "UnionType", None)) \
        and type(None) in typing.get_args(kind)
    if optional:
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none", "null")):
            return None
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    what = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]
    if meta.get("batch"):
        what = "a whole number, or a batch size like 32k"
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(raw)
        if kind is int:
            if isinstance(raw, bool):
                raise ValueError(raw)
            if isinstance(raw, int):
                return raw
            if isinstance(raw, float) and raw == int(raw):
                return int(raw)
            if meta.get("batch"):
                return parse_batch(str(raw))
            return int(str(raw).strip())
        if kind is float:
            if isinstance(raw, bool):
                raise ValueError(raw)
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError(raw)
            return value
        if kind is str:
            if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
                raise ValueError(raw)
            text = str(raw)
            if meta.get("path") and text:
                # A run directory keeps its config: a path relative to where it was typed would point
                # elsewhere from any other working directory (evaluate, export, a resumed job).
                return os.path.abspath(os.path.expanduser(text))
            return text
    except (ValueError, TypeError):
        raise UserError(f"{key}={raw!r} is not {what}") from None
    raise AssertionError(kind)


def _validate_fields(obj: Any, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            continue
        key = f"{prefix}{f.name}"
        meta = f.metadata
        if value is None:
            continue
        choices = meta.get("choices")
        if choices is not None and value not in choices:
            if not (meta.get("open_choices") and isinstance(value, str) and ":" in value):
                allowed = ", ".join(repr(c) if c == "" else str(c) for c in choices)
                extra = ", or pkg.module:build" if meta.get("open_choices") else ""
                raise UserError(f"{key}={value!r} is not allowed; allowed: {allowed}{extra}")
        if meta.get("positive") and not value > 0:
            raise UserError(f"{key}={value!r} must be > 0")
        if meta.get("min") is not None and value < meta["min"]:
            raise UserError(f"{key}={value!r} must be >= {meta['min']}")
        if meta.get("max") is not None and value > meta["max"]:
            raise UserError(f"{key}={value!r} must be <= {meta['max']}")


def _validate_cross_fields(cfg: Config) -> None:
    for section in SECTIONS:
        _validate_fields(getattr(cfg, section), f"{section}.")
    group = cfg.bn.group_size
    if cfg.batch_size % group:
        raise UserError(f"batch_size={cfg.batch_size} is not a whole number of BN groups of "
                        f"bn.group_size={group}")
    _validate_group_has_variance(cfg)
    micro = cfg.runtime.micro_batch
    if micro:
        if micro % group:
            raise UserError(f"runtime.micro_batch={micro} is not a whole number of BN groups of "
                            f"bn.group_size={group}")
        if micro < cfg.batch_size and cfg.batch_size % micro:
            raise UserError(f"runtime.micro_batch={micro} does not divide batch_size={cfg.batch_size}")
    if cfg.paper_batch:
        try:
            parse_batch(cfg.paper_batch)
        except ValueError:
            raise UserError(f"paper_batch={cfg.paper_batch!r} is not a batch size like 32k") from None
        if cfg.scale:
            # A run labelled with a paper column must train what that column trains at its scale, or its
            # record would be read into the wrong cell of a table.
            expected = scale_batch(cfg.scale, cfg.paper_batch)
            if cfg.batch_size != expected:
                raise UserError(f"batch_size={format_batch(cfg.batch_size)} does not match paper_batch="
                                f"{cfg.paper_batch} at scale={cfg.scale}; allowed: batch_size="
                                f"{format_batch(expected)}, or leave paper_batch empty for a free run")
    if cfg.method == "conadv" and cfg.attack.bn_mode == "train_moving" and \
            cfg.conadv.executor in ("thread", "stream"):
        raise UserError(f"conadv.executor={cfg.conadv.executor} cannot run attack.bn_mode=train_moving (the "
                        "attack would write running statistics while the update reads them); allowed: "
                        "conadv.executor=sequential or auto")
    _validate_timed_layout(cfg)
    if cfg.conadv.attack_workers and cfg.method != "conadv":
        raise UserError(f"conadv.attack_workers={cfg.conadv.attack_workers} is for method=conadv, not "
                        f"method={cfg.method}")
    if cfg.conadv.attack_workers and cfg.attack.bn_mode == "train_moving":
        raise UserError("conadv.attack_workers cannot run attack.bn_mode=train_moving (the attackers' statistics "
                        "would have to move the trainers' running statistics); allowed: train_frozen, eval")
    if cfg.model.width != 16 and cfg.model.name in ("resnet18", "resnet50"):
        raise UserError(f"model.width={cfg.model.width} has no effect on model.name={cfg.model.name} (its widths "
                        "are fixed); it applies to resnet8/14/20/32")
    if cfg.data_root and cfg.data not in ROOTED_DATA and ":" not in cfg.data:
        raise UserError(f"data_root={cfg.data_root} has no use with data={cfg.data} (embedded); it applies to "
                        f"data={', '.join(ROOTED_DATA)} or pkg.module:build")
    if cfg.data_decoder != "pil" and cfg.data != "imagenet":
        raise UserError(f"data_decoder={cfg.data_decoder} applies to data=imagenet (the image files), not "
                        f"data={cfg.data}; allowed here: data_decoder=pil")
    if cfg.bn.three_way and not cfg.autoaugment:
        raise UserError("bn.three_way=true needs autoaugment=true (its third BN is for augmented images)")
    if cfg.schedule.end_lr > cfg.optim.lr and cfg.optim.lr_rule == "fixed":
        raise UserError(f"schedule.end_lr={cfg.schedule.end_lr} is above the peak optim.lr={cfg.optim.lr}")


def timed_layout(trainers: int, attack_workers: int) -> str:
    """The value of runtime.timed_layout for a layout (0 trainers counts as the one the launcher starts)."""
    return f"{max(trainers, 1)}+{attack_workers}"


def _validate_timed_layout(cfg: Config) -> None:
    pinned = cfg.runtime.timed_layout
    if not pinned:
        return
    trainers, plus, workers = pinned.partition("+")
    if not plus or not trainers.isdigit() or not workers.isdigit() or int(trainers) < 1:
        raise UserError(f"runtime.timed_layout={pinned!r} is not allowed; allowed: TRAINERS+WORKERS with "
                        "TRAINERS >= 1 and WORKERS >= 0 (e.g. 8+0, 64+64), or empty")
    actual = timed_layout(cfg.runtime.trainers, cfg.conadv.attack_workers if cfg.method == "conadv" else 0)
    if actual != f"{int(trainers)}+{int(workers)}":
        raise UserError(f"runtime.timed_layout={pinned} but runtime.trainers={cfg.runtime.trainers} and "
                        f"conadv.attack_workers={cfg.conadv.attack_workers} give {actual}: a timed run measures "
                        "the layout it names; set both to match it")


def _validate_group_has_variance(cfg: Config) -> None:
    """A BN group must hold two values per channel in every layer: torch's batch norm has no variance of one."""
    if cfg.bn.group_size > 1 or cfg.model.name not in (*CIFAR_DEPTHS, *TORCHVISION_LAYERS):
        return  # a user's builder is checked by the split BN when it trains
    try:
        side = smallest_bn_side(network_of_config(cfg.flat()))
    except UserError:
        return  # a stem the network lacks: the model builder names it
    if side == 1:
        raise UserError(f"bn.group_size=1 leaves one value per channel in {cfg.model.name}'s 1x1 feature maps at "
                        f"model.input_size={cfg.model.input_size or 'default'}, which has no variance; allowed: "
                        "bn.group_size >= 2, or a larger model.input_size")


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """`["a.b=1", ...]` -> {"a.b": "1"}; an item without `=` or an unknown key is a UserError."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"override {item!r} is not key=value (e.g. batch_size=32k)")
        _check_key(key)
        out[key] = value
    return out


def _check_key(key: str) -> None:
    if key in FIELDS:
        return
    section = key.split(".")[0]
    if section in SECTIONS:
        allowed = ", ".join(k for k in FIELDS if k.startswith(section + "."))
    else:
        allowed = ", ".join(k for k in FIELDS if "." not in k) + ", " + \
            ", ".join(f"{s}.*" for s in SECTIONS)
    raise UserError(f"unknown config key {key!r}; allowed: {allowed}")


def build_config(values: Mapping[str, Any], *, _explicit: set[str] | None = None) -> Config:
    """Build a Config from dotted keys. Unset keys take the scale preset, then the dataclass default."""
    for key in values:
        _check_key(key)
    typed = {key: _coerce(key, raw) for key, raw in values.items()}
    explicit = set(values) if _explicit is None else _explicit
    scale = typed.get("scale", "")
    if scale and typed.get("paper_batch") and "batch_size" not in typed:
        # A paper column at a scale names its batch size (the launcher's rule), so it need not be repeated.
        try:
            typed["batch_size"] = scale_batch(scale, typed["paper_batch"])
        except (ValueError, KeyError):
            pass  # an unparsable paper_batch or scale is reported by the validation below
    merged = {**preset_values(scale, typed), **typed}
    if merged.get("optim.lr_rule", "fixed") != "fixed":
        clash = sorted(k for k in ("optim.lr", "schedule.warmup_epochs") if k in explicit)
        if clash:
            raise UserError(f"{clash[0]} conflicts with optim.lr_rule={merged['optim.lr_rule']} (which sets "
                            "the peak LR and warmup from batch_size); set optim.lr_rule=fixed to use your own")
    method = merged.get("method", "vanilla")
    if method in METHOD_KEYS:
        for key in sorted(explicit):
            if key.startswith(METHOD_SPECIFIC) and not key.startswith(METHOD_KEYS[method]) and \
                    not (key == "bn.three_way" and METHOD_KEYS[method]):
                users = [m for m, keys in METHOD_KEYS.items() if key.startswith(keys) and keys] or \
                    [m for m, keys in METHOD_KEYS.items() if keys]
                raise UserError(f"{key} has no use with method={method}; it applies to method="
                                f"{' or '.join(users)}")
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    top: dict[str, Any] = {}
    for key, value in merged.items():
        section, _, name = key.rpartition(".")
        (sections[section] if section else top)[name] = value
    return Config(**top, **{name: SECTIONS[name](**kw) for name, kw in sections.items()})


def config_from_overrides(items: Iterable[str]) -> Config:
    """Build a Config from command-line `key=value` items."""
    return build_config(parse_overrides(items))


def config_from_dict(nested: Mapping[str, Any]) -> Config:
    """Rebuild a Config from `Config.to_dict()` (e.g. a run's config.json); strict about unknown keys."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        if key in SECTIONS and isinstance(value, Mapping):
            for sub, sub_value in value.items():
                flat[f"{key}.{sub}"] = sub_value
        else:
            flat[key] = value
    data = str(flat.get("data", "digits"))
    if data not in ROOTED_DATA and ":" not in data:
        # Written before such a data_root was refused (it was never read): the run stays readable.
        flat.pop("data_root", None)
    return build_config(flat, _explicit=set())


def describe_fields() -> list[tuple[str, str, str]]:
    """(key, default, help with allowed values) for every field, in declaration order."""
    rows = []
    for key, f in FIELDS.items():
        meta = f.metadata
        default = f.default
        shown = "none" if default is None else (format_batch(default) if meta.get("batch") and default
                                                  else json.dumps(default) if isinstance(default, str)
                                                  else str(default).lower() if isinstance(default, bool)
                                                  else str(default))
        help_text = meta.get("help", "")
        if meta.get("choices") and "," not in help_text:
            help_text += f" ({', '.join(map(str, meta['choices']))})"
        rows.append((key, shown, help_text))
    return rows
