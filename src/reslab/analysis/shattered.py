"""Shattered gradients (Balduzzi et al., 2017): how fast the input gradient decorrelates with depth.

    uv run reslab analyze shattered --model plain20 --model resnet20 --out runs/analysis

The gradient of the output with respect to the input is taken along a 1-D sweep of inputs; its
correlation between neighbouring inputs (the cosine of consecutive gradients, so a linear network
scores exactly 1) falls quickly with depth in plain networks (white noise) and slowly with skip
connections. Two settings: the paper's fully connected networks on a scalar input in [-2, 2]
(plain and residual, with and without BN), and CIFAR networks along a line between two test
images (eval mode: meaningful for trained weights, whose BN statistics are set).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

FC_KINDS = ("plain", "plain_bn", "residual", "residual_bn")


class FCNet(nn.Module):
    """Width-``width`` ReLU network of ``depth`` layers on a scalar input, He-initialised:
    "plain" x = relu(Wx), "plain_bn" x = relu(BN(Wx)) (Balduzzi et al.'s feedforward nets),
    "residual" x = x + W relu(x), "residual_bn" x = x + W relu(BN(x)). BN uses the statistics of
    the sweep itself (training mode), as in the paper."""

    def __init__(
        self, depth: int, kind: str = "plain", width: int = 200, linear: bool = False
    ) -> None:
        super().__init__()
        if kind not in FC_KINDS:
            raise ValueError(f"kind={kind!r} is invalid; valid choices: {', '.join(FC_KINDS)}")
        self.kind, self.linear = kind, linear
        self.inp = nn.Linear(1, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        bn = kind.endswith("_bn")
        self.norms = nn.ModuleList(
            nn.BatchNorm1d(width) if bn else nn.Identity() for _ in range(depth)
        )
        self.out = nn.Linear(width, 1)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def act(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.linear else torch.relu(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.inp(x))
        for layer, norm in zip(self.layers, self.norms, strict=True):
            h = (
                self.act(norm(layer(h)))
                if self.kind.startswith("plain")
                else h + layer(self.act(norm(h)))
            )
        return self.out(h)


def neighbour_correlation(grads: torch.Tensor) -> float:
    """Mean cosine between consecutive rows of ``grads`` (points x gradient dimensions)."""
    g = grads.flatten(1).double()
    a, b = g[:-1], g[1:]
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)
    return cos.mean().item()


def sweep_gradients(
    model: nn.Module, inputs: torch.Tensor, output: int | None = None, train: bool = False
) -> torch.Tensor:
    """d output / d input at each row of ``inputs`` (``output`` picks a logit; ``train`` makes BN
    use the sweep's own statistics)."""
    model.train(train)
    x = inputs.clone().requires_grad_(True)
    y = model(x)
    (y.sum() if output is None else y[:, output].sum()).backward()
    return x.grad.detach()


def fc_correlations(
    depths: list[int], kinds=FC_KINDS, seeds: int = 5, points: int = 256
) -> dict[str, list[float]]:
    """Neighbour correlation of the FC networks' gradients over depths, averaged over seeds."""
    xs = torch.linspace(-2, 2, points)[:, None]
    result = {}
    for kind in kinds:
        means = []
        for depth in depths:
            vals = []
            for seed in range(seeds):
                torch.manual_seed(seed)
                grads = sweep_gradients(FCNet(depth, kind), xs, train=True)
                vals.append(neighbour_correlation(grads))
            means.append(sum(vals) / len(vals))
        result[kind] = means
    return result


def cifar_correlation(
    model: nn.Module, a: torch.Tensor, b: torch.Tensor, points: int = 64
) -> float:
    """Neighbour correlation of the input gradient of logit 0 along the line from image a to b."""
    t = torch.linspace(0, 1, points)[:, None, None, None]
    return neighbour_correlation(sweep_gradients(model, (1 - t) * a + t * b, output=0))


def analyze(
    models: list[tuple[str, nn.Module, str | None]],
    pair: tuple[torch.Tensor, torch.Tensor] | None,
    depths: list[int],
) -> tuple[dict[str, Any], str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fc = fc_correlations(depths)
    record: dict[str, Any] = {"kind": "shattered", "fc": {"depths": depths, **fc}, "cifar": []}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for kind, values in fc.items():
        ax1.plot(depths, values, "o--" if kind.startswith("plain") else "o-", label=kind)
    ax1.set_xscale("log")
    ax1.set_xlabel("depth (fully connected, width 200)")
    ax1.set_ylabel("correlation of neighbouring gradients")
    ax1.legend()
    lines = [
        f"fully connected, depth {d}: " + ", ".join(f"{k} {fc[k][i]:.3f}" for k in fc)
        for i, d in enumerate(depths)
    ]
    if pair is not None:
        for label, model, weights in models:
            corr = cifar_correlation(model, *pair)
            record["cifar"].append({"model": label, "weights": weights, "correlation": corr})
            lines.append(f"{label:<24} CIFAR sweep: neighbour correlation {corr:.3f}")
        ax2.bar([r["model"] for r in record["cifar"]], [r["correlation"] for r in record["cifar"]])
        ax2.set_ylabel("correlation of neighbouring gradients")
        ax2.set_title("CIFAR networks, sweep between two test images")
    fig.suptitle("Shattered gradients")
    return record, "\n".join(lines), fig
