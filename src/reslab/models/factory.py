"""``create_model``: a network by name, He-initialised or with trained weights from a weights
file, a run directory or a weights name; and saved with everything that rebuilds it.

    uv run python -c "from reslab.models import create_model; print(create_model('resnet20', weights='cifar10').arch)"

``create_model(name, weights=...)`` comes here: a weights name (``resnet20.cifar10``,
``resnet50.imagenet``; :mod:`reslab.hub` resolves it to a file or to torchvision's weights), a
reslab ``model.safetensors`` or run directory (its recorded layout must be the one asked for), or a
plain state dict or checkpoint (a bottleneck network's only with its layout declared). The files
and the checks are :mod:`reslab.weights.files` and :mod:`reslab.weights.checks`; a trained network
with its input normalisation and class names is :func:`reslab.weights.trained.load_trained`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reslab import hub
from reslab.errors import MissingFileError, ReslabError, WeightsError
from reslab.files import atomic_write
from reslab.models.registry import get_model_spec
from reslab.weights.checks import LAYOUT_KEYS, _layout, check_declared_layout, load_state
from reslab.weights.files import (
    find_weights,
    is_weights_name,
    meta_value,
    read_metadata,
    read_tensors,
)


def create_model(name: str, weights: str | None = None, **options: Any) -> nn.Module:
    """Build model ``name`` with keyword ``options`` (``shortcut``, ``num_classes``, ...).

    ``weights`` loads trained weights by name (``"cifar10"``, ``"resnet20.cifar10_seed0"``,
    ``"imagenet"`` for torchvision's; :mod:`reslab.hub` resolves names) or from a file
    (below)."""
    if weights is not None:
        return load_pretrained(name, weights, **options)
    return get_model_spec(name).build(**options)


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


def layout_of(name: str, options: dict[str, Any]) -> dict[str, Any] | None:
    """The layout (``model.arch``) that ``create_model(name, **options)`` builds, computed on the
    meta device (no memory, no initialisation); None when it cannot be built."""
    try:
        with torch.device("meta"):
            return create_model(name, **options).arch
    except (ReslabError, TypeError, ValueError):
        return None


def read_weights_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The tensors of a weights file and the layout the file records: a reslab safetensors
    file's ``architecture``, the network a reslab checkpoint's config builds (but for its
    classifier, whose size is the data's); None for a plain state dict, which does not say."""
    tensors = read_tensors(path)
    if tensors.arch is not None or tensors.model is None:
        return tensors.state, tensors.arch
    arch = layout_of(tensors.model, tensors.options)
    return tensors.state, None if arch is None else {
        k: v for k, v in arch.items() if k != "num_classes"
    }


def load_weights(
    path: str | Path, model_name: str | None = None, **options: Any
) -> tuple[nn.Module, dict[str, str]]:
    """The network stored in a reslab ``model.safetensors`` (or a run directory) and its metadata.

    With ``model_name`` (and ``options``) the caller asks for a network: a file holding another
    layout is refused, naming both."""
    path = find_weights(path)
    if path.suffix != ".safetensors":
        raise WeightsError(
            f"{path} is not a reslab weights file (a .safetensors recording the network, its "
            "classes and input normalisation); give a run directory or its model.safetensors (a "
            "plain state dict loads with load_model(name, path) or `reslab train --init`)"
        )
    meta = read_metadata(path)
    stored = meta.get("model")
    if not stored:
        raise WeightsError(
            f"{path} does not say which model it holds (no 'model' metadata; it was not written by "
            "reslab); load it as a plain state dict with load_model(name, path)"
        )
    try:
        model = create_model(stored, **meta_value(meta, "model_options", path, {}))
    except (ReslabError, TypeError, ValueError) as err:
        raise WeightsError(
            f"{path}: its metadata names a network reslab cannot build ({err}); the metadata is "
            "damaged or from another version of reslab"
        ) from None
    if model_name is not None:
        wanted = create_model(model_name, **options).arch
        if any(wanted.get(k) != model.arch.get(k) for k in LAYOUT_KEYS):
            raise WeightsError(
                f"{path} holds {stored} ({_layout(model.arch)}), not the {model_name} asked for "
                f"({_layout(wanted)}); load it without naming a model, or use matching weights"
            )
    load_state(model, read_tensors(path).state, path, stored)
    return model, meta


def load_model(
    name: str, weights: str | Path | None = None, seed: int = 0, **options: Any
) -> nn.Module:
    """``name`` He-initialised (seeded) when ``weights`` is None; otherwise with the weights of a
    reslab ``model.safetensors`` (or a run directory holding one; its layout must be ``name``'s),
    of a plain state-dict file or checkpoint, or of a weights name (``resnet50.imagenet``).

    A plain state dict of a bottleneck network loads only with its layout declared:
    ``stride_in="1x1"`` (the paper's v1) or ``"3x3"`` (torchvision's v1.5) given explicitly."""
    torch.manual_seed(seed)
    if weights is None:
        return create_model(name, **options)
    path = Path(weights)
    if not path.exists() and is_weights_name(str(weights)):
        return load_pretrained(name, str(weights), **options)
    if path.is_dir() or path.suffix == ".safetensors":
        path = find_weights(path)
        if "model" in read_metadata(path):
            return load_weights(path, name, **options)[0]
    state, arch = read_weights_file(path)
    model = create_model(name, **options)
    check_declared_layout(model, arch, path, declared="stride_in" in options)
    load_state(model, state, path, name)
    return model


def load_pretrained(name: str, weights: str, **options: Any) -> nn.Module:
    """Model ``name`` with the named ``weights`` (a tag such as ``cifar10``, a full name such as
    ``resnet20.cifar10_seed0``, or a path to a weights file). The entry's layout is the one
    loaded; other ``options`` must agree with it."""
    if Path(weights).exists() or not is_weights_name(str(weights)):
        return load_model(name, weights, **options)
    entry = hub.resolve(name, weights)
    if entry["model"] != name:
        raise WeightsError(f"{entry['name']} holds {entry['model']} weights, not {name}")
    clash = {k: v for k, v in options.items() if entry["model_options"].get(k, v) != v}
    if clash:
        raise WeightsError(
            f"{entry['name']} holds the layout {entry['model_options']}; {clash} was asked for"
        )
    layout = {**entry["model_options"], **options}
    if entry.get("source") == "torchvision":
        model = create_model(name, **layout)
        load_state(model, hub.torchvision_state(entry), Path(entry["torchvision"]), name)
        return model
    return load_model(name, hub.weights_file(entry), **layout)


def source_state(source: str | Path) -> tuple[dict[str, Any], dict[str, Any] | None, str]:
    """The tensors to start a run from (``train.init``): a run directory, a weights file or a
    weights name; with the architecture the source records or declares (a reslab file's, a
    reslab checkpoint's config, a weights name's entry; None for plain state dicts) and a label
    for messages."""
    path = Path(source)
    if path.is_dir() or path.is_file():
        path = find_weights(path) if path.is_dir() else path
        state, arch = read_weights_file(path)
        return state, arch, str(path)
    if "." not in str(source) or Path(source).suffix in (".safetensors", ".pt", ".pth"):
        raise MissingFileError(
            f"train.init: {source} is neither a weights file, a run directory nor a weights "
            f"name (`reslab weights list`)"
        )
    entry = hub.resolve(str(source))
    if entry.get("source") == "torchvision":
        return hub.torchvision_state(entry), entry_architecture(entry), entry["name"]
    state, arch = read_weights_file(hub.weights_file(entry))
    return state, arch, entry["name"]


def entry_architecture(entry: dict[str, Any]) -> dict[str, Any]:
    """The layout an entry's weights hold (torchvision's: v1.5 bottlenecks), as ``model.arch``."""
    return layout_of(entry["model"], entry["model_options"])
