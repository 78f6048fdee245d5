"""ImageNet-style class-per-folder image datasets, read by DataLoader workers, and their pixel mean.

    RESLAB_DATA=../shared/data uv run python -c "from reslab.data.imagefolder import ImageFolder; print(len(ImageFolder('../shared/data/imagenette/val')))"

:class:`ImageFolder` lists ``<root>/<class>/<image>`` files; :class:`ImageFolderLoader` decodes
them (:func:`reslab.data.decode.decode`) and draws each image's view
(:mod:`reslab.data.views`) in ``DataLoader`` workers, then subtracts the mean and adds PCA
lighting to the whole batch on its device (:mod:`reslab.data.transforms`). A file that cannot be
decoded raises :class:`~reslab.data.decode.CorruptImageError` naming it, or, with
``on_error="skip"`` (the config's ``data.skip_corrupt``), is left out of its batch and listed in
the loader's ``skipped``. :func:`imagenet_normalize` gives the input normalisation: ImageNet's
channel statistics, or the paper's per-pixel mean fitted on the training folder (and cached).
"""

from __future__ import annotations

import copy
import hashlib
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from reslab.data.decode import CorruptImageError, decode
from reslab.data.loaders import seeded_generator
from reslab.data.transforms import Lighting, Normalize
from reslab.data.views import CenterCrop, TenCrop
from reslab.errors import DataError, MissingFileError
from reslab.files import atomic_write

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ON_ERROR = ("raise", "skip")


def scan_folder(root: str | Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted sub-folders) and (path, class index) for every image below ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(
            f"image folder {root} does not exist (expected one sub-folder per class)"
        )
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise MissingFileError(
            f"{root} has no class sub-folders (expected <root>/<class>/<image>.JPEG)"
        )
    samples = []
    for index, name in enumerate(classes):
        found = [
            (path, index)
            for path in sorted((root / name).rglob("*"))
            if path.suffix.lower() in IMG_EXTENSIONS and path.is_file()
        ]
        if not found:
            raise DataError(
                f"class folder {root / name} holds no {'/'.join(IMG_EXTENSIONS)} images; every "
                f"sub-folder of {root} is a class: add images to it or remove it"
            )
        samples += found
    return classes, samples


class ImageFolder(Dataset):
    """Class-per-folder images; ``transform`` maps a uint8 RGB image to the returned tensor."""

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        on_error: str = "raise",
    ) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(
                f"on_error={on_error!r} is invalid; valid choices: {', '.join(ON_ERROR)}"
            )
        self.root, self.transform, self.on_error = Path(root), transform, on_error
        self.classes, self.samples = scan_folder(root)

    def __len__(self) -> int:
        return len(self.samples)

    def strided(self, limit: int) -> ImageFolder:
        """A copy holding every k-th sample, k chosen so that at most ``limit`` remain (all classes
        stay represented in a class-sorted folder); ``limit=0`` keeps everything."""
        if limit <= 0 or limit >= len(self.samples):
            return self
        subset = copy.copy(self)
        step = -(-len(self.samples) // limit)
        subset.samples = self.samples[::step]
        return subset

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor | None, int, str]:
        """``key``: an index, or (index, seed) to draw the sample's augmentation from ``seed``."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[index]
        try:
            image = decode(path)
        except CorruptImageError:
            if self.on_error == "raise":
                raise
            return None, label, str(path)
        if self.transform is not None:
            if getattr(self.transform, "takes_rng", False):
                image = self.transform(image, random.Random(seed) if seed is not None else None)
            else:
                image = self.transform(image)
        return image, label, str(path)


def collate(
    batch: list[tuple[torch.Tensor | None, int, str]],
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack the decoded images; return the paths of those that were skipped as corrupt."""
    kept = [(img, label) for img, label, _ in batch if img is not None]
    skipped = [path for img, _, path in batch if img is None]
    if not kept:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long), skipped
    return torch.stack([k[0] for k in kept]), torch.tensor([k[1] for k in kept]), skipped


class EpochSampler(Sampler):
    """This process's samples of an epoch, in global-batch order, from batch ``start`` on.

    Training: the order of epoch ``e`` is a permutation seeded by ``(seed, e)`` and sample ``i`` of it
    carries the seed ``(seed, e, i)`` for its augmentation, so any process count and any resume point
    see exactly the views of a single uninterrupted process. Each global batch is split evenly across
    the ``world`` processes. Evaluation: every sample once, in order, no seeds.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        train: bool,
        seed: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.n, self.batch_size, self.train, self.seed = n, batch_size, train, seed
        self.rank, self.world = shard
        self.epoch = self.start = 0

    def batches_per_epoch(self) -> int:
        return self.n // self.batch_size if self.train else -(-self.n // self.batch_size)

    def __iter__(self):
        if not self.train:
            yield from range(self.n)
            return
        order = torch.randperm(self.n, generator=seeded_generator(self.seed, self.epoch)).tolist()
        per_rank = self.batch_size // self.world
        for b in range(self.start, self.batches_per_epoch()):
            first = b * self.batch_size + self.rank * per_rank
            for i in range(first, first + per_rank):
                yield order[i], int(seeded_generator(self.seed, self.epoch, i).initial_seed())

    def __len__(self) -> int:
        if not self.train:
            return self.n
        return (self.batches_per_epoch() - self.start) * (self.batch_size // self.world)


class ImageFolderLoader:
    """Batches of (normalised float images on ``device``, labels) from an :class:`ImageFolder`.

    Decoding and the per-image geometry run in ``workers`` processes; mean subtraction and (for
    training) lighting noise run on the whole batch on ``device``. ``batch_size`` is the global batch;
    with ``shard=(rank, world)`` this process gets its slice of each. ``skipped`` lists the files
    left out as corrupt (with ``on_error="skip"``).
    """

    def __init__(
        self,
        dataset: ImageFolder,
        batch_size: int,
        normalize: Callable[[torch.Tensor], torch.Tensor],
        *,
        train: bool,
        lighting: float = 0.1,
        workers: int = 2,
        seed: int = 0,
        device: torch.device | str = "cpu",
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if train and batch_size % shard[1]:
            raise ValueError(f"global batch {batch_size} is not divisible by {shard[1]} processes")
        self.dataset, self.normalize, self.train = dataset, normalize, train
        self.device, self.seed, self.shard = torch.device(device), seed, shard
        self.lighting = Lighting(lighting if train else 0.0).to(self.device)
        self.skipped: list[str] = []
        self.batch_size = batch_size
        self.sampler = EpochSampler(len(dataset), batch_size, train=train, seed=seed, shard=shard)
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size // shard[1] if train else batch_size,
            sampler=self.sampler,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
        )

    def __len__(self) -> int:
        return self.sampler.batches_per_epoch()

    def batches(
        self, epoch: int = 0, start: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start, start+1, ...`` of ``epoch``."""
        self.sampler.epoch, self.sampler.start = epoch, start
        rank, world = self.shard
        for b, (images, labels, skipped) in enumerate(self.loader, start):
            self.skipped.extend(skipped)
            if len(labels) == 0:
                continue
            images = images.to(self.device, non_blocking=True)
            if images.dim() == 5:  # multi-view test batches: N x K x C x H x W
                x = self.normalize(images.flatten(0, 1)).unflatten(0, images.shape[:2])
            else:
                x = self.normalize(images)
                if self.train and self.lighting.std > 0:
                    # drawn for the global batch, this rank's part taken; defined in [0, 1] pixel
                    # units, so divided by the normalisation's std when added after it
                    offsets = self.lighting.offsets(
                        self.batch_size, seeded_generator(self.seed, epoch, b)
                    )
                    per_rank = self.batch_size // world
                    shift = offsets[rank * per_rank : rank * per_rank + len(x), :, None, None]
                    x = x + shift / getattr(self.normalize, "std", 1.0)
            yield x, labels.to(self.device, non_blocking=True)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()


def imagenet_normalize(
    mode: str = "channel",
    dataset: ImageFolder | None = None,
    limit: int = 10000,
    *,
    resize: int = 256,
    crop: int = 224,
    workers: int = 0,
    cache: str | Path | None = None,
) -> torch.nn.Module:
    """ImageNet input normalisation.

    ``"channel"``: the standard ImageNet per-channel mean and std. ``"pixel"`` (the paper): the
    per-pixel mean of the centre ``crop`` crops (shorter side ``resize``) of up to ``limit`` images
    of the training ``dataset``, spread over it (std 1); at other input sizes the mean image is
    resized to match. The images are decoded by ``workers`` processes. With ``cache`` (a
    ``.safetensors`` path) the mean is fitted once: the file records its inputs (folder, sizes,
    limit and a digest of the file list) and is used again while they are unchanged.
    """
    if mode == "channel":
        return Normalize(
            torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
            torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
            "channel",
        )
    if mode != "pixel":
        raise ValueError(f"normalization={mode!r} is invalid; valid choices: channel, pixel")
    if dataset is None:
        raise ValueError("normalization='pixel' needs the training dataset to fit the mean image")
    subset = copy.copy(dataset)
    subset.samples = dataset.samples[:: max(1, len(dataset.samples) // limit)][:limit]
    subset.transform = CenterCrop(resize, crop)
    listing = "\n".join(str(p) for p, _ in subset.samples).encode()
    inputs = {
        "folder": str(dataset.root),
        "resize": str(resize),
        "crop": str(crop),
        "limit": str(limit),
        "images": str(len(subset.samples)),
        "files_sha256": hashlib.sha256(listing).hexdigest(),
    }
    if cache is not None and Path(cache).is_file():
        from safetensors import safe_open

        with safe_open(str(cache), framework="pt") as f:
            if f.metadata() == inputs:
                return Normalize(f.get_tensor("mean"), torch.ones(1, 1, 1, 1), "pixel")
    total, n = torch.zeros(3, crop, crop, dtype=torch.float64), 0
    loader = DataLoader(subset, batch_size=32, num_workers=workers, collate_fn=collate)
    for images, _, _ in loader:
        total, n = total + images.double().sum(0), n + len(images)
    mean = (total / max(n, 1) / 255)[None].float()
    if cache is not None:
        from safetensors.torch import save

        atomic_write(cache, save({"mean": mean.contiguous()}, metadata=inputs))
    return Normalize(mean, torch.ones(1, 1, 1, 1), "pixel")


def eval_loader(
    root: str | Path,
    views: str,
    resize: int,
    crop: int,
    batch_size: int,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    *,
    device: torch.device | str = "cpu",
    limit: int = 0,
    workers: int = 2,
    on_error: str = "raise",
) -> ImageFolderLoader:
    """Test batches of an image folder: ``views`` "center" (shorter side ``resize``, centre
    ``crop``) or "tencrop" (N x 10 x C x H x W, ``batch_size`` counting views); at most ``limit``
    images spread over the classes (0: all); ``on_error`` as :class:`ImageFolder`'s."""
    if views == "tencrop":
        transform, batch_size = TenCrop(resize, crop), max(1, batch_size // 10)
    else:
        transform = CenterCrop(resize, crop)
    dataset = ImageFolder(root, transform, on_error).strided(limit)
    return ImageFolderLoader(
        dataset, batch_size, normalize, train=False, workers=workers, device=device
    )
