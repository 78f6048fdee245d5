"""One parametrised ResNet for every network of the paper, and the table-driven builders.

    uv run reslab info resnet50

ImageNet family (Table 1): 7x7/64 stride-2 stem, 3x3 max-pool, four stages of 64/128/256/512 base
widths. CIFAR family (Sec. 4.2): 3x3/16 stem, three stages of 16/32/64 filters on 32/16/8 maps,
6n+2 weighted layers. Both end in global average pooling and a fully connected layer. Plain nets
are the same networks built without shortcuts; pre-activation nets use BN-ReLU-conv blocks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from reslab.errors import ModelError
from reslab.models.blocks import (
    STRIDE_IN_CHOICES,
    BasicBlock,
    Bottleneck,
    PreActBasicBlock,
    PreActBottleneck,
    StrideIn,
)
from reslab.models.layers import (
    PAD_WHERE_CHOICES,
    PadWhere,
    ShortcutFactory,
    fix_bn_statistics,
    shortcut_factory,
)

# depth -> (block kind, blocks per stage)            (Table 1)
IMAGENET_DEPTHS: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
IMAGENET_WIDTHS = (64, 128, 256, 512)
CIFAR_WIDTHS = (16, 32, 64)
# weighted layers per block on CIFAR: depth = layers_per_block * 3 * n + 2
CIFAR_LAYERS_PER_BLOCK = {"basic": 2, "bottleneck": 3}

BLOCKS: dict[tuple[str, bool], type[nn.Module]] = {
    ("basic", False): BasicBlock,
    ("bottleneck", False): Bottleneck,
    ("basic", True): PreActBasicBlock,
    ("bottleneck", True): PreActBottleneck,
}


class ResNet(nn.Module):
    """A residual (or plain) network: stem, stages ``layer1..layerK``, global pool, ``fc``.

    Args:
        block: block class (``expansion`` attribute, ``zero_init_last()`` method).
        layers: number of blocks in each stage.
        widths: base width of each stage (output channels = width * block.expansion).
        stem: "imagenet" (7x7/2 conv + 3x3/2 max-pool) or "cifar" (3x3 conv, 16 filters).
        shortcut: shortcut factory (options A/B/C); ``None`` builds the plain network.
        preact: pre-activation layout (no BN/ReLU in the stem, BN-ReLU before the pool).
        block_args: extra keyword arguments for every block (e.g. ``stride_in``).
    """

    def __init__(
        self,
        block: type[nn.Module],
        layers: tuple[int, ...],
        widths: tuple[int, ...],
        *,
        stem: str,
        shortcut: ShortcutFactory | None,
        preact: bool = False,
        num_classes: int = 1000,
        in_chans: int = 3,
        zero_init_residual: bool = False,
        block_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if len(layers) != len(widths):
            raise ValueError(f"layers {layers} and widths {widths} must have the same length")
        if num_classes < 1 or in_chans < 1:
            raise ModelError(f"num_classes={num_classes} and in_chans={in_chans} must be >= 1")
        self.stem_kind, self.preact, self.residual = stem, preact, shortcut is not None
        stem_ch = widths[0] if stem == "cifar" else 64
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, stem_ch, 7, stride=2, padding=3, bias=False)
            self.default_input_size = (in_chans, 224, 224)
        elif stem == "cifar":
            self.conv1 = nn.Conv2d(in_chans, stem_ch, 3, stride=1, padding=1, bias=False)
            self.default_input_size = (in_chans, 32, 32)
        else:
            raise ValueError(f"stem={stem!r} is invalid; valid choices: 'imagenet', 'cifar'")
        # Pre-activation nets normalise at the start of every block, so the stem is the conv alone.
        self.bn1 = None if preact else nn.BatchNorm2d(stem_ch)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else None

        in_ch = stem_ch
        self.stage_names: list[str] = []
        for i, (n_blocks, width) in enumerate(zip(layers, widths, strict=True)):
            blocks = []
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(in_ch, width, stride, shortcut, **(block_args or {})))
                in_ch = width * block.expansion
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
        self.num_features = in_ch
        self.final_bn = nn.BatchNorm2d(in_ch) if preact else None
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # He et al. (2015) initialisation
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for block in self.blocks():
                block.zero_init_last()

    def freeze(self, stages: int = 0, bn_statistics: bool = False) -> ResNet:
        """Fine-tuning and detection: no gradients for the stem and the stages before it counts
        ``stages`` (1: the stem, 2: the stem and ``layer1``, ...); with ``bn_statistics`` every BN
        normalises with its running statistics and keeps them (outside the frozen stages its scale
        and shift still train). Nothing frozen before is unfrozen."""
        if not 0 <= stages <= 1 + len(self.stage_names):
            raise ModelError(f"freeze: stages={stages} must be in [0, {1 + len(self.stage_names)}]")
        if bn_statistics:  # first: it replaces the BN modules, whose new parameters are trainable
            frozen = {n for n, p in self.named_parameters() if not p.requires_grad}
            fix_bn_statistics(self)
            for n, p in self.named_parameters():
                p.requires_grad_(n not in frozen)
        parts = [[self.conv1, self.bn1], *([getattr(self, s)] for s in self.stage_names)]
        for modules in parts[:stages]:
            for m in modules:
                if m is not None:
                    m.requires_grad_(False)
        return self

    def blocks(self) -> list[nn.Module]:
        """All blocks in forward order."""
        return [b for name in self.stage_names for b in getattr(self, name)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and stages: the last feature map, before pooling."""
        x = self.conv1(x)
        if self.bn1 is not None:
            x = self.relu(self.bn1(x))
        if self.maxpool is not None:
            x = self.maxpool(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        if self.final_bn is not None:
            x = self.relu(self.final_bn(x))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pooling and the classifier (``pre_logits`` stops before ``fc``)."""
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _resolve_shortcut(
    residual: bool, shortcut: str | None, default: str, preact: bool, shortcut_pad: PadWhere
) -> ShortcutFactory | None:
    if not residual:
        if shortcut is not None:
            raise ModelError(
                f"shortcut={shortcut!r} given for a plain network; plain networks have no "
                "shortcuts (use the resnet* model of the same depth)"
            )
        return None
    # Pre-activation projections take the already normalised input: 1x1 conv without BN.
    return shortcut_factory(shortcut or default, norm=not preact, pad_where=shortcut_pad)


def _check_options(
    residual: bool, zero_init_residual: bool, stride_in: str, shortcut_pad: str
) -> None:
    """The options' values, checked once here for every network."""
    if stride_in not in STRIDE_IN_CHOICES:
        raise ModelError(f"stride_in={stride_in!r} is invalid; valid choices: '1x1', '3x3'")
    if shortcut_pad not in PAD_WHERE_CHOICES:
        raise ModelError(
            f"shortcut_pad={shortcut_pad!r} is invalid; valid choices: 'after', 'both'"
        )
    if zero_init_residual and not residual:
        raise ModelError(
            "zero_init_residual=True given for a plain network: it has no residual branch to zero "
            "(it would cut the signal); use it with resnet* models"
        )


def cifar_blocks_per_stage(depth: int, block: str = "basic") -> int:
    """n such that ``depth`` = 6n+2 (basic blocks) or 9n+2 (bottlenecks); ModelError otherwise."""
    if block not in CIFAR_LAYERS_PER_BLOCK:
        raise ModelError(f"block={block!r} is invalid; valid choices: 'basic', 'bottleneck'")
    per_stage = 3 * CIFAR_LAYERS_PER_BLOCK[block]
    n, rest = divmod(depth - 2, per_stage)
    if rest or n < 1:
        examples = ", ".join(str(per_stage * k + 2) for k in (1, 2, 3, 5, 9, 18))
        raise ModelError(
            f"CIFAR depth {depth} is invalid for {block} blocks; valid depths are "
            f"{per_stage}n+2 for n >= 1 ({examples}, ...)"
        )
    return n


def _stages(stem: str, depth: int, block: str | None) -> tuple[str, tuple[int, ...]]:
    """(block kind, blocks per stage) of a ``stem`` family network of ``depth``."""
    if stem == "cifar":
        n = cifar_blocks_per_stage(depth, block or "basic")
        return block or "basic", (n, n, n)
    if stem != "imagenet":
        raise ModelError(f"stem={stem!r} is invalid; valid choices: 'imagenet', 'cifar'")
    if depth not in IMAGENET_DEPTHS:
        raise ModelError(
            f"ImageNet depth {depth} is invalid; valid choices: {', '.join(map(str, IMAGENET_DEPTHS))}"
        )
    kind, layers = IMAGENET_DEPTHS[depth]
    if block not in (None, kind):
        raise ModelError(f"ImageNet depth {depth} has {kind} blocks (block={block!r} given)")
    return kind, layers


def resnet(
    depth: int,
    *,
    stem: str,
    residual: bool = True,
    preact: bool = False,
    shortcut: str | None = None,
    stride_in: StrideIn = "1x1",
    shortcut_pad: PadWhere = "after",
    block: str | None = None,
    zero_init_residual: bool = False,
    num_classes: int | None = None,
    in_chans: int = 3,
) -> ResNet:
    """Any network of the paper: ``stem="imagenet"`` (Table 1: ``depth`` in {18, 34, 50, 101,
    152}, 1000 classes, option B shortcuts by default) or ``stem="cifar"`` (Sec. 4.2: 6n+2 layers
    of basic blocks or 9n+2 of bottlenecks, 10 classes, option A shortcuts by default, B for
    pre-activation nets as in the Identity Mappings paper).

    ``stride_in`` "1x1" is the paper's bottleneck ("v1"), "3x3" torchvision's "v1.5";
    ``residual=False`` gives the plain network; ``preact=True`` the pre-activation one. The
    resolved options are recorded as ``model.arch``.
    """
    block, layers = _stages(stem, depth, block)
    _check_options(residual, zero_init_residual, stride_in, shortcut_pad)
    default_shortcut = "B" if stem == "imagenet" or preact else "A"
    if num_classes is None:
        num_classes = 1000 if stem == "imagenet" else 10
    model = ResNet(
        BLOCKS[block, preact],
        layers,
        IMAGENET_WIDTHS if stem == "imagenet" else CIFAR_WIDTHS,
        stem=stem,
        shortcut=_resolve_shortcut(residual, shortcut, default_shortcut, preact, shortcut_pad),
        preact=preact,
        num_classes=num_classes,
        in_chans=in_chans,
        zero_init_residual=zero_init_residual,
        block_args={"stride_in": stride_in} if block == "bottleneck" else None,
    )
    model.arch = {
        "family": stem,
        "depth": depth,
        "residual": residual,
        "preact": preact,
        "block": block,
        "shortcut": (shortcut or default_shortcut) if residual else None,
        "stride_in": stride_in if block == "bottleneck" else None,  # where a 1x1 can take it
        "shortcut_pad": shortcut_pad
        if residual and (shortcut or default_shortcut) == "A"
        else None,
        "zero_init_residual": zero_init_residual,
        "num_classes": num_classes,
        "in_chans": in_chans,
    }
    return model


def imagenet_resnet(depth: int, **options: Any) -> ResNet:
    """ImageNet-family network of ``depth`` (Table 1): :func:`resnet` with ``stem="imagenet"``."""
    return resnet(depth, stem="imagenet", **options)


def cifar_resnet(depth: int, **options: Any) -> ResNet:
    """CIFAR-family network of ``depth`` (Sec. 4.2): :func:`resnet` with ``stem="cifar"``."""
    return resnet(depth, stem="cifar", **options)
