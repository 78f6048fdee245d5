"""Residual blocks: basic (two 3x3), bottleneck (1x1-3x3-1x1) and their pre-activation forms.

    uv run python -c "from reslab.models.blocks import Bottleneck; print(Bottleneck(64, 64))"

Every block takes ``(in_ch, width, stride, shortcut)`` and produces ``width * expansion`` channels.
``shortcut`` is a factory from :mod:`reslab.models.layers` (options A/B/C); ``None`` builds the
*plain* counterpart: the same layers with no shortcut and no addition. Parameter names follow
torchvision (``conv1``, ``bn1``, ..., ``downsample``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from reslab.models.layers import ShortcutFactory, conv1x1, conv3x3

StrideIn = Literal["1x1", "3x3"]
STRIDE_IN_CHOICES = ("1x1", "3x3")


class _Block(nn.Module):
    """Shared plumbing: ``parts(x)`` computes the residual branch and the shortcut, ``merge`` joins
    them (analyses call the two separately to delete or gate a branch); ``self.residual`` says
    whether there is a shortcut at all."""

    expansion = 1
    preact = False  # BN-ReLU before each convolution instead of BN after it

    def _build(self, convs: list[nn.Conv2d], shortcut: ShortcutFactory | None, stride: int):
        """Register ``conv1, bn1, conv2, ...`` (``bn1, conv1, ...`` for pre-activation: the BN
        normalises the convolution's input), the ReLU and the shortcut, in torchvision's order."""
        for i, conv in enumerate(convs, 1):
            bn = nn.BatchNorm2d(conv.in_channels if self.preact else conv.out_channels)
            pair = ((f"bn{i}", bn), (f"conv{i}", conv))
            for name, module in pair if self.preact else reversed(pair):
                setattr(self, name, module)
        self.relu = nn.ReLU(inplace=not self.preact)
        self.layers = len(convs)  # weighted layers of the residual branch
        in_ch, out_ch = convs[0].in_channels, convs[-1].out_channels
        self.residual = shortcut is not None
        self.downsample = shortcut(in_ch, out_ch, stride) if shortcut is not None else None

    def zero_init_last(self) -> None:
        """Zero the branch's last BN scale, so that the block starts as its shortcut."""
        nn.init.zeros_(getattr(self, f"bn{self.layers}").weight)

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(residual branch output, shortcut output or None for plain blocks), before merging:
        conv-BN-ReLU for every layer but the last, whose ReLU comes after the merge."""
        out = x
        for i in range(1, self.layers + 1):
            out = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(out))
            if i < self.layers:
                out = self.relu(out)
        return out, self._shortcut_of(x)

    def merge(self, branch: torch.Tensor, shortcut: torch.Tensor | None) -> torch.Tensor:
        """Post-activation merge: add the shortcut (residual blocks only), then ReLU."""
        return self.relu(branch if shortcut is None else branch + shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.merge(*self.parts(x))

    def _shortcut_of(self, x: torch.Tensor) -> torch.Tensor | None:
        if not self.residual:
            return None
        return x if self.downsample is None else self.downsample(x)

    def shortcut_path(self, x: torch.Tensor) -> torch.Tensor | None:
        """The shortcut's output alone, without computing the branch (a lesion deletes it)."""
        return self._shortcut_of(x)


def _bottleneck_strides(stride: int, stride_in: str) -> tuple[int, int]:
    """(stride of the first 1x1, stride of the 3x3) for the named position of the stride
    (checked by the model builders)."""
    return (stride, 1) if stride_in == "1x1" else (1, stride)


class _BasicLayers:
    """Two 3x3 convolutions, the first one strided (post- and pre-activation basic blocks)."""

    expansion = 1

    def __init__(
        self, in_ch: int, width: int, stride: int = 1, shortcut: ShortcutFactory | None = None
    ) -> None:
        super().__init__()
        convs = [conv3x3(in_ch, width, stride), conv3x3(width, width * self.expansion)]
        self._build(convs, shortcut, stride)


class _BottleneckLayers:
    """1x1 reduce, 3x3, 1x1 expand (x4); ``stride_in`` names where the down-sampling stride sits:
    ``"1x1"`` on the first 1x1 convolution (the paper, "v1") or ``"3x3"`` (torchvision's "v1.5")."""

    expansion = 4

    def __init__(
        self,
        in_ch: int,
        width: int,
        stride: int = 1,
        shortcut: ShortcutFactory | None = None,
        stride_in: StrideIn = "1x1",
    ) -> None:
        super().__init__()
        s1, s3 = _bottleneck_strides(stride, stride_in)
        convs = [conv1x1(in_ch, width, s1), conv3x3(width, width, s3)]
        self._build([*convs, conv1x1(width, width * self.expansion)], shortcut, stride)


class BasicBlock(_BasicLayers, _Block):
    """Two 3x3 convolutions, BN after each, ReLU after the first and after the addition."""


class Bottleneck(_BottleneckLayers, _Block):
    """1x1 reduce, 3x3, 1x1 expand (x4), BN after each; the stride on the first 1x1 (the paper's
    "v1", ``stride_in="1x1"``) or on the 3x3 (torchvision's "v1.5", ``stride_in="3x3"``)."""


class _PreActBlock(_Block):
    """Pre-activation (He et al., "Identity Mappings", 2016): BN-ReLU-conv, a clean identity path.

    A projection shortcut reads the pre-activated input (as in the paper's code); identity and
    zero-padding shortcuts read the raw input, so the identity path carries no BN or ReLU.
    """

    preact = True

    def zero_init_last(self) -> None:
        """Zero the branch's last convolution, so that the block starts as its shortcut."""
        nn.init.zeros_(getattr(self, f"conv{self.layers}").weight)

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """BN-ReLU-conv for every layer; the first BN-ReLU also feeds a projection shortcut."""
        preact = self.relu(self.bn1(x))
        out = self.conv1(preact)
        for i in range(2, self.layers + 1):
            out = getattr(self, f"conv{i}")(self.relu(getattr(self, f"bn{i}")(out)))
        return out, self._preact_shortcut(x, preact)

    def _preact_shortcut(self, x: torch.Tensor, preact: torch.Tensor) -> torch.Tensor | None:
        if not self.residual or self.downsample is None:
            return x if self.residual else None
        return self.downsample(preact if self.downsample.parametric else x)

    def shortcut_path(self, x: torch.Tensor) -> torch.Tensor | None:
        parametric = self.downsample is not None and self.downsample.parametric
        return self._preact_shortcut(x, self.relu(self.bn1(x)) if parametric else x)

    def merge(self, branch: torch.Tensor, shortcut: torch.Tensor | None) -> torch.Tensor:
        """Pre-activation merge: a plain sum, no ReLU after it."""
        return branch if shortcut is None else branch + shortcut


class PreActBasicBlock(_BasicLayers, _PreActBlock):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3, added to the shortcut (no ReLU after the addition)."""


class PreActBottleneck(_BottleneckLayers, _PreActBlock):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3, BN-ReLU-conv1x1 (x4), added to the shortcut."""
