"""Detection transfer (the paper's Sec. 4.3): torchvision's Faster R-CNN over reslab ResNets."""

from reslab.detection.backbones import build_detector, freeze_batchnorm
from reslab.detection.data import AnnotationError, CocoDetection, VOCDetection, collate
from reslab.detection.evaluate import coco_map, voc07_map

__all__ = [
    "AnnotationError",
    "CocoDetection",
    "VOCDetection",
    "build_detector",
    "coco_map",
    "collate",
    "freeze_batchnorm",
    "voc07_map",
]
