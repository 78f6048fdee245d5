"""``reslab predict``: the most likely classes of images under trained weights.

    uv run reslab predict runs/demo photo.png --topk 3

Each image is prepared as the weights' own test view (CIFAR: resized to 32x32; image folders: the
shorter side resized and the centre crop taken) and normalised with the statistics stored beside
the weights. In a folder, files that are not readable images are listed and the rest predicted;
a folder where no file could be read is an error. A detector (a run of ``reslab detect train``) is
refused, naming ``reslab detect eval``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF

from reslab.data.decode import CorruptImageError, decode
from reslab.data.imagefolder import IMG_EXTENSIONS
from reslab.data.views import CenterCrop
from reslab.errors import ConfigError, DataError, MissingFileError, WeightsError

Prediction = tuple[Path, list[tuple[str, float]]]  # an image and its (class, probability) pairs


def image_files(target: str | Path) -> list[Path]:
    """``target`` itself, or every image file below the folder ``target`` (sorted)."""
    target = Path(target)
    if target.is_file():
        return [target]
    if not target.is_dir():
        raise MissingFileError(f"{target} is neither an image file nor a folder")
    files = sorted(p for p in target.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
    if not files:
        raise MissingFileError(f"no {'/'.join(IMG_EXTENSIONS)} images in {target}")
    return files


def refuse_detector(source: str | Path) -> None:
    """:class:`WeightsError` naming ``reslab detect eval`` when ``source`` (a run directory or
    weights file) holds a detector: metadata with the detection config and no classifier."""
    from reslab.weights.files import read_metadata

    source = Path(source)
    weights = source / "model.safetensors" if source.is_dir() else source
    if weights.suffix != ".safetensors" or not weights.is_file():
        return
    meta = read_metadata(weights)
    if "config" in meta and "model" not in meta:  # as `reslab detect train` saves it
        raise WeightsError(
            f"{source} is a detection run (a detector written by `reslab detect train`), not a "
            f"classifier for `reslab predict`; evaluate it with `reslab detect eval {source}`"
        )


def predict(
    weights: str | Path, target: str | Path, topk: int = 5, device: str = "auto"
) -> tuple[Iterator[Prediction], list[str]]:
    """Top-``topk`` (class, probability) of every image of ``target`` (a file or a folder).

    Returns the predictions (an iterator: they are computed as they are read) and a list that
    fills with ``"<file>: <why>"`` for each file that is not a readable image. A single file that
    is no image, or a folder where no file is one, is a :class:`DataError` (the folder's when the
    iterator ends); a detector's weights are a :class:`WeightsError` (see :func:`refuse_detector`)."""
    from reslab.engine.runtime import resolve_device
    from reslab.weights.files import meta_int
    from reslab.weights.trained import load_trained

    if topk < 1:
        raise ConfigError(f"--topk {topk} must be >= 1")
    files = image_files(target)
    refuse_detector(weights)
    trained = load_trained(weights)
    names, meta, device = trained.classes, trained.meta, resolve_device(device)
    model, normalize = trained.model.to(device).eval(), trained.normalize.to(device)
    if meta.get("dataset", "cifar10") == "cifar10":
        side = model.default_input_size[-1]

        def view(image):
            return TF.resize(image, [side, side], antialias=True)
    else:
        view = CenterCrop(
            meta_int(meta, "resize", trained.path), meta_int(meta, "crop", trained.path)
        )
    bad: list[str] = []

    def predictions() -> Iterator[Prediction]:
        for path in files:
            try:
                image = decode(path)
            except CorruptImageError as err:
                if len(files) == 1:
                    raise DataError(str(err)) from None
                bad.append(f"{path}: {err}")
                continue
            with torch.no_grad():
                logits = model(normalize(view(image)[None].to(device))).float()
            top = torch.softmax(logits, 1)[0].topk(min(topk, len(names)))
            yield (
                path,
                [
                    (names[i], p)
                    for i, p in zip(top.indices.tolist(), top.values.tolist(), strict=True)
                ],
            )
        if len(bad) == len(files):
            raise DataError(
                f"no image in {target} could be read: all {len(files)} "
                f"{'/'.join(IMG_EXTENSIONS)} files were skipped as unreadable"
            )

    return predictions(), bad
