"""Image folders held in memory: decoded once into uint8 tensors, augmented a whole batch at a time.

    RESLAB_DATA=../shared/data uv run python -c "from reslab.data.inmemory import decode_folder; print(decode_folder('../shared/data/imagenette/val').images.shape)"

A small class-per-folder dataset (Imagenette's 9,469 training photographs at 96x96 are 262 MB as
uint8) fits in memory, where DataLoader workers decoding JPEGs would take the cores that training
needs. :func:`decode_folder` decodes it once per process (kept under a key of its file list, sizes
and modification times); :class:`FolderTensorLoader` then draws each training batch's views as
tensor operations on the batch's device: the paper's scale augmentation (shorter side uniform in
[smin, smax], resized bilinear with antialiasing, exactly as :func:`~reslab.data.views.resize_shorter`
resizes one image), a random crop, a horizontal flip and PCA lighting. The random numbers of batch
``b`` of epoch ``e`` come from a generator seeded by ``(seed, e, b)``, so a run resumed at any batch
sees the batches of an uninterrupted run. Test views: the centre crop after resizing the shorter
side, or the ten crops. Every image of the folder must have one size (a square photograph here).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF

from reslab.data.decode import CorruptImageError, decode
from reslab.data.imagefolder import scan_folder
from reslab.data.loaders import seeded_generator
from reslab.data.transforms import Lighting
from reslab.data.views import resize_shorter
from reslab.errors import DataError

Sample = tuple[Path, int]


@dataclass
class DecodedFolder:
    """An image folder in memory: ``images`` uint8 N x 3 x H x W, ``labels`` int64 N."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    skipped: list[str] = field(default_factory=list)  # files left out as corrupt (skip_corrupt)

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size()


def holdout_split(samples: list[Sample], every: int, part: str) -> list[Sample]:
    """``part`` "train": the samples but every ``every``-th; "holdout": every ``every``-th (the
    last of each group of ``every`` in the folder's sorted order, so each class is held out in
    proportion and no random numbers are involved); ``every=0``: all samples are "train"."""
    if part not in ("train", "holdout"):
        raise ValueError(f"part={part!r}: expected train or holdout")
    if not every:
        return list(samples) if part == "train" else []
    held = part == "holdout"
    return [s for i, s in enumerate(samples) if (i % every == every - 1) == held]


def image_sizes(samples: list[Sample]) -> set[tuple[int, int]]:
    """The distinct (height, width) of the images, read from their headers (nothing decoded); an
    unreadable header counts as no size (decoding it later names the file)."""
    from PIL import Image

    sizes = set()
    for path, _ in samples:
        try:
            with Image.open(path) as image:
                sizes.add((image.height, image.width))
        except (OSError, ValueError):
            continue
    return sizes


def memory_plan(samples: list[Sample], budget_mb: float) -> tuple[bool, str]:
    """Whether ``samples`` decoded fit ``budget_mb`` as one uint8 tensor (every image of one
    size), and a sentence saying why."""
    sizes = image_sizes(samples)
    if len(sizes) != 1:
        return False, f"its {len(samples):,} images have {len(sizes)} different sizes"
    (h, w), n = next(iter(sizes)), len(samples)
    mb = n * 3 * h * w / 2**20
    if mb > budget_mb:
        return (
            False,
            f"{n:,} images of {h}x{w} need {mb:,.0f} MB, over the {budget_mb:,.0f} MB budget",
        )
    return True, f"{n:,} images of {h}x{w} in {mb:,.0f} MB (budget {budget_mb:,.0f} MB)"


_DECODED: dict[str, DecodedFolder] = {}


def _key(root: Path, samples: list[Sample], on_error: str) -> str:
    digest = hashlib.sha256(f"{root}\n{on_error}\n".encode())
    for path, label in samples:
        stat = path.stat()
        digest.update(f"{path}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def decode_folder(
    root: str | Path, samples: list[Sample] | None = None, on_error: str = "raise"
) -> DecodedFolder:
    """The images of ``root`` (or the given ``samples`` of it) decoded into one uint8 tensor, once
    per process (kept under a key of the file list, sizes and modification times). A file that
    cannot be decoded raises :class:`~reslab.data.decode.CorruptImageError` naming it, or
    with ``on_error="skip"`` is left out and listed in ``skipped``; images of another size than
    the first are a :class:`~reslab.errors.DataError`."""
    root = Path(root)
    classes, found = scan_folder(root)
    samples = found if samples is None else samples
    key = _key(root, samples, on_error)
    if key in _DECODED:
        return _DECODED[key]
    images, labels, skipped = [], [], []
    for path, label in samples:
        try:
            image = decode(path)
        except CorruptImageError:
            if on_error == "raise":
                raise
            skipped.append(str(path))
            continue
        if images and image.shape != images[0].shape:
            raise DataError(
                f"{path} is {tuple(image.shape[1:])}, the images before it "
                f"{tuple(images[0].shape[1:])}: an in-memory folder holds images of one size; "
                "set data.in_memory=false to read it with DataLoader workers"
            )
        images.append(image)
        labels.append(label)
    if not images:
        raise DataError(f"no image of {root} could be decoded")
    decoded = DecodedFolder(torch.stack(images), torch.tensor(labels), classes, skipped)
    _DECODED.clear()  # one folder pair per process is enough; keep memory bounded
    _DECODED[key] = decoded
    return decoded


def pixel_mean(images: torch.Tensor, resize: int, crop: int, limit: int = 10000) -> torch.Tensor:
    """The per-pixel mean (1 x 3 x crop x crop, in [0, 1]) of the centre ``crop`` crops at shorter
    side ``resize`` of up to ``limit`` of ``images`` spread over them: the same images and views
    as :func:`~reslab.data.imagefolder.imagenet_normalize` fits on the files."""
    chosen = images[:: max(1, len(images) // limit)][:limit]
    total = torch.zeros(3, crop, crop, dtype=torch.float64)
    for chunk in chosen.split(512):
        views = TF.center_crop(resize_shorter(chunk, resize), [crop, crop])
        total += views.double().sum(0)
    return (total / len(chosen) / 255)[None].float()


def resized_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """(height, width) of an ``h`` x ``w`` image resized to shorter side ``size`` (as
    :func:`~reslab.data.views.resize_shorter`)."""
    if h <= w:
        return size, max(size, round(w * size / h))
    return max(size, round(h * size / w)), size


def scale_crop_flip(
    images: torch.Tensor,
    sizes: torch.Tensor,
    tops: torch.Tensor,
    lefts: torch.Tensor,
    mirror: torch.Tensor,
    crop: int,
) -> torch.Tensor:
    """Each image (uint8 N x C x H x W) resized to shorter side ``sizes[i]``, cropped to ``crop``
    at (``tops[i]``, ``lefts[i]``) and mirrored where ``mirror[i]``: N x C x crop x crop. Images
    of one size are resized together (the same kernel as one image at a time)."""
    n, c = images.shape[:2]
    out = torch.empty(n, c, crop, crop, dtype=images.dtype, device=images.device)
    base = torch.arange(crop, device=images.device)
    for size in sizes.unique().tolist():
        idx = torch.nonzero(sizes == size).flatten()
        resized = resize_shorter(images[idx], int(size))
        rows = tops[idx, None] + base  # k x crop
        cols = lefts[idx, None] + torch.where(mirror[idx, None], crop - 1 - base, base)
        k = torch.arange(len(idx), device=images.device)[:, None, None, None]
        ch = torch.arange(c, device=images.device)[None, :, None, None]
        out[idx] = resized[k, ch, rows[:, None, :, None], cols[:, None, None, :]]
    return out


class FolderTensorLoader:
    """Batches of (normalised float images, labels) from a :class:`DecodedFolder` on ``device``.

    Args:
        folder: the decoded images (moved to ``device`` once).
        batch_size: images per batch (the global batch with ``shard``; test batches count images).
        normalize: maps a uint8 batch to the model's float input.
        train: training views (scale augmentation, crop, flip, lighting), a shuffled order and
            no last partial batch; else the test ``views``.
        scale: (smin, smax), the range of the shorter side (training).
        crop: the side of every view.
        lighting: std of the PCA lighting noise (training; 0: off).
        views: "center" (shorter side ``scale[0]``, centre crop) or "tencrop" (N x 10 x C x H x W).
        seed: seeds the order and the views (see the module doc).
        shard: ``(rank, world_size)``: this process's equal slice of every global batch.
    """

    def __init__(
        self,
        folder: DecodedFolder,
        batch_size: int,
        normalize: Callable[[torch.Tensor], torch.Tensor],
        *,
        train: bool,
        scale: tuple[int, int],
        crop: int,
        lighting: float = 0.1,
        views: str = "center",
        seed: int = 0,
        device: torch.device | str = "cpu",
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        world = shard[1]
        if train and batch_size % world:
            raise ValueError(f"global batch {batch_size} is not divisible by {world} processes")
        if train and len(folder.labels) < batch_size:
            raise DataError(
                f"{len(folder.labels)} training images are fewer than one batch of {batch_size}"
            )
        if views not in ("center", "tencrop"):
            raise ValueError(f"views={views!r}: expected center or tencrop")
        h, w = folder.images.shape[-2:]
        if min(h, w) < crop or (not train and scale[0] < crop):
            raise DataError(f"images of {h}x{w} cannot give {crop}x{crop} crops")
        self.device = torch.device(device)
        self.images, self.labels = folder.images.to(self.device), folder.labels.to(self.device)
        self.skipped = folder.skipped
        self.batch_size, self.normalize, self.train = batch_size, normalize, train
        self.scale, self.crop, self.views, self.seed, self.shard = scale, crop, views, seed, shard
        self.lighting = Lighting(lighting if train else 0.0).to(self.device)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.train else math.ceil(n / self.batch_size)

    def view_params(self, epoch: int, batch: int) -> dict[str, torch.Tensor]:
        """The training views of global batch ``batch`` of ``epoch``: shorter sides, crop rows and
        columns, mirror flags and lighting offsets (N x 3), drawn on the CPU from one generator."""
        g, n = seeded_generator(self.seed, epoch, batch), self.batch_size
        smin, smax = self.scale
        sizes = torch.randint(smin, smax + 1, (n,), generator=g)
        u = torch.rand(3, n, generator=g, dtype=torch.float64)
        h, w = self.images.shape[-2:]
        shapes = torch.tensor([resized_shape(h, w, s) for s in sizes.tolist()])
        tops = (u[0] * (shapes[:, 0] - self.crop + 1)).long()
        lefts = (u[1] * (shapes[:, 1] - self.crop + 1)).long()
        offsets = self.lighting.offsets(n, g).cpu()
        return {
            "sizes": sizes,
            "tops": tops,
            "lefts": lefts,
            "mirror": u[2] < 0.5,
            "lighting": offsets,
        }

    def batches(
        self, epoch: int = 0, start: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start, start+1, ...`` of ``epoch``."""
        if not self.train:
            for b in range(start, len(self)):
                part = slice(b * self.batch_size, (b + 1) * self.batch_size)
                yield self._test_views(self.images[part]), self.labels[part]
            return
        rank, world = self.shard
        order = torch.randperm(len(self.labels), generator=seeded_generator(self.seed, epoch))
        per = self.batch_size // world
        mine = slice(rank * per, (rank + 1) * per)
        for b in range(start, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size][mine].to(self.device)
            p = {k: v[mine].to(self.device) for k, v in self.view_params(epoch, b).items()}
            views = scale_crop_flip(
                self.images[idx], p["sizes"], p["tops"], p["lefts"], p["mirror"], self.crop
            )
            x = self.normalize(views)
            if self.lighting.std > 0:  # in [0, 1] pixel units: divided by the std after it
                x = x + p["lighting"][:, :, None, None].to(x.dtype) / getattr(
                    self.normalize, "std", 1.0
                )
            yield x, self.labels[idx]

    def _test_views(self, images: torch.Tensor) -> torch.Tensor:
        resized = resize_shorter(images, self.scale[0])
        if self.views == "center":
            return self.normalize(TF.center_crop(resized, [self.crop, self.crop]))
        crops = torch.stack(TF.ten_crop(resized, [self.crop, self.crop]), 1)  # N x 10 x C x H x W
        return self.normalize(crops.flatten(0, 1)).unflatten(0, crops.shape[:2])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()
