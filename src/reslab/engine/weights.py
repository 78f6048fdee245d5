"""Weights files: the one checked saver and loader that training, evaluation, analysis and
detection share.

    uv run reslab eval runs/demo

``model.safetensors`` holds a plain state dict and metadata saying how to rebuild the network
(``model`` and ``model_options``: every option, defaults included; ``architecture``: the layout
they resolve to) and how to feed it (input normalisation, class names, input size). Loading
rebuilds that network; asked for another one, it refuses with a message naming both layouts, even
where the tensor shapes would agree (a v1 and a v1.5 bottleneck, option-A padding after or on
both sides). Plain state-dict files (``torch.save(model.state_dict())``, read without running code)
load into the network the caller names, with what torch's own strict loading tolerates (BN's
``num_batches_tracked`` missing, another dtype, DataParallel's ``module.`` prefix); a bottleneck
network's only when its layout is declared (``stride_in=``, a reslab checkpoint's config, or a
weights name such as ``resnet50.imagenet``), since v1 and v1.5 files have the same shapes. Every
failure names the file and what to do.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reslab.engine.checkpoint import atomic_write, load_checkpoint
from reslab.errors import MissingFileError, ReslabError, WeightsError
from reslab.models import create_model, get_model_spec

# what a layout is made of (how the weights were initialised is not part of it)
LAYOUT_KEYS = (
    "family", "depth", "residual", "preact", "block", "shortcut", "stride_in", "shortcut_pad",
    "num_classes", "in_chans",
)  # fmt: skip
STATE_DICT_SUFFIXES = (".pt", ".pth", ".th", ".bin", ".ckpt")  # torch.save'd files
# the two bottleneck layouts, which have the same tensor shapes
BOTTLENECK_LAYOUTS = (
    'stride_in="1x1" (the paper\'s v1, stride on the first 1x1) or "3x3" (torchvision\'s v1.5, '
    "stride on the 3x3)"
)


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


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or of a plain ``torch.save``'d state dict (also inside a
    checkpoint's ``model`` or a ``state_dict`` entry, ``module.`` prefixes removed)."""
    return read_weights_file(path)[0]


def read_weights_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The tensors of a weights file (as :func:`read_state_dict`) and the architecture the file
    records: a reslab safetensors file's ``architecture`` metadata, a reslab checkpoint's config;
    None for a plain state dict, which does not say which layout it holds."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        arch = meta_value(read_metadata(path), "architecture", path)
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise WeightsError(f"{path} is not a readable safetensors file ({err})") from None
        return _without_module_prefix(state), arch
    loaded = load_checkpoint(path)
    state = loaded
    if isinstance(loaded, dict):
        state = loaded.get("model", loaded.get("state_dict", loaded))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} holds no state dict (a mapping of names to tensors)")
    return _without_module_prefix(state), _checkpoint_arch(loaded)


def _without_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DataParallel's and DistributedDataParallel's ``module.`` prefix removed."""
    return {k.removeprefix("module."): v for k, v in state.items()}


def _checkpoint_arch(checkpoint: Any) -> dict[str, Any] | None:
    """The architecture a reslab training checkpoint's config builds (its classifier's size is
    the data's and not recorded there), or None for anything else."""
    cfg = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    model = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        return None
    try:
        with torch.device("meta"):  # the layout only: no memory, no initialisation
            arch = create_model(model["name"], **(model.get("options") or {})).arch
    except (ReslabError, TypeError, ValueError):
        return None
    return {k: v for k, v in arch.items() if k != "num_classes"}


def as_torch_loads(
    model: nn.Module, state: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` with the differences that torch's strict ``load_state_dict`` accepts made good,
    and the names that were filled in: the missing ``num_batches_tracked`` of a BatchNorm whose
    statistics are there (state dicts from before torch 0.4.1 or filtered of it; it keeps the
    model's value, as torch does) and a one-element tensor for a 0-dim one (torch 0.3's). Other
    dtypes are cast by the copy, as in torch."""
    own = model.state_dict()
    state = dict(state)
    filled = [
        k
        for k in own
        if k.endswith(".num_batches_tracked")
        and k not in state
        and k.replace(".num_batches_tracked", ".running_mean") in state  # the BN is in the file
    ]
    for k in filled:
        state[k] = own[k]
    for k, v in state.items():
        if k in own and own[k].dim() == 0 and v.shape == (1,):
            state[k] = v[0]
    return state, filled


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path, name: str) -> None:
    """``model.load_state_dict(state, strict=True)`` (with what torch tolerates, see
    :func:`as_torch_loads`), or an error listing what does not fit."""
    state, _ = as_torch_loads(model, state)
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


def check_declared_layout(
    model: nn.Module, arch: dict[str, Any] | None, source: str | Path, declared: bool = False
) -> None:
    """A file's tensors go only into the layout their source declares: ``arch`` (what the file
    records; None for a plain state dict) must be ``model``'s but for the classes, and a plain
    state dict of a network with a bottleneck layout choice (``stride_in``) loads only when the
    caller ``declared`` it: v1 and v1.5 files have the same shapes and compute differently."""
    keys = [k for k in LAYOUT_KEYS if k != "num_classes"]
    if arch is not None:
        if any(arch.get(k) != model.arch.get(k) for k in keys):
            raise WeightsError(
                f"{source} holds another network ({_layout({k: arch.get(k) for k in keys})}) "
                f"than the one asked for ({_layout({k: model.arch.get(k) for k in keys})})"
            )
        return
    if declared or model.arch.get("stride_in") is None:
        return
    depth = model.arch.get("depth")
    name = f"resnet{depth}"
    by_name = ""
    if model.arch.get("family") == "imagenet" and model.arch.get("residual"):
        by_name = (
            f"the weights name {name}.imagenet for torchvision's (v1.5; "
            f"RESLAB_TORCHVISION_WEIGHTS={source} makes it this file) or "
        )
    raise WeightsError(
        f"{source} is a plain state dict of a bottleneck network, which does not say its layout "
        f"and whose shapes cannot tell it: {BOTTLENECK_LAYOUTS}; declare it: in Python "
        f'load_model(name, path, stride_in="3x3" or "1x1"); in a config or on the command line, '
        f"{by_name}a reslab .safetensors that records its layout (save_weights)"
    )


def _layout(arch: dict[str, Any]) -> str:
    return ", ".join(f"{k}={arch.get(k)}" for k in LAYOUT_KEYS if arch.get(k) is not None)


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
    load_state(model, read_state_dict(path), path, stored)
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
        from reslab.hub import load_pretrained

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


def is_weights_name(text: str) -> bool:
    """``resnet50.imagenet`` or a tag (``cifar10``): no folder, no weights-file suffix."""
    return (
        "/" not in text
        and "\\" not in text
        and Path(text).suffix not in (".safetensors", *STATE_DICT_SUFFIXES)
    )


def normalizer_from_metadata(meta: dict[str, str], path: str | Path):
    """The input normalisation stored with the weights (a :class:`Normalize` module)."""
    from reslab.data.transforms import NORMALIZATIONS, Normalize

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


def meta_int(meta: dict[str, str], key: str, path: str | Path) -> int:
    """A positive integer stored as text (``resize``, ``crop``), or an error naming both."""
    text = meta.get(key)
    if text is None or not text.isdigit() or int(text) < 1:
        raise WeightsError(
            f"{path}: metadata {key!r} is {text!r}, not a positive integer; the file's metadata "
            "is damaged (image-folder runs record it)"
        )
    return int(text)


def initialise_from(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    arch: dict[str, Any] | None,
    declared: bool = False,
) -> tuple[list[str], list[str]]:
    """Fine-tuning's start: every tensor of ``state`` that ``model`` has with the same shape is
    copied in (with what torch's strict loading tolerates, see :func:`as_torch_loads`); the
    classifier is left newly initialised when its number of classes differs. Anything else that
    does not fit (another family or layout; a plain state dict of a bottleneck network whose
    layout is not ``declared``, see :func:`check_declared_layout`) is an error naming it. Returns
    (names loaded from ``state``, newly initialised names)."""
    check_declared_layout(model, arch, source, declared)
    own = model.state_dict()
    state, filled = as_torch_loads(model, state)
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
    return sorted(k for k in fits if k not in filled), new
