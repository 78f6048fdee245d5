"""Typed run configuration: dataclasses loaded from YAML (composed from bases) and validated.

    uv run python -c "from reslab.config import load_config; print(load_config('cifar10/resnet20'))"

A YAML file may name ``base: <path relative to it>``; the base is loaded first and the file's keys
override it. ``--set key=value`` overrides apply last (values are parsed as YAML, where ``1e-3`` is
a number and ``true``/``false`` are the booleans; :mod:`reslab.strict_yaml`). Each field's type says
what it accepts: a ``Literal`` lists the choices, a :class:`~reslab.typecheck.Range` the bounds, and
floats must be finite; :func:`~reslab.typecheck.build_dataclass` checks them. Every error names the
key, the bad value and what is valid.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from reslab.errors import ConfigError, MissingFileError
from reslab.strict_yaml import parse_yaml
from reslab.typecheck import (
    Count,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Range,
    build_dataclass,
)

__all__ = ["Config", "ConfigError", "config_diff", "config_from_dict", "load_config"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # shipped inside the package


Switch = Literal["auto"] | bool  # true, false, or auto (decided by the device)
Device = Literal["auto", "cpu", "cuda"]


@dataclass
class ModelConfig:
    name: str = "resnet20"  # registered model name (`reslab list`)
    options: dict[str, Any] = field(default_factory=dict)  # create_model options: shortcut, ...


@dataclass
class DataConfig:
    dataset: Literal["cifar10", "imagefolder"] = "cifar10"  # in memory, or class-per-folder JPEGs
    data_dir: str | None = None  # dataset root; default $RESLAB_DATA, else ~/.cache/reslab/data
    # "pixel": per-pixel mean subtracted (the paper); "channel": per-channel mean and std
    normalization: Literal["pixel", "channel"] = "pixel"
    # CIFAR-10
    split: Literal["train", "train45k"] = "train"  # 50k, or the paper's 45k of the 45k/5k split
    eval_split: Literal["test", "val5k"] = "test"  # 10k test set, or the 5k held out of training
    pad: Count = 4  # zero padding of the random crop (pixels per side)
    # image folders (ImageNet)
    train_dir: str = "imagenet/train"  # training image folder, relative to data_dir
    eval_dir: str = "imagenet/val"  # evaluation image folder, relative to data_dir
    eval_limit: Count = 0  # evaluate on a class-spread subset of at most this many images (0: all)
    scale: list[PositiveInt] = field(default_factory=lambda: [256, 480])  # shorter-side range
    crop: PositiveInt = 224  # training and test crop size
    lighting: NonNegativeFloat = 0.1  # std of AlexNet's PCA lighting noise (0: off)
    test_views: Literal["center", "tencrop"] = "tencrop"  # final test: 256 -> 224 crop, or 10-crop
    # hold every k-th image of train_dir out of training and evaluate on those (0: off; a split
    # of the training folder for choices that must not look at eval_dir)
    holdout: Count = 0
    in_memory: Switch = "auto"  # decode the folders once into memory; auto: when they fit...
    memory_budget_mb: PositiveInt = 4096  # ...this budget and every image has one size
    workers: Count = 2  # JPEG decoding processes (when not in memory)
    skip_corrupt: bool = False  # leave undecodable images out (logged) instead of stopping


@dataclass
class OptimConfig:
    lr: PositiveFloat = 0.1  # base learning rate
    momentum: Annotated[float, Range(0, 1, high_open=True)] = 0.9  # paper form v = m*v + lr*g
    weight_decay: NonNegativeFloat = 1e-4  # L2 penalty on all weights
    milestones: list[PositiveInt] = field(default_factory=lambda: [32000, 48000])  # lr drops
    gamma: Annotated[float, Range(0, 1, low_open=True)] = 0.1  # lr factor at each drop
    schedule: Literal["step", "plateau"] = "step"  # drops at milestones, or when eval error stalls
    plateau_patience: Count = 3  # evaluations without improvement before a plateau drop
    plateau_threshold: NonNegativeFloat = 0.1  # improvement (error points) that counts as progress
    warmup_lr: PositiveFloat | None = None  # ResNet-110/1202: this lr until the training error...
    warmup_until_error: Annotated[float, Range(0, 100, low_open=True)] = 80.0  # ...is below this


@dataclass
class TrainConfig:
    iterations: PositiveInt = 64000  # total optimisation steps (schedules count iterations)
    batch_size: PositiveInt = 128  # global batch size
    seed: Annotated[int, Range(0, 2**32 - 1)] = 0  # initialisation, data order and augmentation
    device: Device = "auto"  # "auto" (cuda when present), "cpu" or "cuda"
    # training autocast (evaluation is always fp32); auto: bf16 on CUDA and on CPUs with native
    # bf16 (AVX512-BF16 or AMX), else fp32 (emulated bf16 is slower); a run keeps its choice
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    channels_last: bool = True  # NHWC memory format (faster on CPU and tensor cores)
    # CPU threads: a number, or auto: the cores other processes leave free (re-sized every
    # logging window; a fixed number for bit-for-bit reproducibility on a shared machine)
    threads: Literal["auto"] | PositiveInt = "auto"
    compile: Switch = "auto"  # torch.compile the model; auto: on CUDA only (no gain on CPU)
    # auto: "reduce-overhead" (CUDA graphs) on CUDA, else "default"
    compile_mode: Literal["auto", "default", "reduce-overhead", "max-autotune"] = "auto"
    cuda_graph: Switch = "auto"  # whole CIFAR step as one CUDA graph; auto: one CUDA device
    sync_bn: bool = False  # SyncBatchNorm across processes in distributed training (GPU only)
    init: str | None = None  # start from these weights (run dir, file, `reslab weights` name)
    freeze_stages: Count = 0  # no gradients for the stem (1) and the first stages (2: + layer1)
    freeze_bn: bool = False  # BN normalises with its running statistics and keeps them
    tensorboard: Switch = "auto"  # TensorBoard event files too; auto: when the extra is installed
    log_every: PositiveInt = 100  # iterations per metrics.jsonl line (warm-up and divergence check)
    eval_every: Count = 2000  # iterations between test evaluations (0: at the end only)
    eval_batch_size: PositiveInt = 1000  # evaluation batch size
    checkpoint_every: PositiveInt = 1000  # iterations between checkpoints
    keep_checkpoints: PositiveInt = 2  # periodic checkpoints kept (the final one is kept too)


@dataclass
class RunConfig:
    """What every run's config has: a name, and a plain-dict form."""

    name: str = ""  # run name (defaults to the config's name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Config(RunConfig):
    """A classification run: the network, its data, the optimiser and schedule, and the loop's
    settings (``reslab train CONFIG``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def check(self) -> None:
        """The rules that tie fields together (each field's own range is checked on load)."""
        if self.optim.schedule == "plateau" and not self.train.eval_every:
            raise ConfigError(
                "optim.schedule: 'plateau' needs train.eval_every > 0 (it watches the eval error)"
            )
        d = self.data
        if d.dataset == "cifar10" and d.eval_split == "val5k" and d.split == "train":
            raise ConfigError(
                "data.eval_split: 'val5k' is part of data.split 'train' (the run would be tested on "
                "images it trained on); use data.split=train45k with val5k, or data.eval_split=test"
            )
        if len(d.scale) != 2 or not d.crop <= d.scale[0] <= d.scale[1]:
            raise ConfigError(
                f"data.scale: {d.scale} must be [min, max] with data.crop <= min <= max"
            )
        if sorted(set(self.optim.milestones)) != self.optim.milestones:
            raise ConfigError(f"optim.milestones: {self.optim.milestones} must be increasing")
        from reslab.errors import ModelError
        from reslab.models import get_model_spec

        try:
            spec = get_model_spec(self.model.name)
        except ModelError as err:
            raise ConfigError(f"model.name: {err}") from None
        bad = sorted(set(self.model.options) - set(spec.options))
        if bad:
            raise ConfigError(
                f"model.options: {bad[0]!r} is not an option of {self.model.name}; "
                f"valid: {', '.join(spec.options)}"
            )


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
    raise MissingFileError(
        f"no config {str(name_or_path)!r} (neither a YAML file nor a name under {CONFIG_DIR}); "
        f"available: {', '.join(available)}"
    )


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        nested = isinstance(v, dict) and isinstance(out.get(k), dict) and k != "options"
        out[k] = _merge(out[k], v) if nested else v
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise ConfigError(f"config {path} includes itself through 'base'")
    if not path.is_file():
        raise MissingFileError(f"config {path} does not exist (named by 'base' in {seen[-1]})")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file (a config is YAML)") from None
    data = parse_yaml(text, str(path)) or {}
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
    return key.strip().split("."), parse_yaml(raw, f"--set {item!r}")


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


def load_config(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load, compose, override and validate a config."""
    return build_dataclass(Config, read_config_data(name_or_path, overrides))


def config_from_dict(data: dict[str, Any]) -> Config:
    """A validated config from a plain dict (a checkpoint's or a run directory's)."""
    return build_dataclass(Config, data)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"section.key": value}`` of a nested dict (model options stay one value)."""
    out = {}
    for k, v in data.items():
        if isinstance(v, dict) and k != "options":
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# Keys that say where a run executes or what it writes besides the run, not what it computes: a
# run may resume with other values.
MACHINE_KEYS = (
    "data.data_dir",
    "data.workers",
    "data.in_memory",
    "data.memory_budget_mb",
    "train.tensorboard",
    "train.keep_checkpoints",
    "train.threads",
)


def config_diff(old: Any, new: Any) -> list[str]:
    """``"key: old -> new"`` for every key (but :data:`MACHINE_KEYS`) where two configs differ."""
    a, b = flatten(old.to_dict()), flatten(new.to_dict())
    return [
        f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
        for k in sorted(a.keys() | b.keys())
        if k not in MACHINE_KEYS and a.get(k) != b.get(k)
    ]
