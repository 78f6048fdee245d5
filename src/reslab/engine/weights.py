"""Weights files: the one checked saver and loader that training, evaluation, analysis and
detection share.

    uv run reslab eval runs/demo

``model.safetensors`` holds a plain state dict and metadata saying how to rebuild the network
(``model`` and ``model_options``: every option, defaults included; ``architecture``: the layout
they resolve to) and how to feed it (input normalisation, class names, input size). Loading
rebuilds that network; asked for another one, it refuses with a message naming both layouts, even
where the tensor shapes would agree (a v1 and a v1.5 bottleneck, option-A padding after or on
both sides). Plain state-dict files (``torch.save(model.state_dict())``, read without running code)
load into the network the caller names. Every failure names the file and what to do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reslab.engine.checkpoint import atomic_write, load_checkpoint
from reslab.errors import MissingFileError, WeightsError
from reslab.models import create_model, get_model_spec

# what a layout is made of (how the weights were initialised is not part of it)
LAYOUT_KEYS = (
    "family", "depth", "residual", "preact", "block", "shortcut", "stride_in", "shortcut_pad",
    "num_classes", "in_chans",
)  # fmt: skip


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


def model_options(name: str, model: nn.Module) -> dict[str, Any]:
    """The options that rebuild ``model`` with ``create_model(name, **options)``, every one that
    applies to it stated, defaults included."""
    arch = model.arch
    return {k: arch[k] for k in get_model_spec(name).options if arch.get(k) is not None}


def save_weights(model: nn.Module, path: str | Path, name: str, **meta: Any) -> Path:
    """``model``'s state dict as safetensors, atomically, with its complete architecture and the
    ``meta`` items (strings stay strings, anything else is stored as JSON)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "model": name,
        "model_options": json.dumps(model_options(name, model)),
        "architecture": json.dumps(model.arch),
        **{k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()},
    }
    return atomic_write(path, save(state, metadata=metadata))


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


def meta_value(meta: dict[str, str], key: str, path: str | Path, default: Any = None) -> Any:
    """The JSON value stored under ``key`` (``default`` when absent), or an error naming both."""
    if key not in meta:
        return default
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as err:
        raise WeightsError(
            f"{path}: metadata {key!r} is not valid JSON ({err}: {meta[key][:60]!r})"
        ) from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or of a plain ``torch.save``'d state dict (also inside a
    checkpoint's ``model`` or a ``state_dict`` entry, ``module.`` prefixes removed)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise WeightsError(f"{path} is not a readable safetensors file ({err})") from None
    state = load_checkpoint(path)
    state = state.get("model", state.get("state_dict", state))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} holds no state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path, name: str) -> None:
    """``model.load_state_dict(state, strict=True)``, or an error listing what does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(v.shape)})"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{what} {', '.join(keys[:3])}{f' (+{len(keys) - 3} more)' if len(keys) > 3 else ''}"
        for what, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("wrong shapes:", shapes),
        )
        if keys
    ]
    if problems:
        raise WeightsError(f"{source} does not hold {name} weights: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)


def _layout(arch: dict[str, Any]) -> str:
    return ", ".join(f"{k}={arch.get(k)}" for k in LAYOUT_KEYS if arch.get(k) is not None)


def load_weights(
    path: str | Path, model_name: str | None = None, **options: Any
) -> tuple[nn.Module, dict[str, str]]:
    """The network stored in a reslab ``model.safetensors`` (or a run directory) and its metadata.

    With ``model_name`` (and ``options``) the caller asks for a network: a file holding another
    layout is refused, naming both."""
    path = find_weights(path)
    meta = read_metadata(path)
    stored = meta.get("model")
    if not stored:
        raise WeightsError(
            f"{path} does not say which model it holds (no 'model' metadata; it was not written by "
            "reslab); load it as a plain state dict with load_model(name, path)"
        )
    model = create_model(stored, **meta_value(meta, "model_options", path, {}))
    if model_name is not None:
        wanted = create_model(model_name, **options).arch
        if any(wanted.get(k) != model.arch.get(k) for k in LAYOUT_KEYS):
            raise WeightsError(
                f"{path} holds {stored} ({_layout(model.arch)}), not the {model_name} asked for "
                f"({_layout(wanted)}); load it without naming a model, or use matching weights"
            )
    load_state(model, read_state_dict(path), path, stored)
    return model, meta


def load_model(
    name: str, weights: str | Path | None = None, seed: int = 0, **options: Any
) -> nn.Module:
    """``name`` He-initialised (seeded) when ``weights`` is None; otherwise with the weights of a
    reslab ``model.safetensors`` (or a run directory holding one; its layout must be ``name``'s)
    or of a plain state-dict file."""
    torch.manual_seed(seed)
    if weights is None:
        return create_model(name, **options)
    path = Path(weights)
    if path.is_dir() or path.suffix == ".safetensors":
        path = find_weights(path)
        if "model" in read_metadata(path):
            return load_weights(path, name, **options)[0]
    model = create_model(name, **options)
    load_state(model, read_state_dict(path), path, name)
    return model


def normalizer_from_metadata(meta: dict[str, str], path: str | Path):
    """The input normalisation stored with the weights (a :class:`Normalize` module)."""
    from reslab.data.transforms import Normalize

    if "normalize_mean" not in meta:
        raise WeightsError(
            f"{path} does not store its input normalisation (no 'normalize_mean' metadata); "
            "reslab's own runs always do: train it with `reslab train`"
        )
    shape = meta_value(meta, "normalize_shape", path)
    mean = torch.tensor(meta_value(meta, "normalize_mean", path)).view(shape)
    std = torch.tensor(meta_value(meta, "normalize_std", path)).view(1, -1, 1, 1)
    return Normalize(mean, std, meta.get("normalization", "pixel"))


def class_names(meta: dict[str, str], outputs: int, path: str | Path) -> list[str]:
    """The class names stored with the weights, one per output of the classifier."""
    names = meta_value(meta, "classes", path, [])
    if len(names) != outputs:
        raise WeightsError(
            f"{path}: metadata 'classes' names {len(names)} classes but the model has {outputs} "
            "outputs; the file's metadata does not belong to these weights"
        )
    return names


def initialise_from(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, arch: dict[str, Any] | None
) -> tuple[list[str], list[str]]:
    """Fine-tuning's start: every tensor of ``state`` that ``model`` has with the same shape is
    copied in; the classifier is left newly initialised when its number of classes differs.
    Anything else that does not fit (another family or layout) is an error naming it. Returns
    (loaded names, newly initialised names)."""
    if arch is not None:  # a reslab file states its layout: compare all but the classes
        keys = [k for k in LAYOUT_KEYS if k != "num_classes"]
        if any(arch.get(k) != model.arch.get(k) for k in keys):
            raise WeightsError(
                f"{source} holds another network ({_layout({k: arch.get(k) for k in keys})}) "
                f"than the one to train ({_layout({k: model.arch.get(k) for k in keys})})"
            )
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    new = [k for k in own if k not in fits]
    misfits = [k for k in new if not k.startswith("fc.")]
    if misfits:
        raise WeightsError(
            f"{source} does not fit {type(model).__name__} {model.arch.get('family')}-"
            f"{model.arch.get('depth')}: {len(misfits)} tensors besides the classifier are missing "
            f"or shaped otherwise ({', '.join(misfits[:3])}{', ...' if len(misfits) > 3 else ''})"
        )
    model.load_state_dict(fits, strict=False)
    return sorted(fits), new
