"""What every analysis needs: a model (fresh or with weights), CIFAR-10 test batches, output files.

uv run python -c "from reslab.analysis.common import load_model; print(load_model('resnet20', None))"
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reslab.models import create_model


def load_model(name: str, weights: str | Path | None, seed: int = 0) -> nn.Module:
    """``name`` He-initialised (seeded), or with ``weights``: a ``model.safetensors`` (or a run
    directory holding one) or a plain state-dict file (loaded without executing code)."""
    torch.manual_seed(seed)
    model = create_model(name)
    if weights is None:
        return model
    path = Path(weights)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        from reslab.engine.checkpoint import load_checkpoint

        state = load_checkpoint(path)
        state = state.get("model", state.get("state_dict", state))
        state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"{path} does not hold {name} weights: {str(err).splitlines()[0]}"
        ) from None
    return model


def normalizer_for(weights: str | Path | None, data_dir: str | Path | None):
    """The input normalisation stored with the weights, else the paper's per-pixel mean of the
    CIFAR-10 training set."""
    from reslab.data.cifar import load_cifar10
    from reslab.data.transforms import Normalize
    from reslab.engine.weights import normalizer_from_metadata

    if weights is not None:
        path = Path(weights)
        path = path / "model.safetensors" if path.is_dir() else path
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                norm = normalizer_from_metadata(dict(f.metadata() or {}))
            if norm is not None:
                return norm
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


@torch.no_grad()
def error_rate(model: nn.Module, batches) -> float:
    """Top-1 error (percent) of ``model`` in eval mode."""
    model.eval()
    wrong = total = 0
    for x, y in batches:
        wrong += (model(x).argmax(1) != y).sum().item()
        total += len(y)
    return 100 * wrong / total


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
