"""What loads into which network: a state dict's way into a model, with what torch's own strict
loading tolerates, and never into another layout than the one its source declares.

    uv run python -c "from reslab.weights.checks import as_torch_loads; help(as_torch_loads)"

Asked for another network, loading refuses with a message naming both layouts, even where the
tensor shapes would agree (a v1 and a v1.5 bottleneck, option-A padding after or on both sides).
Plain state dicts load with what torch's strict ``load_state_dict`` accepts (BN's
``num_batches_tracked`` missing, another dtype, DataParallel's ``module.`` prefix); a bottleneck
network's only when its layout is declared (``stride_in=``, a reslab checkpoint's config, or a
weights name such as ``resnet50.imagenet``), since v1 and v1.5 files have the same shapes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from reslab.errors import WeightsError

# what a layout is made of (how the weights were initialised is not part of it)
LAYOUT_KEYS = (
    "family",
    "depth",
    "residual",
    "preact",
    "block",
    "shortcut",
    "stride_in",
    "shortcut_pad",
    "num_classes",
    "in_chans",
)
# the two bottleneck layouts, which have the same tensor shapes
BOTTLENECK_LAYOUTS = (
    'stride_in="1x1" (the paper\'s v1, stride on the first 1x1) or "3x3" (torchvision\'s v1.5, '
    "stride on the 3x3)"
)


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
