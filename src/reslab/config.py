"""Typed run configuration: dataclasses loaded from YAML (composed from bases) and validated.

    uv run python -c "from reslab.config import load_config; print(load_config('cifar10/resnet20'))"

A YAML file may name ``base: <path relative to it>``; the base is loaded first and the file's keys
override it. ``--set key=value`` overrides apply last (values are parsed as YAML). Every error names
the key, the bad value and the valid choices.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


@dataclass
class ModelConfig:
    name: str = "resnet20"  # registered model name (`reslab list`)
    options: dict[str, Any] = field(
        default_factory=dict
    )  # create_model options: shortcut, stride_in, ...


@dataclass
class DataConfig:
    dataset: str = "cifar10"  # "cifar10" (in memory) or "imagefolder" (class-per-folder JPEGs)
    data_dir: str | None = None  # dataset root; default $RESLAB_DATA, else ~/.cache/reslab/data
    normalization: str = "pixel"  # "pixel": per-pixel mean subtracted (paper); "channel": mean/std
    # CIFAR-10
    split: str = "train"  # training split: "train" (50k) or "train45k" (the paper's 45k/5k split)
    eval_split: str = "test"  # evaluation split: "test" (10k) or "val5k"
    pad: int = 4  # zero padding of the random crop (pixels per side)
    # image folders (ImageNet)
    train_dir: str = "imagenet/train"  # training image folder, relative to data_dir
    eval_dir: str = "imagenet/val"  # evaluation image folder, relative to data_dir
    eval_limit: int = 0  # evaluate on a class-spread subset of at most this many images (0: all)
    scale: list[int] = field(default_factory=lambda: [256, 480])  # shorter-side range (scale aug.)
    crop: int = 224  # training and test crop size
    lighting: float = 0.1  # std of AlexNet's PCA lighting noise (0: off)
    test_views: str = "tencrop"  # final test: "center" (256 -> 224 crop) or "tencrop"
    workers: int = 2  # JPEG decoding processes


@dataclass
class OptimConfig:
    lr: float = 0.1  # base learning rate
    momentum: float = 0.9  # SGD momentum, paper form v = m*v + lr*g (no dampening)
    weight_decay: float = 1e-4  # L2 penalty on all weights
    milestones: list[int] = field(default_factory=lambda: [32000, 48000])  # iterations of lr drops
    gamma: float = 0.1  # lr factor at each milestone (or plateau)
    schedule: str = (
        "step"  # "step" (drops at milestones) or "plateau" (drops when eval error stalls)
    )
    plateau_patience: int = 3  # evaluations without improvement before a plateau drop
    plateau_threshold: float = 0.1  # improvement (error points) that counts as progress
    warmup_lr: float | None = None  # ResNet-110/1202: this lr until the training error falls...
    warmup_until_error: float = 80.0  # ...below this running-average percentage, then the base lr


@dataclass
class TrainConfig:
    iterations: int = 64000  # total optimisation steps (schedules count iterations, not epochs)
    batch_size: int = 128  # global batch size
    seed: int = 0  # seeds initialisation, data order and augmentation
    device: str = "auto"  # "auto" (cuda when present), "cpu" or "cuda"
    precision: str = "bf16"  # training autocast: "bf16" or "fp32" (evaluation is always fp32)
    channels_last: bool = True  # NHWC memory format (faster on CPU and tensor cores)
    compile: bool | str = "auto"  # torch.compile the model; "auto": on CUDA only (no gain on CPU)
    compile_mode: str = "auto"  # "auto": "reduce-overhead" (CUDA graphs) on CUDA, else "default"
    # replay each whole CIFAR step from one CUDA graph; "auto": on one CUDA device unless compile
    # is set explicitly (then compile decides)
    cuda_graph: bool | str = "auto"
    sync_bn: bool = False  # SyncBatchNorm across processes in distributed training (GPU only)
    tensorboard: bool = True  # also write TensorBoard event files into the run directory
    log_every: int = 100  # iterations per metrics.jsonl line (and warm-up check)
    eval_every: int = 2000  # iterations between test evaluations (0: at the end only)
    eval_batch_size: int = 1000  # evaluation batch size
    checkpoint_every: int = 1000  # iterations between checkpoints
    keep_checkpoints: int = 2  # how many periodic checkpoints to keep (the final one is kept too)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = ""  # run name (defaults to the config's name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CHOICES: dict[str, tuple[Any, ...]] = {
    "data.dataset": ("cifar10", "imagefolder"),
    "data.test_views": ("center", "tencrop"),
    "optim.schedule": ("step", "plateau"),
    "data.split": ("train", "train45k"),
    "data.eval_split": ("test", "val5k"),
    "data.normalization": ("pixel", "channel"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.precision": ("bf16", "fp32"),
    "train.compile_mode": ("auto", "default", "reduce-overhead", "max-autotune"),
}
POSITIVE = {
    "optim.lr",
    "train.iterations",
    "train.batch_size",
    "train.log_every",
    "train.eval_batch_size",
    "train.checkpoint_every",
    "train.keep_checkpoints",
}


class ConfigError(ValueError):
    """A bad config: the message names the key, the value and the valid choices."""


def _check_type(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        for option in typing.get_args(tp):
            if option is type(None) and value is None:
                return None
        for option in typing.get_args(tp):
            if option is not type(None):
                try:
                    return _check_type(key, value, option)
                except ConfigError:
                    pass
        raise ConfigError(f"{key}: {value!r} is not a valid {tp}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: {value!r} is not a list")
        (item,) = typing.get_args(tp)
        return [_check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: {value!r} is not a mapping")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is Any or (
        isinstance(tp, type)
        and isinstance(value, tp)
        and not (tp is int and isinstance(value, bool))
    ):
        return value
    raise ConfigError(f"{key}: {value!r} is not a valid {getattr(tp, '__name__', tp)}")


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        where = f"{prefix}{unknown[0]}"
        raise ConfigError(
            f"unknown config key {where!r}; valid keys under '{prefix or '.'}': {', '.join(names)}"
        )
    kwargs = {}
    for name, value in values.items():
        key, tp = f"{prefix}{name}", hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{key}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}"
                )
            kwargs[name] = _build(tp, value, f"{key}.")
        else:
            kwargs[name] = _check_type(key, value, tp)
    return cls(**kwargs)


def flatten_sections(cfg: Any) -> dict[str, Any]:
    """``{"section.key": value}`` over the dataclass sections of a config."""
    return {
        f"{f.name}.{k}": v
        for f in dataclasses.fields(cfg)
        if dataclasses.is_dataclass(getattr(cfg, f.name))
        for k, v in dataclasses.asdict(getattr(cfg, f.name)).items()
    }


def check_fields(
    flat: dict[str, Any],
    choices: dict[str, tuple[Any, ...]],
    positive: Iterable[str] = (),
    nonnegative: Iterable[str] = (),
) -> None:
    """Raise :class:`ConfigError` naming the first key whose value is not among its choices, not
    > 0 (``positive``) or not >= 0 (``nonnegative``)."""
    for key, valid in choices.items():
        if flat[key] not in valid:
            raise ConfigError(
                f"{key}: {flat[key]!r} is invalid; valid choices: {', '.join(map(str, valid))}"
            )
    for key in positive:
        if flat[key] <= 0:
            raise ConfigError(f"{key}: {flat[key]!r} must be > 0")
    for key in nonnegative:
        if flat[key] < 0:
            raise ConfigError(f"{key}: {flat[key]!r} must be >= 0")


NONNEGATIVE = (
    "optim.momentum",
    "optim.weight_decay",
    "train.eval_every",
    "data.pad",
    "data.lighting",
    "data.eval_limit",
    "data.workers",
    "optim.plateau_patience",
)


def validate(cfg: Config) -> Config:
    """Check choices and ranges; raise :class:`ConfigError` naming the key."""
    check_fields(flatten_sections(cfg), CHOICES, POSITIVE, NONNEGATIVE)
    for key in ("compile", "cuda_graph"):
        value = getattr(cfg.train, key)
        if isinstance(value, str) and value != "auto":
            raise ConfigError(
                f"train.{key}: {value!r} is invalid; valid choices: auto, true, false"
            )
    if cfg.optim.schedule == "plateau" and not cfg.train.eval_every:
        raise ConfigError(
            "optim.schedule: 'plateau' needs train.eval_every > 0 (it watches the eval error)"
        )
    if len(cfg.data.scale) != 2 or not cfg.data.crop <= cfg.data.scale[0] <= cfg.data.scale[1]:
        raise ConfigError(
            f"data.scale: {cfg.data.scale} must be [min, max] with data.crop <= min <= max"
        )
    if sorted(cfg.optim.milestones) != cfg.optim.milestones:
        raise ConfigError(f"optim.milestones: {cfg.optim.milestones} must be increasing")
    from reslab.models import get_model_spec

    try:
        spec = get_model_spec(cfg.model.name)
    except ValueError as err:
        raise ConfigError(f"model.name: {err}") from None
    bad = sorted(set(cfg.model.options) - set(spec.options))
    if bad:
        raise ConfigError(
            f"model.options: {bad[0]!r} is not an option of {cfg.model.name}; valid: {', '.join(spec.options)}"
        )
    return cfg


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A config file: a path, or a name such as ``cifar10/resnet20`` under ``configs/``."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    available = sorted(
        str(p.relative_to(CONFIG_DIR).with_suffix(""))
        for p in CONFIG_DIR.rglob("*.yaml")
        if p.parent.name != "base"
    )
    raise FileNotFoundError(
        f"no config {str(name_or_path)!r} (neither a YAML file nor a name under {CONFIG_DIR}); available: {', '.join(available)}"
    )


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            _merge(out[k], v)
            if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "options"
            else v
        )
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise ConfigError(f"config {path} includes itself through 'base'")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    base = data.pop("base", None)
    if base is None:
        return data
    return _merge(_read_yaml((path.parent / base).resolve(), (*seen, path)), data)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"optim.lr=0.05"`` -> (["optim", "lr"], 0.05); values are parsed as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.iterations=400")
    return key.strip().split("."), yaml.safe_load(raw)


def read_config_data(
    name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> dict[str, Any]:
    """A config file composed through ``base:`` with ``--set`` overrides applied, as a plain dict
    whose ``name`` defaults to the config's name."""
    path = resolve_config_path(name_or_path)
    data = _read_yaml(path.resolve())
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {k!r} is not a section")
        node[keys[-1]] = value
    resolved = path.resolve()
    default_name = (
        str(resolved.relative_to(CONFIG_DIR).with_suffix(""))
        if resolved.is_relative_to(CONFIG_DIR)
        else path.stem
    )
    data.setdefault("name", default_name)
    return data


def build_dataclass(cls: type, data: dict[str, Any]) -> Any:
    """``cls`` (a nested dataclass) from ``data``, type-checked; unknown keys are errors."""
    return _build(cls, data)


def load_config(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load, compose, override and validate a config."""
    return validate(_build(Config, read_config_data(name_or_path, overrides)))


def config_from_dict(data: dict[str, Any]) -> Config:
    """A validated config from a plain dict (a checkpoint's or a run directory's)."""
    return validate(_build(Config, data))
