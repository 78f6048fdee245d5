"""Input-pipeline throughput: CIFAR batched augmentation and the ImageNet-style JPEG pipeline.

    RESLAB_DATA=../shared/data uv run reslab bench data --out results/bench

Each figure is images per second over a timed pass after a warm-up, on this machine, compared in the
same run with a typical per-sample baseline (torchvision transforms on PIL images via a DataLoader).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch


def _rate(fn, images: int, repeat: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return images / best


def bench_cifar_augmentation(
    data_dir: str | Path | None, n: int = 10240, batch: int = 128
) -> dict[str, Any]:
    """reslab's batched pad-crop-flip + normalisation against per-sample torchvision transforms."""
    import torchvision.transforms as T
    from PIL import Image

    from reslab.data.cifar import load_cifar10
    from reslab.data.loaders import TensorLoader
    from reslab.data.transforms import Normalize

    images, labels = load_cifar10(data_dir, "train")
    images, labels = images[:n], labels[:n]
    loader = TensorLoader(images, labels, batch, Normalize.fit(images), train=True)

    def ours():
        for _ in loader.batches(0):
            pass

    pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images[:2048]]
    baseline_tf = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        ]
    )

    def baseline():
        torch.stack([baseline_tf(im) for im in pil])

    ours_rate, base_rate = _rate(ours, len(loader) * batch), _rate(baseline, len(pil))
    return {
        "name": "cifar_augmentation",
        "images_per_s": ours_rate,
        "baseline_images_per_s": base_rate,
        "speedup": ours_rate / base_rate,
        "batch_size": batch,
    }


def bench_jpeg_pipeline(
    data_dir: str | Path | None, workers: int = 2, limit: int = 1024, batch: int = 64
) -> list[dict[str, Any]]:
    """Decode + training/test views of the Imagenette JPEGs through the multi-worker loader."""
    from reslab.data.imagefolder import ImageFolder, ImageFolderLoader, imagenet_normalize
    from reslab.data.paths import data_root
    from reslab.data.views import CenterCrop, ScaleAugment

    root = data_root(data_dir) / "imagenette" / "val"
    rows = []
    for name, transform, train in (
        ("jpeg_train_scale_aug", ScaleAugment(), True),
        ("jpeg_eval_center_crop", CenterCrop(), False),
    ):
        subset = ImageFolder(root, transform).strided(limit)
        loader = ImageFolderLoader(
            subset, batch, imagenet_normalize(), train=train, workers=workers
        )
        n = len(loader) * batch if train else len(subset)

        def run(loader=loader):
            for _ in loader:
                pass

        rows.append(
            {"name": name, "images_per_s": _rate(run, n, repeat=2), "workers": workers, "images": n}
        )
    return rows


def bench_imagefolder_paths(
    data_dir: str | Path | None, workers: int = 2, batch: int = 256, batches: int = 8
) -> dict[str, Any]:
    """The imagenette64 protocol's training batches (shorter side in [73, 137], 64x64 crop, flip,
    lighting) from ``imagenette/train``: held in memory and augmented a batch at a time, against
    the DataLoader path (``workers`` processes decoding JPEGs and augmenting each image), the
    same batches timed in each; the in-memory path's one decoding pass is timed apart."""
    from reslab.data.imagefolder import ImageFolder, ImageFolderLoader
    from reslab.data.inmemory import FolderTensorLoader, decode_folder, pixel_mean
    from reslab.data.paths import data_root
    from reslab.data.transforms import Normalize
    from reslab.data.views import ScaleAugment

    root = data_root(data_dir) / "imagenette" / "train"
    start = time.perf_counter()
    folder = decode_folder(root)
    decode_s = time.perf_counter() - start
    normalize = Normalize(pixel_mean(folder.images, 73, 64), torch.ones(1, 1, 1, 1), "pixel")
    memory = FolderTensorLoader(
        folder, batch, normalize, train=True, scale=(73, 137), crop=64, lighting=0.1
    )
    files = ImageFolderLoader(
        ImageFolder(root, ScaleAugment(73, 137, 64)),
        batch,
        normalize,
        train=True,
        lighting=0.1,
        workers=workers,
    )

    def first(loader) -> None:
        for b, _ in enumerate(loader.batches(0)):
            if b + 1 == batches:
                break

    ours, base = (
        _rate(lambda: first(memory), batch * batches, 2),
        _rate(lambda: first(files), batch * batches, 2),
    )
    return {
        "name": "imagenette64_train_views",
        "images_per_s": ours,
        "baseline_images_per_s": base,
        "speedup": ours / base,
        "baseline": f"DataLoader, {workers} workers decoding JPEGs",
        "decode_once_s": round(decode_s, 2),
        "images": len(folder.labels),
        "batch_size": batch,
    }


def run(data_dir: str | Path | None = None, workers: int = 2) -> list[dict[str, Any]]:
    return [
        bench_cifar_augmentation(data_dir),
        *bench_jpeg_pipeline(data_dir, workers),
        bench_imagefolder_paths(data_dir, workers),
    ]
