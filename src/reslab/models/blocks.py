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

    def _build_shortcut(
        self, shortcut: ShortcutFactory | None, in_ch: int, out_ch: int, stride: int
    ):
        self.residual = shortcut is not None
        self.downsample = shortcut(in_ch, out_ch, stride) if shortcut is not None else None

    def zero_init_last(self) -> None:
        """Zero the last layer of the residual branch so the block starts as its shortcut."""
        raise NotImplementedError

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(residual branch output, shortcut output or None for plain blocks), before merging."""
        raise NotImplementedError

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


class BasicBlock(_Block):
    """Two 3x3 convolutions, BN after each, ReLU after the first and after the addition."""

    expansion = 1

    def __init__(
        self, in_ch: int, width: int, stride: int = 1, shortcut: ShortcutFactory | None = None
    ) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = conv3x3(in_ch, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self._build_shortcut(shortcut, in_ch, out_ch, stride)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out)), self._shortcut_of(x)


class Bottleneck(_Block):
    """1x1 reduce, 3x3, 1x1 expand (x4). ``stride_in`` names where the down-sampling stride sits:
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
        out_ch = width * self.expansion
        s1, s3 = _bottleneck_strides(stride, stride_in)
        self.conv1 = conv1x1(in_ch, width, s1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, s3)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_ch)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self._build_shortcut(shortcut, in_ch, out_ch, stride)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out)), self._shortcut_of(x)


class _PreActBlock(_Block):
    """Pre-activation (He et al., "Identity Mappings", 2016): BN-ReLU-conv, a clean identity path.

    A projection shortcut reads the pre-activated input (as in the paper's code); identity and
    zero-padding shortcuts read the raw input, so the identity path carries no BN or ReLU.
    """

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


class PreActBasicBlock(_PreActBlock):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3, added to the shortcut (no ReLU after the addition)."""

    expansion = 1

    def __init__(
        self, in_ch: int, width: int, stride: int = 1, shortcut: ShortcutFactory | None = None
    ) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = conv3x3(in_ch, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, out_ch)
        self.relu = nn.ReLU(inplace=False)
        self._build_shortcut(shortcut, in_ch, out_ch, stride)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv2.weight)

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        preact = self.relu(self.bn1(x))
        out = self.conv2(self.relu(self.bn2(self.conv1(preact))))
        return out, self._preact_shortcut(x, preact)


class PreActBottleneck(_PreActBlock):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3, BN-ReLU-conv1x1 (x4), added to the shortcut."""

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
        out_ch = width * self.expansion
        s1, s3 = _bottleneck_strides(stride, stride_in)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = conv1x1(in_ch, width, s1)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, s3)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_ch)
        self.relu = nn.ReLU(inplace=False)
        self._build_shortcut(shortcut, in_ch, out_ch, stride)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.weight)

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        preact = self.relu(self.bn1(x))
        out = self.conv2(self.relu(self.bn2(self.conv1(preact))))
        return self.conv3(self.relu(self.bn3(out))), self._preact_shortcut(x, preact)
