"""Parameters and multiply-adds, measured by running the model under torch's FLOP counter.

    uv run reslab info resnet34 --shortcut A

Multiply-adds are counted the way the paper counts them: the convolutions and the fully connected
layer (one multiply-add = two FLOPs); BN, ReLU, pooling and the parameter-free option-A shortcut
add nothing. Parameters are the trainable ones (BN running statistics are buffers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Complexity:
    """Trainable parameters and multiply-adds of one forward pass of a single image."""

    params: int
    macs: int
    input_size: tuple[int, ...]


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """Multiply-adds of one forward pass on a single ``input_size`` (C, H, W) image, measured."""
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        x = torch.zeros(1, *input_size, device=device)
        with FlopCounterMode(display=False) as counter:
            model(x)
        return counter.get_total_flops() // 2
    finally:
        model.train(was_training)


def complexity(model: nn.Module, input_size: tuple[int, ...] | None = None) -> Complexity:
    """Parameters and multiply-adds; ``input_size`` defaults to the model's own (32 or 224)."""
    if input_size is None:
        input_size = getattr(model, "default_input_size", None)
        if input_size is None:
            raise ValueError(
                "complexity() needs input_size=(C, H, W) for a model without default_input_size"
            )
    input_size = tuple(input_size)
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (C, H, W), got {input_size}")
    return Complexity(count_params(model), count_macs(model, input_size), input_size)


@dataclass(frozen=True)
class StageRow:
    """One row of a Table-1 style summary."""

    name: str
    output_size: tuple[int, ...]  # C x H x W of the stage's output
    layout: str  # e.g. "3 x [3x3, 16; 3x3, 16]"
    params: int
    macs: int


def _block_layout(block: nn.Module) -> str:
    convs = [m for name, m in block.named_children() if name.startswith("conv")]
    return "; ".join(f"{c.kernel_size[0]}x{c.kernel_size[1]}, {c.out_channels}" for c in convs)


@torch.no_grad()
def stage_table(model: nn.Module, input_size: tuple[int, ...] | None = None) -> list[StageRow]:
    """Per-stage output sizes, block layouts, parameters and multiply-adds of a :class:`ResNet`."""
    input_size = tuple(input_size or model.default_input_size)
    stages = ["conv1", *model.stage_names, "fc"]
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        getattr(model, s).register_forward_hook(
            lambda _m, _i, out, s=s: shapes.__setitem__(s, tuple(out.shape[1:]))
        )
        for s in stages
    ]
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_size, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    flops = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    owner = type(model).__name__
    rows = []
    for s in stages:
        module = getattr(model, s)
        if s.startswith("layer"):
            blocks = list(module)
            layout = f"{len(blocks)} x [{_block_layout(blocks[0])}]"
        elif s == "conv1":
            c = module
            layout = (
                f"{c.kernel_size[0]}x{c.kernel_size[1]}, {c.out_channels}, stride {c.stride[0]}"
            )
            if getattr(model, "maxpool", None) is not None:
                layout += " + 3x3 max pool, stride 2"
        else:
            layout = (
                f"global average pool, {module.in_features}-d fc, {module.out_features} classes"
            )
        rows.append(
            StageRow(s, shapes[s], layout, count_params(module), flops.get(f"{owner}.{s}", 0) // 2)
        )
    return rows


def format_table(name: str, model: nn.Module, input_size: tuple[int, ...] | None = None) -> str:
    """``reslab info``: the Table-1 style summary of ``model`` (registered as ``name``)."""
    total = complexity(model, input_size)
    kind = "pre-activation residual" if model.preact else "residual"
    kind = kind if model.residual else "plain"
    shape = "x".join(map(str, total.input_size))
    header = f"{'stage':<8} {'output':<12} {'params':>12} {'mult-adds':>14}  layout"
    lines = [f"{name}: {kind} network, {model.stem_kind} family, input {shape}", header]
    lines.append("-" * len(header))
    for r in stage_table(model, input_size):
        out = "x".join(map(str, r.output_size))
        lines.append(f"{r.name:<8} {out:<12} {r.params:>12,} {r.macs:>14,}  {r.layout}")
    lines.append("-" * len(header))
    lines.append(
        f"{'total':<8} {'':<12} {total.params:>12,} {total.macs:>14,}  "
        f"({total.macs / 1e9:.3f}e9 multiply-adds)"
    )
    return "\n".join(lines)
