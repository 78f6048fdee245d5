"""What every analysis needs besides a model (``reslab.models.factory.load_model``): CIFAR-10
test batches normalised as the weights were trained, and the output files.

uv run python -c "from reslab.analysis.common import normalizer_for; print(normalizer_for(None, '../shared/data'))"
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def normalizer_for(weights: str | Path | None, data_dir: str | Path | None):
    """The input normalisation stored with the weights, else the paper's per-pixel mean of the
    CIFAR-10 training set."""
    from reslab.data.cifar import load_cifar10
    from reslab.data.transforms import Normalize
    from reslab.weights.files import find_weights, read_metadata
    from reslab.weights.trained import normalizer_from_metadata

    if weights is not None:
        path = Path(weights)
        if path.is_dir() or path.suffix == ".safetensors":
            path = find_weights(path)
            meta = read_metadata(path)
            if "normalize_mean" in meta:
                return normalizer_from_metadata(meta, path)
    train_x, _ = load_cifar10(data_dir, "train")
    return Normalize.fit(train_x, "pixel")


def cifar_test_batches(
    data_dir, limit: int, normalize, batch: int = 500
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``limit`` CIFAR-10 test images (all when 0), normalised, in batches."""
    from reslab.data.cifar import load_cifar10

    images, labels = load_cifar10(data_dir, "test")
    if limit:
        images, labels = images[:limit], labels[:limit]
    return [
        (normalize(images[i : i + batch]), labels[i : i + batch])
        for i in range(0, len(images), batch)
    ]


def write_outputs(out: str | Path, kind: str, record: dict[str, Any], summary: str, figure) -> Path:
    """``KIND.json``, ``KIND.png`` and ``KIND.txt`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{kind}.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / f"{kind}.txt").write_text(summary.rstrip() + "\n")
    figure.savefig(out / f"{kind}.png", dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return out


KINDS = ("responses", "lesion", "gradients", "shattered")


def run(
    kind: str,
    names: list[str],
    weights: list[str | None],
    *,
    data_dir: str | Path | None = None,
    limit: int = 1000,
    seed: int = 0,
    out: str | Path,
) -> tuple[str, Path]:
    """``reslab analyze KIND``: load the models (fresh He-initialised ones where ``weights`` is
    None), run the analysis on the first ``limit`` CIFAR-10 test images (0: all) and write
    ``KIND.json``, ``.png`` and ``.txt`` into ``out``; returns (the text summary, ``out``)."""
    from reslab.analysis import gradients, lesion, responses, shattered
    from reslab.errors import ConfigError
    from reslab.models.factory import load_model

    if kind not in KINDS:
        raise ConfigError(f"analysis {kind!r} is unknown; valid choices: {', '.join(KINDS)}")
    if limit < 0:
        raise ConfigError(f"--limit {limit} must be >= 0 (0: all 10,000 test images)")
    if weights and len(weights) != len(names):
        raise ConfigError(
            f"{len(names)} --model but {len(weights)} --weights; give one per model ('none' for fresh)"
        )
    weights = [None if w in (None, "none") else w for w in (weights or [None] * len(names))]
    if kind == "lesion" and len(names) != 1:
        raise ConfigError("lesion analyses one model at a time")
    models = []
    for name, w in zip(names, weights, strict=True):
        model = load_model(name, w, seed)
        if getattr(model, "stem_kind", "") != "cifar":
            raise ConfigError(f"{name}: the analyses run on CIFAR-family models (e.g. resnet20)")
        models.append((name if w is None else f"{name} ({w})", model, w))
    batches = cifar_test_batches(data_dir, limit, normalizer_for(weights[0], data_dir))
    x, y = batches[0]
    if kind == "responses":
        record, summary, fig = responses.analyze(models, batches, limit)
    elif kind == "lesion":
        record, summary, fig = lesion.analyze(*models[0][:2], batches, limit, seed=seed)
        record["weights"] = models[0][2]
    elif kind == "gradients":
        record, summary, fig = gradients.analyze(models, x[:64], y[:64])
    else:
        record, summary, fig = shattered.analyze(models, (x[0], x[1]), [1, 2, 4, 8, 16, 32, 50])
    record["limit"] = limit
    return summary, write_outputs(out, kind, record, summary, fig)
