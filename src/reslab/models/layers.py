"""Convolution helpers and the paper's shortcut options A, B and C.

    uv run python -c "from reslab.models.layers import PadShortcut; print(PadShortcut(16, 32, 2))"

A shortcut *option* is a factory ``(in_ch, out_ch, stride) -> nn.Module | None`` that a block
calls once when it is built; ``None`` means an identity shortcut. Blocks never branch on the option
letter themselves (plain networks are built with no factory at all).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from reslab.errors import ModelError

ShortcutFactory = Callable[[int, int, int], nn.Module | None]
PadWhere = Literal["after", "both"]
PAD_WHERE_CHOICES = ("after", "both")


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a BN follows it)."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution with no bias (a BN follows it)."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)


class PadShortcut(nn.Module):
    """Option A: parameter-free shortcut that subsamples by ``stride`` and zero-pads new channels.

    ``where="after"`` appends the zero channels after the input's (the original Torch code);
    ``where="both"`` splits them evenly before and after, as the widely used akamaster CIFAR
    weights expect.
    """

    parametric = False

    def __init__(self, in_ch: int, out_ch: int, stride: int, where: PadWhere = "after") -> None:
        super().__init__()
        if out_ch < in_ch:
            raise ValueError(f"PadShortcut cannot reduce channels ({in_ch} -> {out_ch})")
        self.in_ch, self.out_ch, self.stride, self.where = in_ch, out_ch, stride, where

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_ch - self.in_ch
        before = extra // 2 if self.where == "both" else 0
        return F.pad(x, (0, 0, 0, 0, before, extra - before))

    def extra_repr(self) -> str:
        return f"{self.in_ch}, {self.out_ch}, stride={self.stride}, where={self.where!r}"


class ProjectionShortcut(nn.Sequential):
    """Options B/C: 1x1 convolution (``.0``) followed by BN (``.1``), torchvision's ``downsample``.

    With ``norm=False`` it is the convolution alone, as pre-activation blocks use it (their input is
    already normalised).
    """

    parametric = True

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: bool = True) -> None:
        layers: list[nn.Module] = [conv1x1(in_ch, out_ch, stride)]
        if norm:
            layers.append(nn.BatchNorm2d(out_ch))
        super().__init__(*layers)


class FixedStatsBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that normalises with its running statistics and never updates them, in
    training mode too (fine-tuning with small batches); its scale and shift still train, and its
    state dict is a BatchNorm2d's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


def fix_bn_statistics(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d below ``module`` by a :class:`FixedStatsBatchNorm2d` with its
    parameters and statistics."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            fixed = FixedStatsBatchNorm2d(child.num_features, child.eps, child.momentum)
            fixed.load_state_dict(child.state_dict())
            setattr(module, name, fixed.to(child.weight.device))
        else:
            fix_bn_statistics(child)
    return module


def _changes_shape(in_ch: int, out_ch: int, stride: int) -> bool:
    return stride != 1 or in_ch != out_ch


def option_a(
    in_ch: int, out_ch: int, stride: int, *, where: PadWhere = "after"
) -> nn.Module | None:
    """Identity shortcuts; zero-padding (no parameters) where the dimensions increase."""
    return (
        PadShortcut(in_ch, out_ch, stride, where) if _changes_shape(in_ch, out_ch, stride) else None
    )


def option_b(in_ch: int, out_ch: int, stride: int, *, norm: bool = True) -> nn.Module | None:
    """Identity shortcuts; 1x1 projections only where the dimensions increase."""
    return (
        ProjectionShortcut(in_ch, out_ch, stride, norm)
        if _changes_shape(in_ch, out_ch, stride)
        else None
    )


def option_c(in_ch: int, out_ch: int, stride: int, *, norm: bool = True) -> nn.Module:
    """1x1 projections on every shortcut."""
    return ProjectionShortcut(in_ch, out_ch, stride, norm)


SHORTCUT_OPTIONS = ("A", "B", "C")


def shortcut_factory(
    option: str, *, norm: bool = True, pad_where: PadWhere = "after"
) -> ShortcutFactory:
    """The factory for shortcut ``option`` ("A", "B" or "C")."""
    if option == "A":
        return partial(option_a, where=pad_where)
    if option == "B":
        return partial(option_b, norm=norm)
    if option == "C":
        return partial(option_c, norm=norm)
    raise ModelError(
        f"shortcut={option!r} is invalid; valid choices: {', '.join(SHORTCUT_OPTIONS)}"
    )
