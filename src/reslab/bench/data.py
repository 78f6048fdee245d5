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
    from reslab.data.imagefolder import (
        CenterCrop,
        ImageFolder,
        ImageFolderLoader,
        ScaleAugment,
        imagenet_normalize,
    )
    from reslab.data.paths import data_root

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


def run(data_dir: str | Path | None = None, workers: int = 2) -> list[dict[str, Any]]:
    return [bench_cifar_augmentation(data_dir), *bench_jpeg_pipeline(data_dir, workers)]
