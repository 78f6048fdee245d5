"""Layer responses (the paper's Fig. 7): std of each residual-branch layer's output after BN and
before the ReLU or the addition, over the CIFAR-10 test set.

    uv run reslab analyze responses --model plain20 --model resnet20 --limit 1000 --out runs/analysis

For basic blocks these are the two 3x3 layers of every block (``bn1``, ``bn2``); for bottleneck
blocks the three BN layers of the branch; for pre-activation blocks the BNs of the branch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def response_layers(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """(name, BN module) of every branch layer whose post-BN output Fig. 7 measures, in order."""
    layers = []
    for stage in model.stage_names:
        for i, block in enumerate(getattr(model, stage)):
            for name, module in block.named_children():
                if isinstance(module, nn.BatchNorm2d) and name.startswith("bn"):
                    layers.append((f"{stage}.{i}.{name}", module))
    return layers


@torch.no_grad()
def layer_responses(model: nn.Module, batches) -> list[float]:
    """Std of each response layer's output over all images, channels and positions (eval mode)."""
    model.eval()
    layers = response_layers(model)
    sums = torch.zeros(len(layers), 3, dtype=torch.float64)  # count, sum, sum of squares

    def hook(index: int):
        def record(_module, _inputs, output):
            out = output.detach().double()
            sums[index] += torch.stack(
                [
                    torch.tensor(float(out.numel()), dtype=torch.float64),
                    out.sum(),
                    (out * out).sum(),
                ]
            )

        return record

    handles = [module.register_forward_hook(hook(i)) for i, (_, module) in enumerate(layers)]
    try:
        for x, _ in batches:
            model(x)
    finally:
        for h in handles:
            h.remove()
    n, s, ss = sums.unbind(1)
    return (ss / n - (s / n) ** 2).clamp_min(0).sqrt().tolist()


def analyze(
    models: list[tuple[str, nn.Module, str | None]], batches, limit: int
) -> tuple[dict[str, Any], str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    record: dict[str, Any] = {"kind": "responses", "limit": limit, "models": []}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    lines = []
    for label, model, weights in models:
        std = layer_responses(model, batches)
        names = [n for n, _ in response_layers(model)]
        record["models"].append(
            {
                "model": label,
                "weights": weights,
                "layers": names,
                "std": std,
                "sorted": sorted(std, reverse=True),
                "mean_std": sum(std) / len(std),
            }
        )
        style = "--" if not getattr(model, "residual", True) else "-"
        ax1.plot(range(1, len(std) + 1), std, style, label=label)
        ax2.plot(range(1, len(std) + 1), sorted(std, reverse=True), style, label=label)
        lines.append(
            f"{label:<24} layers {len(std):>4}  mean std {sum(std) / len(std):.3f}  max {max(std):.3f}"
        )
    for ax, title in ((ax1, "layer index (original)"), (ax2, "layer index (sorted by magnitude)")):
        ax.set_xlabel(title)
        ax.set_ylabel("std")
        ax.legend()
    fig.suptitle(f"Layer responses on the CIFAR-10 test set ({limit or 10000} images)")
    summary = "Std of each layer's output after BN, before ReLU/addition (Fig. 7)\n" + "\n".join(
        lines
    )
    return record, summary, fig
