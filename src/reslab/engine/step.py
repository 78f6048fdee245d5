"""The training step: one function that both the eager path and the whole-step CUDA graph run.

    uv run python -c "from reslab.engine.step import train_step; help(train_step)"

Forward under autocast, cross-entropy on fp32 logits, backward, the paper's SGD update with the
given learning rate, and the step's loss and error counts added to a device window, with no host
synchronisation, so that :class:`~reslab.engine.graphed.GraphedStep` can capture it whole.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reslab.engine.optim import PaperSGD


def train_step(
    model: nn.Module,
    optimizer: PaperSGD,
    images: torch.Tensor,
    labels: torch.Tensor,
    precision: str,
    lr: float | torch.Tensor,
    window: torch.Tensor,
) -> None:
    """One SGD step on a batch; adds ``[loss sum, errors, images]`` to the float64 ``window``.

    The gradients must be None on entry (``zero_grad(set_to_none=True)``), so that backward writes
    them rather than adding to them: the same in eager steps and in a replayed graph. ``lr`` may be
    a float or a device tensor (what a CUDA graph needs); both give bit-identical weights.
    """
    # autocast's weight cache stays off: a graph capture would free the cached casts (and each
    # weight is cast once per step anyway, so the cache saves nothing here)
    enabled = precision == "bf16"
    with torch.autocast(images.device.type, torch.bfloat16, enabled=enabled, cache_enabled=False):
        logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
    errors = (logits.detach().argmax(1) != labels).sum()
    loss.backward()
    optimizer.step(lr=lr)
    with torch.no_grad():
        window[0] += loss.detach() * len(labels)
        window[1] += errors
        window[2] += len(labels)
