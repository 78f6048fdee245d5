"""Detection run configs: the detector, its data, optimiser and loop, typed and checked like a
classification config (``reslab detect train CONFIG``).

    uv run python -c "from reslab.detection.config import load_det_config; print(load_det_config('detection/coco128_fpn_resnet50').model)"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from reslab.config import Device, RunConfig, read_config_data
from reslab.errors import ConfigError
from reslab.typecheck import (
    Count,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Range,
    build_dataclass,
)


@dataclass
class DetModelConfig:
    backbone: str = "resnet50"  # any reslab ImageNet-family model
    design: Literal["c4", "fpn"] = "fpn"  # "c4" (the paper) or "fpn"
    weights: str | None = None  # ImageNet weights of the backbone (reslab or torchvision layout)
    frozen_stages: Count = 1  # stem (+ stages) without gradients
    norm: Literal["auto", "frozen", "batch"] = "auto"  # auto: frozen with weights, else batch
    min_size: list[PositiveInt] = field(default_factory=lambda: [800])  # several: multi-scale
    max_size: PositiveInt = 1333
    test_size: PositiveInt = 800


@dataclass
class DetDataConfig:
    format: Literal["coco", "voc"] = "coco"  # images + instances JSON, or PASCAL VOC XML
    data_dir: str | None = None  # root the paths below are relative to (default: data root)
    train_images: str = "coco128/train2017"
    train_annotations: str = "coco128/annotations/instances_train2017.json"
    val_images: str = "coco128/train2017"
    val_annotations: str = "coco128/annotations/instances_train2017.json"
    voc_root: str = "VOCdevkit/VOC2007"
    train_split: str = "trainval"
    val_split: str = "test"
    workers: Count = 2
    val_limit: Count = 0  # evaluate on the first N validation images (0: all)


@dataclass
class DetOptimConfig:
    lr: PositiveFloat = 0.02  # for batch 16 (scaled linearly with train.batch_size)
    momentum: Annotated[float, Range(0, 1, high_open=True)] = 0.9
    weight_decay: NonNegativeFloat = 1.0e-4
    milestones: list[PositiveInt] = field(default_factory=lambda: [60000, 80000])
    gamma: Annotated[float, Range(0, 1, low_open=True)] = 0.1
    warmup_iterations: Count = 500  # linear warm-up from lr/1000
    clip_grad_norm: NonNegativeFloat = 0.0  # clip the gradient's global norm to this (0: off)


@dataclass
class DetTrainConfig:
    iterations: PositiveInt = 90000
    batch_size: PositiveInt = 2
    seed: Annotated[int, Range(0, 2**32 - 1)] = 0
    device: Device = "auto"
    log_every: PositiveInt = 20
    eval_every: Count = 0  # 0: at the end only
    checkpoint_every: PositiveInt = 500
    keep_checkpoints: PositiveInt = 2


@dataclass
class DetConfig(RunConfig):
    model: DetModelConfig = field(default_factory=DetModelConfig)
    data: DetDataConfig = field(default_factory=DetDataConfig)
    optim: DetOptimConfig = field(default_factory=DetOptimConfig)
    train: DetTrainConfig = field(default_factory=DetTrainConfig)

    def check(self) -> None:
        if not self.model.min_size:
            raise ConfigError("model.min_size: give at least one shorter-side size")


def load_det_config(
    name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> DetConfig:
    return build_dataclass(DetConfig, read_config_data(name_or_path, overrides))
