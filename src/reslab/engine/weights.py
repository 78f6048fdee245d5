"""Final weights: ``model.safetensors`` (a plain state dict plus metadata) back into a model.

uv run reslab eval runs/demo
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from reslab.models import create_model


def find_weights(path: str | Path) -> Path:
    """``path`` itself, or the ``model.safetensors`` inside a run directory."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(
            f"no weights at {path} (give a run directory or a .safetensors file)"
        )
    return path


def load_weights(
    path: str | Path, model_name: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """The model stored in a safetensors file (built from its metadata) and that metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = find_weights(path)
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    name = model_name or meta.get("model")
    if not name:
        raise ValueError(f"{path} does not say which model it holds; pass the model name")
    model = create_model(name, **json.loads(meta.get("model_options", "{}")))
    model.load_state_dict(load_file(str(path)), strict=True)
    return model, meta


def normalizer_from_metadata(meta: dict[str, str]):
    """The input normalisation stored with the weights (None for files that predate it)."""
    import torch

    from reslab.data.transforms import Normalize

    if "normalize_mean" not in meta:
        return None
    shape = json.loads(meta["normalize_shape"])
    mean = torch.tensor(json.loads(meta["normalize_mean"])).view(shape)
    std = torch.tensor(json.loads(meta["normalize_std"]))
    std = std.view(1, -1, 1, 1)
    return Normalize(mean, std, meta.get("normalization", "pixel"))
