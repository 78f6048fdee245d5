"""Model registry: every network of the paper by name, plus any valid CIFAR depth.

    uv run python -c "from reslab.models import list_models; print(list_models())"

Registered names: ``resnet{18,34,50,101,152}``, ``plain{18,...,152}``, ``preact_resnet{18,...,152}``
(ImageNet family); ``resnet{20,32,44,56,110,1202}``, ``plain{20,32,44,56,110}``,
``preact_resnet{110,164,1001}`` (CIFAR family). Other CIFAR depths resolve by pattern:
``resnet26`` or ``plain74`` (any 6n+2 that is not an ImageNet depth), and ``cifar_resnet50``,
``cifar_plain152``, ``cifar_preact_resnet56`` for any 6n+2 depth.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from reslab.errors import ModelError
from reslab.models.resnet import IMAGENET_DEPTHS, resnet


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its builder, the arguments its name fixes, and its family."""

    name: str
    builder: Callable[..., nn.Module]
    fixed: dict[str, Any] = field(default_factory=dict)
    family: str = ""

    @property
    def options(self) -> tuple[str, ...]:
        """Keyword options a caller may set (the builder's, less those the name fixes)."""
        params = inspect.signature(self.builder).parameters.values()
        return tuple(
            p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in self.fixed
        )

    def build(self, **options: Any) -> nn.Module:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ModelError(
                f"model {self.name!r} has no option {', '.join(map(repr, unknown))}; "
                f"valid options: {', '.join(self.options)}"
            )
        return self.builder(**self.fixed, **options)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str, builder: Callable[..., nn.Module], family: str = "", **fixed: Any
) -> ModelSpec:
    """Register ``builder(**fixed, **options)`` under ``name``; a duplicate name is an error."""
    if name in _REGISTRY:
        raise ValueError(f"model name {name!r} is already registered")
    spec = ModelSpec(name, builder, fixed, family)
    _REGISTRY[name] = spec
    return spec


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, in registration order."""
    return [name for name in _REGISTRY if fnmatch.fnmatch(name, pattern)]


def get_model_spec(name: str) -> ModelSpec:
    """The spec for a registered name or a CIFAR depth pattern; :class:`ModelError` names the
    choices."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    m = re.fullmatch(r"(cifar_)?(preact_resnet|resnet|plain)(\d+)", name)
    if m:
        explicit, kind, depth = bool(m[1]), m[2], int(m[3])
        cifar_depth = depth > 2 and ((depth - 2) % 6 == 0 or (depth - 2) % 9 == 0)
        if cifar_depth and (explicit or depth not in IMAGENET_DEPTHS):
            fixed = {"depth": depth, "residual": kind != "plain", "preact": kind == "preact_resnet"}
            return ModelSpec(name, resnet, {**fixed, "stem": "cifar"}, "cifar")
    raise ModelError(
        f"unknown model {name!r}; valid names: {', '.join(list_models())}; CIFAR networks also "
        "accept any depth 6n+2 (basic blocks) or 9n+2 (block='bottleneck') as resnet<depth>/plain<depth>/preact_resnet<depth> (e.g. resnet26), "
        "or cifar_resnet<depth> where the depth is also an ImageNet one (e.g. cifar_resnet50)"
    )


# stem -> (residual depths, plain depths, pre-activation (depth, block) pairs) of the paper
PAPER_MODELS = {
    "imagenet": (IMAGENET_DEPTHS, IMAGENET_DEPTHS, [(d, None) for d in IMAGENET_DEPTHS]),
    "cifar": (
        (20, 32, 44, 56, 110, 1202),
        (20, 32, 44, 56, 110),
        [(110, None), (164, "bottleneck"), (1001, "bottleneck")],
    ),
}


def _register_paper_models() -> None:
    for stem, (residual, plain, preact) in PAPER_MODELS.items():
        for depth in residual:
            register_model(f"resnet{depth}", resnet, stem, depth=depth, stem=stem)
        for depth in plain:
            register_model(f"plain{depth}", resnet, stem, depth=depth, stem=stem, residual=False)
        for depth, block in preact:
            fixed = {"depth": depth, "stem": stem, "preact": True}
            register_model(f"preact_resnet{depth}", resnet, stem, **fixed, **({"block": block} if block else {}))  # fmt: skip


_register_paper_models()
