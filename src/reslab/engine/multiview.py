"""The paper's test-time views: 10-crop and fully-convolutional multi-scale testing.

    uv run python -c "from reslab.engine.multiview import multiscale_probs; help(multiscale_probs)"

Scores are softmax probabilities averaged over the views. Multi-scale testing runs the whole image
(no crop) with its shorter side at each of {224, 256, 384, 480, 640}: the networks end in global
average pooling, so they accept any input size, which is the fully-convolutional form the paper uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from reslab.data.imagefolder import MULTISCALE_SIZES, resize_shorter


@torch.no_grad()
def view_probs(model: nn.Module, views: torch.Tensor) -> torch.Tensor:
    """Softmax averaged over views: ``views`` is N x K x C x H x W (normalised), result N x classes."""
    n, k = views.shape[:2]
    probs = F.softmax(model(views.flatten(0, 1)).float(), dim=1)
    return probs.view(n, k, -1).mean(1)


@torch.no_grad()
def multiscale_probs(
    model: nn.Module,
    image: torch.Tensor,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    sizes: Iterable[int] = MULTISCALE_SIZES,
    flip: bool = False,
) -> torch.Tensor:
    """Softmax of a uint8 image (3 x H x W) averaged over shorter sides ``sizes`` (and mirrors)."""
    device = next(model.parameters()).device
    scores = []
    for size in sizes:
        x = normalize(resize_shorter(image, size)[None].to(device))
        batch = torch.cat([x, x.flip(-1)]) if flip else x
        scores.append(F.softmax(model(batch).float(), dim=1))
    return torch.cat(scores).mean(0)


def topk_errors(probs: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """Numbers of top-1 and top-5 errors."""
    topk = probs.topk(min(5, probs.shape[1]), dim=1).indices
    top1 = (topk[:, 0] != labels).sum().item()
    top5 = (~(topk == labels[:, None]).any(1)).sum().item()
    return top1, top5


@torch.no_grad()
def evaluate_views(
    model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, float]:
    """Top-1/top-5 error (percent) over a loader of N x K x C x H x W view batches (e.g. 10-crop)."""
    model.eval()
    top1 = top5 = n = 0
    for views, labels in loader:
        e1, e5 = topk_errors(view_probs(model, views), labels)
        top1, top5, n = top1 + e1, top5 + e5, n + len(labels)
    return {"error": 100 * top1 / n, "top5_error": 100 * top5 / n, "images": n}
