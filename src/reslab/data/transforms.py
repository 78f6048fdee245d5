"""Batched augmentation and normalisation: tensor operations on whichever device holds the batch.

    uv run python -c "import reslab.data.transforms as t; help(t.random_crop_flip)"

CIFAR: the paper's training augmentation is "4 pixels padded on each side, a 32x32 crop randomly
sampled from the padded image or its horizontal flip". Here it is one gather over the whole batch,
on uint8 (the padding is zero, i.e. black, before normalisation). The random numbers are drawn on
the CPU from an explicit generator and then moved, so the CPU and a GPU give the same result for
one seed. ImageNet: AlexNet's PCA lighting noise (:class:`Lighting`), added to a whole batch after
its per-image views (:mod:`reslab.data.views`). Both: :class:`Normalize`, the input normalisation.
Plain torch (no ``torchvision``), so that the CIFAR path imports nothing more.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORMALIZATIONS = ("pixel", "channel")
# AlexNet's PCA of ImageNet RGB pixels (in [0, 1]): eigenvalues and eigenvectors (columns).
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def crop_flip_params(
    n: int, generator: torch.Generator, pad: int = 4, flip: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random crop offsets (row, column in [0, 2*pad]) and mirror flags for ``n`` images (CPU)."""
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)
    mirror = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return offsets[0], offsets[1], mirror


def crop_flip(
    images: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, mirror: torch.Tensor, pad: int = 4
) -> torch.Tensor:
    """Zero-pad by ``pad``, crop at (oy, ox) to the input size and mirror where asked: one gather."""
    n, c, h, w = images.shape
    device = images.device
    oy, ox, mirror = oy.to(device), ox.to(device), mirror.to(device)
    rows = oy[:, None] + torch.arange(h, device=device)  # N x H
    base = torch.arange(w, device=device)
    cols = ox[:, None] + torch.where(mirror[:, None], w - 1 - base, base)  # N x W
    padded = F.pad(images, (pad, pad, pad, pad))
    n_idx = torch.arange(n, device=device)[:, None, None, None]
    c_idx = torch.arange(c, device=device)[None, :, None, None]
    return padded[n_idx, c_idx, rows[:, None, :, None], cols[:, None, None, :]]


def random_crop_flip(
    images: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True
) -> torch.Tensor:
    """Pad each image by ``pad`` zeros, take a random same-size crop, mirror half of them.

    ``images`` is N x C x H x W (any dtype, any device); the result has the same shape.
    """
    return crop_flip(images, *crop_flip_params(len(images), generator, pad, flip), pad=pad)


class Lighting(nn.Module):
    """AlexNet PCA lighting noise: each image gets ``eigvec @ (alpha * eigval)`` added to all of its
    pixels (in [0, 1] units), with ``alpha ~ N(0, std)`` drawn per image and eigenvector."""

    def __init__(self, std: float = 0.1) -> None:
        super().__init__()
        self.std = std
        self.register_buffer("eigval", torch.tensor(PCA_EIGVAL))
        self.register_buffer("eigvec", torch.tensor(PCA_EIGVEC))

    def offsets(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """N x 3 RGB offsets, one per image."""
        alpha = torch.randn(n, 3, generator=generator).to(self.eigval.device) * self.std
        return (alpha * self.eigval) @ self.eigvec.T

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``x``: float N x 3 x H x W in [0, 1] units."""
        return x + self.offsets(x.shape[0], generator)[:, :, None, None].to(x.dtype)


class Normalize(nn.Module):
    """``(x / 255 - mean) / std`` for uint8 input; ``mean``/``std`` broadcast against N x C x H x W.

    ``pixel`` (the paper): subtract the per-pixel mean image of the training set, std 1.
    ``channel``: per-channel mean and std of the training set.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())

    @classmethod
    def fit(cls, images: torch.Tensor, mode: str = "pixel") -> Normalize:
        """Statistics from uint8 training ``images`` (N x C x H x W)."""
        if mode not in NORMALIZATIONS:
            raise ValueError(
                f"normalization={mode!r} is invalid; valid choices: {', '.join(NORMALIZATIONS)}"
            )
        x = images.double() / 255
        if mode == "pixel":
            mean, std = x.mean(0, keepdim=True), torch.ones(1, 1, 1, 1, dtype=x.dtype)
        else:
            mean, std = x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True)
        return cls(mean, std, mode)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mean = self.mean
        if mean.shape[-2:] != (1, 1) and mean.shape[-2:] != images.shape[-2:]:
            # a per-pixel mean applied at another resolution (multi-scale testing): resize it
            mean = F.interpolate(mean, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return (images.float() / 255 - mean) / self.std

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, mean={tuple(self.mean.shape)}"
