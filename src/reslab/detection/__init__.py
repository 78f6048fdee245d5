"""Detection transfer (the paper's Sec. 4.3): torchvision's Faster R-CNN over reslab ResNets.

The names below load on first use, so that importing :mod:`reslab.detection.cli` (every ``reslab``
command builds its parser) does not import torchvision's detection models (seconds)."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "build_detector": "backbones",
    "freeze_batchnorm": "backbones",
    "AnnotationError": "data",
    "CocoDetection": "data",
    "VOCDetection": "data",
    "collate": "data",
    "coco_map": "evaluate",
    "voc07_map": "evaluate",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'reslab.detection' has no attribute {name!r}")
    return getattr(importlib.import_module(f"reslab.detection.{_WHERE[name]}"), name)
