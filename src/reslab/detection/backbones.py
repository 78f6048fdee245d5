"""reslab ResNets as Faster R-CNN backbones (torchvision's detector): the paper's C4 design and FPN.

    uv run python -c "from reslab.detection import build_detector; print(build_detector('resnet50', 81, 'c4'))"

C4 (the paper, Sec. 4.3 and its appendix): conv1..conv4 (``layer3``) are the shared feature map at
stride 16; RoIs are pooled from it (RoIAlign, 14x14) and the whole conv5 stage (``layer4``, stride 2)
followed by global average pooling is the per-RoI head, as the paper's fc layers are replaced. FPN
(Lin et al. 2017): features of all four stages with a top-down pathway. BN layers are frozen
(torchvision's ``FrozenBatchNorm2d``: the ImageNet statistics and affine parameters are constants,
as the paper does with its batch sizes of 1-2 images), and the first ``frozen_stages`` stages (the
stem counts as stage 0) receive no gradients.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

from reslab.errors import ModelError
from reslab.models.resnet import ResNet

DESIGNS = ("c4", "fpn")


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` by a FrozenBatchNorm2d holding its statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                frozen.weight.copy_(child.weight)
                frozen.bias.copy_(child.bias)
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def imagenet_backbone(name: str, weights: str | Path | None = None) -> ResNet:
    """A reslab ImageNet-family model, with ``weights`` (a reslab ``model.safetensors``, a run
    directory, or a torchvision-layout state-dict file) or He-initialised when None."""
    from reslab.models.factory import load_model

    model = load_model(name, weights)
    if getattr(model, "stem_kind", "") != "imagenet":
        raise ModelError(
            f"{name}: detection backbones are ImageNet-family models (resnet18..152, plain18/34)"
        )
    return model


class C4Trunk(nn.Module):
    """conv1..conv4: the shared stride-16 feature map (``out_channels`` for torchvision's RPN)."""

    def __init__(self, model: ResNet) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = (
            model.conv1,
            model.bn1,
            model.relu,
            model.maxpool,
        )
        self.layer1, self.layer2, self.layer3 = model.layer1, model.layer2, model.layer3
        self.out_channels = _stage_channels(model.layer3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return OrderedDict([("0", self.layer3(self.layer2(self.layer1(x))))])


class C4Head(nn.Module):
    """conv5 on each pooled RoI, then global average pooling: the per-RoI representation."""

    def __init__(self, model: ResNet) -> None:
        super().__init__()
        self.layer4 = model.layer4
        self.out_channels = _stage_channels(model.layer4)

    def forward(self, rois: torch.Tensor) -> torch.Tensor:
        return self.layer4(rois).mean((2, 3))


def _stage_channels(stage: nn.Sequential) -> int:
    last = stage[-1]
    convs = [m for m in last.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def build_detector(
    backbone: str,
    num_classes: int,
    design: str = "fpn",
    *,
    weights: str | Path | None = None,
    frozen_stages: int = 1,
    norm: str = "auto",
    min_size: int | tuple[int, ...] = 800,
    max_size: int = 1333,
    **kwargs,
) -> FasterRCNN:
    """torchvision's Faster R-CNN over a reslab ResNet.

    Args:
        backbone: a reslab ImageNet-family model name (e.g. "resnet50", "resnet101").
        num_classes: object classes + 1 (background).
        design: "c4" (the paper) or "fpn".
        weights: ImageNet weights for the backbone (see :func:`imagenet_backbone`).
        frozen_stages: stem + this many-1 stages get no gradient (1: the stem, as is customary).
        norm: "frozen" (BN statistics and affine fixed: the setting for ImageNet-initialised
            backbones), "batch" (ordinary BN, for random initialisation, where frozen identity
            statistics would leave the deep net unnormalised) or "auto" (frozen when ``weights``).
        min_size: shorter side; a tuple picks one at random per training image (multi-scale).
        kwargs: passed to :class:`FasterRCNN` (e.g. ``box_detections_per_img``).
    """
    if design not in DESIGNS:
        raise ValueError(f"design={design!r} is invalid; valid choices: {', '.join(DESIGNS)}")
    if norm == "auto":
        norm = "frozen" if weights is not None else "batch"
    if norm not in ("frozen", "batch"):
        raise ValueError(f"norm={norm!r} is invalid; valid choices: auto, frozen, batch")
    model = imagenet_backbone(backbone, weights)
    if norm == "frozen":
        model = freeze_batchnorm(model)
    if model.bn1 is None or getattr(model, "final_bn", None) is not None:
        raise ModelError(f"{backbone}: pre-activation models are not supported as backbones")
    model.freeze(frozen_stages)
    common = {"min_size": min_size, "max_size": max_size, **kwargs}
    if design == "c4":
        trunk, head = C4Trunk(model), C4Head(model)
        anchors = AnchorGenerator(
            sizes=((32, 64, 128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),)
        )
        pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=14, sampling_ratio=0)
        return FasterRCNN(
            trunk,
            rpn_anchor_generator=anchors,
            box_roi_pool=pool,
            box_head=head,
            box_predictor=FastRCNNPredictor(head.out_channels, num_classes),
            **common,
        )
    channels = [_stage_channels(getattr(model, s)) for s in model.stage_names]
    fpn = BackboneWithFPN(
        model,
        return_layers={s: str(i) for i, s in enumerate(model.stage_names)},
        in_channels_list=channels,
        out_channels=256,
    )
    return FasterRCNN(fpn, num_classes=num_classes, **common)
