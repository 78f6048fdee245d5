"""What a run reads, built from its config: loaders, the input normalisation and the class names.

    RESLAB_DATA=../shared/data uv run python -c "from reslab.config import load_config; from reslab.data.builders import build_data; print(build_data(load_config('imagenette64/resnet18'), 'cpu').note)"

CIFAR-10 lives in memory as one uint8 tensor (:class:`~reslab.data.loaders.TensorLoader`). An
image folder is held in memory too when its decoded images fit ``data.memory_budget_mb`` and have
one size (``data.in_memory=auto``; :class:`~reslab.data.inmemory.FolderTensorLoader`, augmented a
batch at a time), else read by DataLoader workers decoding JPEGs
(:class:`~reslab.data.imagefolder.ImageFolderLoader`, the path for ImageNet itself). ``note``
says which, and why, for the run's log.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reslab.config import Config
from reslab.data.cifar import CLASSES as CIFAR10_CLASSES
from reslab.data.cifar import load_cifar10
from reslab.data.imagefolder import ImageFolder, ImageFolderLoader, eval_loader, imagenet_normalize
from reslab.data.inmemory import (
    FolderTensorLoader,
    decode_folder,
    holdout_split,
    memory_plan,
    pixel_mean,
)
from reslab.data.loaders import TensorLoader
from reslab.data.paths import data_root
from reslab.data.transforms import Normalize
from reslab.data.views import ScaleAugment
from reslab.errors import DataError


@dataclass
class DataBundle:
    """Everything a run reads: loaders, the input normalisation and the class names."""

    train: Any  # .batches(epoch, start), len() = batches per epoch
    eval: Any  # periodic evaluation (CIFAR: the eval split; folders: centre crops)
    final: Any  # the final test (folders: 10-crop by default)
    normalize: Normalize
    classes: list[str]
    note: str = ""  # how the data is read, for the run's log


def fit_normalizer(cfg: Config, train_images: torch.Tensor) -> Normalize:
    """The input normalisation of ``cfg``, fitted on the training split's images."""
    return Normalize.fit(train_images, cfg.data.normalization)


def build_data(
    cfg: Config,
    device: torch.device | str,
    shard: tuple[int, int] = (0, 1),
    run_dir: Path | None = None,
) -> DataBundle:
    """The loaders of ``cfg`` on ``device``; ``shard=(rank, world_size)`` gives this process's
    slice of every global training batch; an image folder's pixel mean is kept in ``run_dir``."""
    device = torch.device(device)
    if cfg.data.dataset == "imagefolder":
        return build_imagefolder(cfg, device, shard, run_dir)
    return build_cifar(cfg, device, shard)


def build_cifar(cfg: Config, device: torch.device, shard: tuple[int, int] = (0, 1)) -> DataBundle:
    """CIFAR-10 loaders, datasets resident on ``device``."""
    train_x, train_y = load_cifar10(cfg.data.data_dir, cfg.data.split)
    if cfg.train.batch_size > len(train_y):
        raise DataError(
            f"train.batch_size={cfg.train.batch_size} is more than the {len(train_y):,} training "
            f"images of CIFAR-10 {cfg.data.split}; lower it (the paper's is 128)"
        )
    eval_x, eval_y = load_cifar10(cfg.data.data_dir, cfg.data.eval_split)
    normalize = fit_normalizer(cfg, train_x).to(device)
    layout = torch.channels_last if cfg.train.channels_last else torch.contiguous_format

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return normalize(x).contiguous(memory_format=layout)

    common = {"normalize": prepare, "seed": cfg.train.seed, "device": device}
    train = TensorLoader(
        train_x, train_y, cfg.train.batch_size, train=True, pad=cfg.data.pad, shard=shard, **common
    )
    test = TensorLoader(eval_x, eval_y, cfg.train.eval_batch_size, train=False, **common)
    note = f"CIFAR-10 in memory: {len(train_y):,} training, {len(eval_y):,} test images"
    return DataBundle(train, test, test, normalize, list(CIFAR10_CLASSES), note)


def _samples(cfg: Config) -> tuple[Path, ImageFolder, list, list]:
    """(root, the training folder, training samples, evaluation samples): with ``data.holdout``
    the evaluation samples are held out of the training folder, else they are ``data.eval_dir``'s
    (at most ``data.eval_limit`` of them, spread over the classes)."""
    d = cfg.data
    root = data_root(d.data_dir)
    train_folder = ImageFolder(root / d.train_dir)
    if d.holdout:
        train = holdout_split(train_folder.samples, d.holdout, "train")
        evaluation = holdout_split(train_folder.samples, d.holdout, "holdout")
    else:
        eval_folder = ImageFolder(root / d.eval_dir)
        if eval_folder.classes != train_folder.classes:
            raise DataError(
                f"{root / d.eval_dir} and {root / d.train_dir} have different class folders"
            )
        train, evaluation = train_folder.samples, eval_folder.samples
    if d.eval_limit and d.eval_limit < len(evaluation):
        evaluation = evaluation[:: -(-len(evaluation) // d.eval_limit)]
    return root, train_folder, train, evaluation


def build_imagefolder(
    cfg: Config, device: torch.device, shard: tuple[int, int] = (0, 1), run_dir: Path | None = None
) -> DataBundle:
    """Image-folder loaders: scale augmentation + lighting for training, centre crops for periodic
    evaluation and ``data.test_views`` (10-crop by default) for the final test, in memory or by
    DataLoader workers (see the module doc)."""
    d = cfg.data
    root, folder, train_samples, eval_samples = _samples(cfg)
    if cfg.train.batch_size > len(train_samples):
        raise DataError(
            f"{root / d.train_dir} has {len(train_samples):,} training images, fewer than one "
            f"batch (train.batch_size={cfg.train.batch_size}); lower train.batch_size"
        )
    where = f"{d.train_dir} (every {d.holdout}th held out)" if d.holdout else d.train_dir
    fits, why = memory_plan(train_samples + eval_samples, d.memory_budget_mb)
    if d.in_memory is True or (d.in_memory == "auto" and fits):
        bundle = _in_memory(cfg, device, shard, root, folder.classes, train_samples, eval_samples)
        bundle.note = f"{where} in memory: {why}"
        return bundle
    bundle = _from_files(cfg, device, shard, run_dir, folder, train_samples, eval_samples)
    reason = "data.in_memory=false" if d.in_memory is False else why
    bundle.note = f"{where} read by {d.workers} DataLoader workers ({reason})"
    return bundle


def _in_memory(cfg, device, shard, root, classes, train_samples, eval_samples) -> DataBundle:
    d, t = cfg.data, cfg.train
    on_error = "skip" if d.skip_corrupt else "raise"
    train_set = decode_folder(root / d.train_dir, train_samples, on_error)
    eval_set = decode_folder(
        root / d.train_dir if d.holdout else root / d.eval_dir, eval_samples, on_error
    )
    if d.normalization == "pixel":
        mean = pixel_mean(train_set.images, d.scale[0], d.crop)
        normalize = Normalize(mean, torch.ones(1, 1, 1, 1), "pixel")
    else:
        normalize = imagenet_normalize("channel")
    normalize = normalize.to(device)
    common = {"scale": (d.scale[0], d.scale[1]), "crop": d.crop, "device": device}
    train = FolderTensorLoader(
        train_set,
        t.batch_size,
        normalize,
        train=True,
        lighting=d.lighting,
        seed=t.seed,
        shard=shard,
        **common,
    )

    def test(views: str) -> FolderTensorLoader:
        batch = t.eval_batch_size if views == "center" else max(1, t.eval_batch_size // 10)
        return FolderTensorLoader(eval_set, batch, normalize, train=False, views=views, **common)

    return DataBundle(train, test("center"), test(d.test_views), normalize, classes)


def _from_files(cfg, device, shard, run_dir, folder, train_samples, eval_samples) -> DataBundle:
    d, t = cfg.data, cfg.train
    on_error = "skip" if d.skip_corrupt else "raise"
    train_set = copy.copy(folder)
    train_set.samples, train_set.transform = train_samples, ScaleAugment(*d.scale, d.crop)
    train_set.on_error = on_error
    cache = run_dir / "pixel_mean.safetensors" if run_dir is not None else None
    normalize = imagenet_normalize(
        d.normalization, train_set, resize=d.scale[0], crop=d.crop, workers=d.workers, cache=cache
    ).to(device)
    eval_root = folder.root if d.holdout else data_root(d.data_dir) / d.eval_dir

    def test(views: str) -> ImageFolderLoader:
        loader = eval_loader(
            eval_root,
            views,
            d.scale[0],
            d.crop,
            t.eval_batch_size,
            normalize,
            device=device,
            workers=d.workers,
            on_error=on_error,
        )
        loader.dataset.samples = eval_samples
        loader.sampler.n = len(eval_samples)
        return loader

    train = ImageFolderLoader(
        train_set,
        t.batch_size,
        normalize,
        train=True,
        lighting=d.lighting,
        workers=d.workers,
        seed=t.seed,
        device=device,
        shard=shard,
    )
    return DataBundle(train, test("center"), test(d.test_views), normalize, folder.classes)
