"""The paper's ImageNet views of one photograph: scale augmentation for training, centre and ten
crops for testing (Sec. 3.4), as ``torchvision`` operations on a uint8 3 x H x W image.

    RESLAB_DATA=../shared/data uv run python -c "from reslab.data.views import TenCrop; import torch; print(TenCrop()(torch.zeros(3, 300, 400, dtype=torch.uint8)).shape)"

Training: the shorter side resized to a random length in [256, 480], a random 224x224 crop, a
horizontal flip with probability 1/2 (:class:`ScaleAugment`). Testing: shorter side 256 and the
centre 224 crop (:class:`CenterCrop`); 10-crop, the four corners and the centre and their mirror
images (:class:`TenCrop`); fully-convolutional multi-scale testing with shorter sides
:data:`MULTISCALE_SIZES` (see ``reslab.engine.evaluate``). These run per image, in ``DataLoader``
workers; the per-batch steps on the batch's device (PCA lighting, mean subtraction) are in
:mod:`reslab.data.transforms`, which stays free of ``torchvision`` for the CIFAR path.
"""

from __future__ import annotations

import random

import torch
import torchvision.transforms.v2.functional as TF

MULTISCALE_SIZES = (224, 256, 384, 480, 640)


def resize_shorter(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so the shorter side is ``size`` (bilinear, antialiased), keeping the aspect ratio."""
    h, w = image.shape[-2:]
    if min(h, w) == size:
        return image
    scale = size / min(h, w)
    new = (size, max(size, round(w * scale))) if h <= w else (max(size, round(h * scale)), size)
    return TF.resize(image, list(new), antialias=True)


class ScaleAugment:
    """Training view: shorter side uniform in [smin, smax], random ``crop`` square, random flip.

    Randomness comes from ``rng`` (a ``random.Random``), so a sample's view depends only on its seed.
    """

    takes_rng = True

    def __init__(
        self, smin: int = 256, smax: int = 480, crop: int = 224, flip: bool = True
    ) -> None:
        if not crop <= smin <= smax:
            raise ValueError(
                f"need crop <= smin <= smax, got crop={crop}, smin={smin}, smax={smax}"
            )
        self.smin, self.smax, self.crop, self.flip = smin, smax, crop, flip

    def __call__(self, image: torch.Tensor, rng: random.Random | None = None) -> torch.Tensor:
        rng = rng or random.Random()
        image = resize_shorter(image, rng.randint(self.smin, self.smax))
        h, w = image.shape[-2:]
        top, left = rng.randint(0, h - self.crop), rng.randint(0, w - self.crop)
        image = image[:, top : top + self.crop, left : left + self.crop]
        if self.flip and rng.random() < 0.5:
            image = image.flip(-1)
        return image.contiguous()


class CenterCrop:
    """Standard single-crop test view: shorter side ``resize``, centre ``crop`` square."""

    def __init__(self, resize: int = 256, crop: int = 224) -> None:
        self.resize, self.crop = resize, crop

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return TF.center_crop(resize_shorter(image, self.resize), [self.crop, self.crop])


class TenCrop:
    """10-crop test views (K x 3 x crop x crop, K = 10): four corners and centre, and their mirrors."""

    def __init__(self, resize: int = 256, crop: int = 224) -> None:
        self.resize, self.crop = resize, crop

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        image = resize_shorter(image, self.resize)
        return torch.stack(TF.ten_crop(image, [self.crop, self.crop]))
