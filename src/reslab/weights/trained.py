"""A trained network as reslab saved it, with its input normalisation and class names: what
prediction, evaluation and export load, in one call.

    uv run python -c "from reslab.weights.trained import load_trained; t = load_trained('resnet20.cifar10'); print(t.path, t.classes[:3])"

:func:`load_trained` takes a run directory, a ``model.safetensors`` or a weights name
(``resnet56.cifar10``) and returns the network (rebuilt from the file's recorded layout), the
:class:`~reslab.data.transforms.Normalize` that feeds it, its class names and the file's metadata.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from reslab import hub
from reslab.data.transforms import NORMALIZATIONS, Normalize
from reslab.errors import WeightsError
from reslab.models.factory import load_weights
from reslab.weights.files import meta_value


@dataclass
class Trained:
    """A trained network and what it needs to be used: ``normalize`` maps uint8 images to its
    input; ``classes`` names its outputs; ``meta`` is its file's metadata, ``path`` the file."""

    model: nn.Module
    normalize: Normalize
    classes: list[str]
    meta: dict[str, str]
    path: Path


def load_trained(source: str | Path) -> Trained:
    """The network of a run directory, a reslab ``model.safetensors`` or a weights name, with its
    input normalisation and class names (see :class:`Trained`); anything else is a
    :class:`~reslab.errors.WeightsError` or :class:`~reslab.errors.MissingFileError` naming it."""
    path = hub.weights_path(source)
    model, meta = load_weights(path)
    outputs = (
        model.fc.out_features
        if hasattr(model, "fc")
        else len(meta_value(meta, "classes", path, []))
    )
    return Trained(
        model, normalizer_from_metadata(meta, path), class_names(meta, outputs, path), meta, path
    )


def normalizer_from_metadata(meta: dict[str, str], path: str | Path):
    """The input normalisation stored with the weights (a :class:`Normalize` module)."""
    if "normalize_mean" not in meta:
        raise WeightsError(
            f"{path} does not store its input normalisation (no 'normalize_mean' metadata); "
            "reslab's own runs always do: train it with `reslab train`"
        )
    mean = meta_value(meta, "normalize_mean", path)
    std = meta_value(meta, "normalize_std", path)
    shape = meta_value(meta, "normalize_shape", path)
    mode = meta.get("normalization", "pixel")
    channels = shape[1] if shape is not None and len(shape) == 4 else None
    if (
        std is None
        or channels is None
        or any(n < 1 for n in shape)
        or math.prod(shape) != len(mean)
        or len(std) not in (1, channels)
        or mode not in NORMALIZATIONS
    ):
        raise WeightsError(
            f"{path}: the input normalisation in its metadata does not fit together "
            f"(normalize_mean of {len(mean)} values, normalize_shape {shape}, normalize_std "
            f"{std if std is None else f'of {len(std)} values'}, normalization {mode!r}); the "
            "file's metadata is damaged"
        )
    return Normalize(torch.tensor(mean).view(shape), torch.tensor(std).view(1, -1, 1, 1), mode)


def class_names(meta: dict[str, str], outputs: int, path: str | Path) -> list[str]:
    """The class names stored with the weights, one per output of the classifier."""
    names = meta_value(meta, "classes", path, [])
    if len(names) != outputs:
        raise WeightsError(
            f"{path}: metadata 'classes' names {len(names)} classes but the model has {outputs} "
            "outputs; the file's metadata does not belong to these weights"
        )
    return names
