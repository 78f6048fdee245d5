"""Lesion study (Veit et al., 2016): residual networks behave like ensembles of shallow paths.

    uv run reslab analyze lesion --model resnet56 --weights runs/x --limit 1000 --out runs/analysis

Deleting a block removes its residual branch and keeps its shortcut (for down-sampling blocks the
zero-padding or projection shortcut stays). In a plain network, whose blocks have no shortcut, a
deleted block becomes the identity (a zero-padding, subsampling path where the shape changes).
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

import torch
from torch import nn

from reslab.engine.evaluate import error_rate
from reslab.models.layers import PadShortcut


def _changes(block: nn.Module) -> bool:
    """Whether a block changes the shape (stride or channels) of its input: a down-sampling block."""
    first = next(m for n, m in block.named_children() if n.startswith("conv"))
    last = [m for n, m in block.named_children() if n.startswith("conv")][-1]
    return first.stride != (1, 1) or first.in_channels != last.out_channels


def _deleted_forward(block: nn.Module):
    if block.residual:

        def forward(x: torch.Tensor) -> torch.Tensor:  # the branch is not computed at all
            shortcut = block.shortcut_path(x)
            return block.merge(torch.zeros_like(shortcut), shortcut)
    else:
        convs = [m for n, m in block.named_children() if n.startswith("conv")]
        path = PadShortcut(
            convs[0].in_channels, convs[-1].out_channels, max(c.stride[0] for c in convs)
        )

        def forward(x: torch.Tensor) -> torch.Tensor:
            return path(x)

    return forward


def spread(lo: int, hi: int, points: int) -> list[int]:
    """At most ``points`` integers from lo to hi inclusive, evenly spread (all when few)."""
    if hi - lo + 1 <= points:
        return list(range(lo, hi + 1))
    return sorted({round(lo + i * (hi - lo) / (points - 1)) for i in range(points)})


@contextlib.contextmanager
def deleted(blocks: list[nn.Module]):
    """Within the context, the given blocks are deleted (see the module doc)."""
    for block in blocks:
        block.forward = _deleted_forward(block)
    try:
        yield
    finally:
        for block in blocks:
            del block.forward  # back to the class's forward


@contextlib.contextmanager
def swapped(model: nn.Module, pairs: list[tuple[str, int, int]]):
    """Within the context, blocks i and j of the named stage trade places, for each pair."""
    for stage, i, j in pairs:
        seq = getattr(model, stage)
        seq[i], seq[j] = seq[j], seq[i]
    try:
        yield
    finally:
        for stage, i, j in reversed(pairs):
            seq = getattr(model, stage)
            seq[i], seq[j] = seq[j], seq[i]


def analyze(
    label: str,
    model: nn.Module,
    batches,
    limit: int,
    draws: int = 3,
    seed: int = 0,
    points: int = 12,
) -> tuple[dict[str, Any], str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = random.Random(seed)
    model.eval()
    names = [(stage, i) for stage in model.stage_names for i in range(len(getattr(model, stage)))]
    blocks = model.blocks()
    baseline = error_rate(model, batches)
    single = []
    for (stage, i), block in zip(names, blocks, strict=True):
        with deleted([block]):
            single.append(
                {
                    "block": f"{stage}.{i}",
                    "downsampling": _changes(block),
                    "error": error_rate(model, batches),
                }
            )
    candidates = [b for b in blocks if not _changes(b)]
    k_deleted = []
    for k in spread(1, len(candidates), points):
        errors = []
        for _ in range(draws if k < len(candidates) else 1):
            with deleted(rng.sample(candidates, k)):
                errors.append(error_rate(model, batches))
        t = torch.tensor(errors)
        k_deleted.append(
            {
                "k": k,
                "mean_error": t.mean().item(),
                "std": t.std().item() if len(errors) > 1 else 0.0,
            }
        )
    swappable = [(s, i) for (s, i), b in zip(names, blocks, strict=True) if not _changes(b)]
    reordered = []
    for k in spread(1, max(1, len(swappable) // 2), points // 2):
        errors = []
        for _ in range(draws):
            pairs = []
            for _ in range(k):
                stage = rng.choice(sorted({s for s, _ in swappable}))
                within = [i for s, i in swappable if s == stage]
                if len(within) >= 2:
                    i, j = rng.sample(within, 2)
                    pairs.append((stage, i, j))
            with swapped(model, pairs):
                errors.append(error_rate(model, batches))
        t = torch.tensor(errors)
        reordered.append({"swaps": k, "mean_error": t.mean().item(), "std": t.std().item()})

    record = {
        "kind": "lesion",
        "model": label,
        "limit": limit,
        "draws": draws,
        "baseline_error": baseline,
        "single_block": single,
        "k_deleted": k_deleted,
        "reordered": reordered,
    }
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.axhline(baseline, color="grey", ls=":", label="no deletion")
    ax1.plot(
        range(1, len(single) + 1), [s["error"] for s in single], "o-", label="one block deleted"
    )
    ax1.plot(
        [i + 1 for i, s in enumerate(single) if s["downsampling"]],
        [s["error"] for s in single if s["downsampling"]],
        "rx",
        ms=9,
        label="down-sampling block",
    )
    ax1.set_xlabel("deleted block")
    ax1.set_ylabel("test error (%)")
    ax1.legend()
    for rows, key, fmt, label in (
        (k_deleted, "k", "o-", "k random blocks deleted"),
        (reordered, "swaps", "s--", "k random swaps"),
    ):
        x, mean, std = ([r[f] for r in rows] for f in (key, "mean_error", "std"))
        ax2.errorbar(x, mean, std, fmt=fmt, label=label)
    ax2.set_xlabel("k")
    ax2.set_ylabel("test error (%)")
    ax2.legend()
    fig.suptitle(f"Lesion study of {label} on {limit or 10000} CIFAR-10 test images")
    worst = max(
        (s for s in single if not s["downsampling"]), key=lambda s: s["error"], default=None
    )
    summary = (
        f"{label}: baseline error {baseline:.2f}%\n"
        f"one non-down-sampling block deleted: mean error "
        f"{sum(s['error'] for s in single if not s['downsampling']) / max(1, len(candidates)):.2f}%"
        + (f", worst {worst['error']:.2f}% ({worst['block']})\n" if worst else "\n")
        + "".join(
            f"down-sampling block {s['block']} deleted: {s['error']:.2f}%\n"
            for s in single
            if s["downsampling"]
        )
        + "".join(
            f"{r['k']} random blocks deleted: {r['mean_error']:.2f} +- {r['std']:.2f}%\n"
            for r in k_deleted
        )
    )
    return record, summary, fig
