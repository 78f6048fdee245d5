"""Weights files and their metadata: reslab's ``model.safetensors``, plain state dicts and
checkpoints, read without running code from them.

    uv run python -c "from reslab.weights.files import read_metadata; print(read_metadata('results/table6/resnet20-seed0/model.safetensors')['model'])"

``model.safetensors`` holds a plain state dict and metadata saying how to rebuild the network
(``model`` and ``model_options``: every option, defaults included; ``architecture``: the layout
they resolve to) and how to feed it (input normalisation, class names, input size). Plain
state-dict files (``torch.save(model.state_dict())``) and reslab checkpoints are read with
``weights_only=True``. Every failure names the file and what to do.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reslab.errors import CheckpointError, MissingFileError, WeightsError

STATE_DICT_SUFFIXES = (".pt", ".pth", ".th", ".bin", ".ckpt")  # torch.save'd files


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: tensors and plain data only, never code."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} does not exist")
    if not (zipfile.is_zipfile(path) or _starts_like_a_pickle(path)):  # else: damaged, or junk
        raise CheckpointError(
            f"cannot read checkpoint {path} (truncated or corrupt: not the zip archive that "
            "torch.save writes, nor a pickle)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {path}: it holds objects other than tensors and plain data, and "
            f"loading it would run code from the file ({str(err).splitlines()[0]}). Only load "
            "checkpoints you trust; reslab writes plain-data checkpoints."
        ) from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as err:
        raise CheckpointError(
            f"cannot read checkpoint {path} (truncated or corrupt: {str(err).splitlines()[0]})"
        ) from None


def _starts_like_a_pickle(path: Path) -> bool:
    """Whether ``path`` begins with a pickle's protocol opcode (torch's legacy format does too)."""
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def find_weights(path: str | Path) -> Path:
    """``path`` itself, or the ``model.safetensors`` inside a run directory."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise MissingFileError(
            f"no weights at {path} (give a run directory or a .safetensors file)"
        )
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a safetensors file; :class:`WeightsError` for anything else."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise WeightsError(
            f"{path} is not a readable safetensors file ({err}); it is truncated or not a "
            "model.safetensors written by reslab"
        ) from None


# what each metadata value must be: (JSON type, item type for lists, words for the message)
META_TYPES: dict[str, tuple[type, type | tuple[type, ...] | None, str]] = {
    "model_options": (dict, None, "an object of options"),
    "architecture": (dict, None, "an object of layout keys"),
    "classes": (list, str, "a list of class names"),
    "normalize_mean": (list, (int, float), "a list of numbers"),
    "normalize_std": (list, (int, float), "a list of numbers"),
    "normalize_shape": (list, int, "a list of integers"),
    "input_size": (list, int, "a list of integers"),
    "config": (dict, None, "an object (the run's config)"),
}


def meta_value(meta: dict[str, str], key: str, path: str | Path, default: Any = None) -> Any:
    """The JSON value stored under ``key`` (``default`` when absent), or an error naming the file
    and the key: not JSON, or not the JSON type ``key`` holds (:data:`META_TYPES`)."""
    if key not in meta:
        return default
    try:
        value = json.loads(meta[key])
    except json.JSONDecodeError as err:
        raise WeightsError(
            f"{path}: metadata {key!r} is not valid JSON ({err}: {meta[key][:60]!r})"
        ) from None
    kind, item, words = META_TYPES.get(key, (object, None, ""))
    if not isinstance(value, kind) or (
        item is not None and not all(isinstance(v, item) and not isinstance(v, bool) for v in value)
    ):
        raise WeightsError(
            f"{path}: metadata {key!r} is {meta[key][:60]!r}, not {words}; the file's metadata "
            "is damaged (use the file as reslab wrote it, or train it again)"
        )
    return value


@dataclass
class Tensors:
    """What a weights file holds: its tensors (``module.`` prefixes removed), the layout it
    records (a reslab ``.safetensors``'s ``architecture``; None otherwise), the model it names
    (a reslab file's ``model`` and ``model_options``, a reslab checkpoint's config; None for a
    plain state dict) and its metadata (``.safetensors``; empty otherwise)."""

    state: dict[str, torch.Tensor]
    arch: dict[str, Any] | None = None
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)


def read_tensors(path: str | Path) -> Tensors:
    """The tensors of a safetensors file or of a ``torch.save``'d state dict (also inside a
    checkpoint's ``model`` or a ``state_dict`` entry), with what the file says of its network."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        meta = read_metadata(path)
        arch = meta_value(meta, "architecture", path)
        options = meta_value(meta, "model_options", path, {})
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise WeightsError(f"{path} is not a readable safetensors file ({err})") from None
        return Tensors(_without_module_prefix(state), arch, meta.get("model"), options, meta)
    loaded = load_checkpoint(path)
    state = loaded
    if isinstance(loaded, dict):
        state = loaded.get("model", loaded.get("state_dict", loaded))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} holds no state dict (a mapping of names to tensors)")
    model, options = _checkpoint_model(loaded)
    return Tensors(_without_module_prefix(state), None, model, options)


def _without_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DataParallel's and DistributedDataParallel's ``module.`` prefix removed."""
    return {k.removeprefix("module."): v for k, v in state.items()}


def _checkpoint_model(checkpoint: Any) -> tuple[str | None, dict[str, Any]]:
    """The network a reslab training checkpoint's config names (its classifier's size is the
    data's and not recorded there): (model name, options), or (None, {}) for anything else."""
    cfg = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    model = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        return None, {}
    options = model.get("options") or {}
    return model["name"], options if isinstance(options, dict) else {}


def is_weights_name(text: str) -> bool:
    """``resnet50.imagenet`` or a tag (``cifar10``): no folder, no weights-file suffix."""
    return (
        "/" not in text
        and "\\" not in text
        and Path(text).suffix not in (".safetensors", *STATE_DICT_SUFFIXES)
    )


def meta_int(meta: dict[str, str], key: str, path: str | Path) -> int:
    """A positive integer stored as text (``resize``, ``crop``), or an error naming both."""
    text = meta.get(key)
    if text is None or not text.isdigit() or int(text) < 1:
        raise WeightsError(
            f"{path}: metadata {key!r} is {text!r}, not a positive integer; the file's metadata "
            "is damaged (image-folder runs record it)"
        )
    return int(text)
