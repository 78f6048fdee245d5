"""Gradient flow across depth, and Veit et al.'s effective paths.

    uv run reslab analyze gradients --model plain56 --model resnet56 --out runs/analysis

Per block: the norm of the loss gradient with respect to the block's output and to its parameters
(x_L = x_l + sum F(x_i) lets gradients reach early blocks directly in residual nets). Paths: a
residual net of n blocks is a sum over 2^n paths; the gradient along the paths through exactly k
residual branches is measured by letting the gradient pass only through the branches of k random
blocks and only through the shortcuts of the others; multiplied by C(n, k), the number of such
paths, it shows which path lengths carry the gradient.
"""

from __future__ import annotations

import contextlib
import math
import random
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@contextlib.contextmanager
def untouched(model: nn.Module):
    """Whatever happens inside, the model leaves with its mode, buffers (BN statistics) and
    gradients as it came in: an analysis must not change what the next one measures."""
    mode = model.training
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    grads = {k: p.grad for k, p in model.named_parameters()}
    try:
        yield model
    finally:
        model.train(mode)
        with torch.no_grad():
            for k, b in model.named_buffers():
                b.copy_(buffers[k])
        for k, p in model.named_parameters():
            p.grad = grads[k]


def block_gradient_norms(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> dict[str, list[float]]:
    """Per block, the mean per-image norm of dL/d(block output) and the norm of dL/d(parameters),
    in training mode (BN normalises by the batch, as in training); the model is left untouched."""
    outputs: list[torch.Tensor] = []

    def keep(_module, _inputs, out: torch.Tensor) -> None:
        out.retain_grad()
        outputs.append(out)

    with untouched(model):
        model.train()
        model.zero_grad(set_to_none=True)
        handles = [b.register_forward_hook(keep) for b in model.blocks()]
        try:
            F.cross_entropy(model(images), labels).backward()
        finally:
            for h in handles:
                h.remove()
        return _norms(model, outputs)


def _norms(model: nn.Module, outputs: list[torch.Tensor]) -> dict[str, list[float]]:
    act = [o.grad.flatten(1).norm(dim=1).mean().item() for o in outputs]
    params = [
        math.sqrt(sum(float(p.grad.pow(2).sum()) for p in b.parameters() if p.grad is not None))
        for b in model.blocks()
    ]
    return {"activation_grad_norm": act, "param_grad_norm": params}


@contextlib.contextmanager
def gated(model: nn.Module, through_branch: set[int]):
    """Gradient flows through the residual branch of blocks in ``through_branch`` only, and through
    the shortcut of the other blocks only (the forward pass is unchanged)."""
    blocks = model.blocks()
    for i, block in enumerate(blocks):

        def forward(x, block=block, on=i in through_branch):
            branch, shortcut = block.parts(x)
            if on:
                return block.merge(branch, shortcut.detach())
            return block.merge(branch.detach(), shortcut)

        block.forward = forward
    try:
        yield
    finally:
        for block in blocks:
            del block.forward


def path_gradients(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, samples: int = 3, seed: int = 0
) -> list[dict[str, float]]:
    """Mean input-gradient norm of the paths of each length k (sampled), and C(n, k) times it
    (in eval mode; the model is left untouched)."""
    if not getattr(model, "residual", False):
        raise ValueError("path gradients need a residual network (plain nets have a single path)")
    with untouched(model):
        model.eval()
        return _path_rows(model, images, labels, samples, seed)


def _path_rows(model, images, labels, samples: int, seed: int) -> list[dict[str, float]]:
    rng = random.Random(seed)
    n = len(model.blocks())
    rows = []
    for k in range(n + 1):
        norms = []
        for _ in range(samples if 0 < k < n else 1):
            chosen = set(rng.sample(range(n), k))
            x = images.clone().requires_grad_(True)
            with gated(model, chosen):
                F.cross_entropy(model(x), labels).backward()
            norms.append(x.grad.flatten(1).norm(dim=1).mean().item())
            model.zero_grad(set_to_none=True)
        mean = sum(norms) / len(norms)
        rows.append(
            {
                "k": k,
                "mean_grad_norm": mean,
                "paths": math.comb(n, k),
                "total": math.comb(n, k) * mean,
            }
        )
    total = sum(r["total"] for r in rows) or 1.0
    for r in rows:
        r["share"] = r["total"] / total
    return rows


def effective_range(rows: list[dict[str, float]], mass: float = 0.9) -> tuple[int, int]:
    """The narrowest range of path lengths around the mode that holds ``mass`` of the gradient."""
    shares = [r["share"] for r in rows]
    lo = hi = max(range(len(shares)), key=shares.__getitem__)
    held = shares[lo]
    while held < mass and (lo > 0 or hi < len(shares) - 1):
        left = shares[lo - 1] if lo > 0 else -1
        right = shares[hi + 1] if hi < len(shares) - 1 else -1
        if left >= right:
            lo, held = lo - 1, held + left
        else:
            hi, held = hi + 1, held + right
    return lo, hi


def analyze(
    models: list[tuple[str, nn.Module, str | None]], images: torch.Tensor, labels: torch.Tensor
) -> tuple[dict[str, Any], str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    record: dict[str, Any] = {"kind": "gradients", "images": len(labels), "models": []}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    lines = []
    for label, model, weights in models:
        norms = block_gradient_norms(model, images, labels)
        entry = {"model": label, "weights": weights, **norms}
        ax1.semilogy(
            range(1, len(norms["activation_grad_norm"]) + 1),
            norms["activation_grad_norm"],
            "--" if not model.residual else "-",
            label=label,
        )
        g = norms["activation_grad_norm"]
        lines.append(
            f"{label:<24} dL/d(block output): first block {g[0]:.3g}, last block {g[-1]:.3g}, ratio {g[0] / g[-1]:.3g}"
        )
        if model.residual:
            rows = path_gradients(model, images[:16], labels[:16])
            entry["paths"] = rows
            lo, hi = effective_range(rows)
            entry["effective_path_lengths_90"] = [lo, hi]
            ax2.plot([r["k"] for r in rows], [r["share"] for r in rows], "o-", label=label)
            lines.append(
                f"{label:<24} 90% of the gradient flows through paths of {lo}-{hi} of {len(rows) - 1} blocks"
            )
        record["models"].append(entry)
    ax1.set_xlabel("block")
    ax1.set_ylabel("mean ||dL/d output||")
    ax1.legend()
    ax2.set_xlabel("path length (residual branches on the path)")
    ax2.set_ylabel("share of the input gradient")
    ax2.legend()
    fig.suptitle("Gradient flow across depth (left) and over path lengths (right)")
    return record, "\n".join(lines), fig
