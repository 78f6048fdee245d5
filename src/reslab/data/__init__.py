"""Datasets, batched augmentation and loaders."""

from reslab.data.cifar import CLASSES as CIFAR10_CLASSES
from reslab.data.cifar import load_cifar10
from reslab.data.loaders import TensorLoader
from reslab.data.paths import data_root
from reslab.data.transforms import Normalize, random_crop_flip

__all__ = [
    "CIFAR10_CLASSES",
    "Normalize",
    "TensorLoader",
    "data_root",
    "load_cifar10",
    "random_crop_flip",
]
