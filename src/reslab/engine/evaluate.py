"""Evaluation, in one place: the engine's periodic and final tests, ``reslab eval``, the analyses.

    uv run reslab eval runs/demo --limit 1000

:func:`evaluate` scores a model on any iterable of (images, labels) batches, single views or
N x K x C x H x W multi-view batches (10-crop: softmax averaged over the views).
:func:`evaluate_multiscale` is the paper's fully-convolutional multi-scale test: the whole image at
shorter sides {224, 256, 384, 480, 640}, softmax averaged (the networks end in global average
pooling, so they take any input size). :func:`evaluate_weights` is ``reslab eval``: a weights file
and the data it was trained for, in, the test errors out.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reslab.data.decode import decode
from reslab.data.imagefolder import ImageFolder
from reslab.data.views import MULTISCALE_SIZES, resize_shorter
from reslab.engine.runtime import autocast
from reslab.errors import ConfigError, WeightsError

VIEWS = ("single", "center", "tencrop", "multiscale")


@torch.no_grad()
def view_probs(model: nn.Module, views: torch.Tensor) -> torch.Tensor:
    """Softmax averaged over views: ``views`` is N x K x C x H x W (normalised), result N x classes."""
    n, k = views.shape[:2]
    probs = F.softmax(model(views.flatten(0, 1)).float(), dim=1)
    return probs.view(n, k, -1).mean(1)


def topk_errors(scores: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """Numbers of top-1 and top-5 errors of ``scores`` (logits or probabilities)."""
    topk = scores.topk(min(5, scores.shape[1]), dim=1).indices
    top1 = (topk[:, 0] != labels).sum().item()
    top5 = (~(topk == labels[:, None]).any(1)).sum().item()
    return top1, top5


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], precision: str = "fp32"
) -> dict[str, float]:
    """Top-1 / top-5 error (percent) and mean loss of ``model`` in eval mode, without gradients;
    the model's training mode is restored afterwards."""
    was_training = model.training
    model.eval()
    loss = top1 = top5 = n = 0
    try:
        for images, labels in batches:
            with autocast(images.device, precision):
                if images.dim() == 5:  # N x K views: softmax averaged over the views
                    logits = view_probs(model, images).clamp_min(1e-12).log()
                else:
                    logits = model(images).float()
            loss += F.cross_entropy(logits, labels, reduction="sum").item()
            e1, e5 = topk_errors(logits, labels)
            top1, top5, n = top1 + e1, top5 + e5, n + len(labels)
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("evaluate() got no batches")
    return {"error": 100 * top1 / n, "top5_error": 100 * top5 / n, "loss": loss / n, "images": n}


def error_rate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 error (percent) of ``model`` in eval mode."""
    return evaluate(model, batches)["error"]


@torch.no_grad()
def multiscale_probs(
    model: nn.Module,
    image: torch.Tensor,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    sizes: Iterable[int] = MULTISCALE_SIZES,
) -> torch.Tensor:
    """Softmax of a uint8 image (3 x H x W) averaged over the shorter sides ``sizes``."""
    device = next(model.parameters()).device
    scores = [
        F.softmax(model(normalize(resize_shorter(image, size)[None].to(device))).float(), dim=1)
        for size in sizes
    ]
    return torch.cat(scores).mean(0)


def evaluate_multiscale(
    model: nn.Module, dataset: ImageFolder, normalize: Callable[[torch.Tensor], torch.Tensor]
) -> dict[str, float]:
    """Top-1/top-5 error (percent) of multi-scale testing over every image of ``dataset``."""
    was_training = model.training
    model.eval()
    top1 = top5 = 0
    try:
        for path, label in dataset.samples:
            probs = multiscale_probs(model, decode(path), normalize)
            e1, e5 = topk_errors(probs[None], torch.tensor([label], device=probs.device))
            top1, top5 = top1 + e1, top5 + e5
    finally:
        model.train(was_training)
    n = len(dataset.samples)
    return {"error": 100 * top1 / n, "top5_error": 100 * top5 / n, "images": n}


def evaluate_weights(
    weights: str | Path,
    *,
    data_dir: str | Path | None = None,
    split: str = "test",
    eval_dir: str | None = None,
    views: str = "single",
    limit: int = 0,
    device: str = "auto",
    batch_size: int = 500,
) -> dict[str, Any]:
    """``reslab eval``: the test errors (``test_error``, ``test_top5_error``, percent) of a
    weights file (a run directory or a ``model.safetensors``) on the data it was trained for, with
    the number of ``images``, the ``split`` tested and the ``weights`` file.

    CIFAR-10 models are tested on ``split`` ("test", or "val5k" for weights trained on the 45k
    split); image-folder models on ``eval_dir`` (default: the run's) with ``views`` "center",
    "tencrop" or "multiscale". Images the weights' metadata says they were trained on are
    refused: that would be no test. ``limit`` > 0 tests at most that many images (CIFAR: the
    first ones; folders: spread over the classes)."""
    from reslab.hub import weights_path

    if limit < 0 or batch_size < 1:
        raise ConfigError(f"--limit {limit} must be >= 0 and --batch-size {batch_size} >= 1")
    if views not in VIEWS:
        raise ConfigError(f"views={views!r} is invalid; valid choices: {', '.join(VIEWS)}")
    path = weights_path(weights)
    result, what = _evaluate_file(path, data_dir, split, eval_dir, views, limit, device, batch_size)
    return {
        "test_error": result["error"],
        "test_top5_error": result["top5_error"],
        "images": result["images"],
        "split": what,
        "weights": str(path),
    }


# CIFAR-10 split -> the training splits that hold some of its images (data/cifar.py: val5k is
# the last 500 images of each class of the 50k training set, train45k the other 45,000)
CIFAR_OVERLAPS = {
    "test": (),
    "val5k": ("train",),
    "train45k": ("train", "train45k"),
    "train": ("train", "train45k"),
}


def refuse_training_images(path: Path, split: str, train_split: str | None) -> None:
    """Testing on images the weights were trained on is no test: ``split`` is refused when the
    weights' metadata says (or, without ``train_split``, cannot rule out) that they trained on it."""
    overlapping = CIFAR_OVERLAPS.get(split, ())
    if not overlapping or (train_split is not None and train_split not in overlapping):
        return
    trained = (
        f"they were trained on {train_split!r}, which holds its images"
        if train_split is not None
        else "the file does not say which images they were trained on (no 'train_split')"
    )
    also = " (val5k tests runs trained with data.split=train45k)" if split == "val5k" else ""
    raise ConfigError(
        f"{path}: --split {split} is no test of these weights: {trained}; test them on --split "
        f"test{also}"
    )


def refuse_training_folder(path: Path, eval_dir: str, train_dir: str) -> None:
    """An image folder the weights were trained on (or one inside it, or holding it) is refused."""
    a, b = Path(os.path.normpath(eval_dir)), Path(os.path.normpath(train_dir))
    if a == b or a in b.parents or b in a.parents:
        raise ConfigError(
            f"{path}: --eval-dir {eval_dir} is no test of these weights: they were trained on "
            f"{train_dir}; give a folder of other images"
        )


def describe(result: dict[str, Any]) -> str:
    """One line about an :func:`evaluate_weights` result."""
    error = result["test_error"]
    return (
        f"{result['weights']}: {result['split']} error {error:.2f}% (accuracy {100 - error:.2f}%), "
        f"top-5 error {result['test_top5_error']:.2f}%, {result['images']} images"
    )


def _evaluate_file(path, data_dir, split, eval_dir, views, limit, device, batch_size):
    from reslab.data.cifar import load_cifar10
    from reslab.data.imagefolder import eval_loader
    from reslab.data.loaders import TensorLoader
    from reslab.data.paths import data_root
    from reslab.engine.runtime import resolve_device
    from reslab.weights.files import meta_int
    from reslab.weights.trained import load_trained

    trained = load_trained(path)
    device = resolve_device(device)
    model, meta, normalize = trained.model.to(device), trained.meta, trained.normalize.to(device)
    if meta.get("dataset", "cifar10") == "cifar10":
        if views not in ("single", "center"):
            raise ConfigError(
                f"{views} testing applies to image-folder models; CIFAR-10 models are tested on "
                "the single 32x32 view"
            )
        refuse_training_images(path, split, meta.get("train_split"))
        images, labels = load_cifar10(data_dir, split)
        if limit:
            images, labels = images[:limit], labels[:limit]
        loader = TensorLoader(images, labels, batch_size, normalize, train=False, device=device)
        return evaluate(model, loader), f"CIFAR-10 {split}"
    for key in ("train_dir", "eval_dir"):
        if not isinstance(meta.get(key), str) or not meta[key]:
            raise WeightsError(
                f"{path}: no {key!r} in its metadata (image-folder runs record it); the file's "
                "metadata is damaged"
            )
    eval_dir = eval_dir or meta["eval_dir"]
    refuse_training_folder(path, eval_dir, meta["train_dir"])
    root = data_root(data_dir) / eval_dir
    resize, crop = meta_int(meta, "resize", path), meta_int(meta, "crop", path)
    if views == "multiscale":
        dataset = ImageFolder(root).strided(limit)
        return evaluate_multiscale(model, dataset, normalize), f"{root} multi-scale"
    views = "center" if views == "single" else views
    loader = eval_loader(
        root, views, resize, crop, batch_size, normalize, device=device, limit=limit
    )
    return evaluate(model, loader), f"{root} {'10-crop' if views == 'tencrop' else 'centre crop'}"
