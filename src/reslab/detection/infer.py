"""Detectors at work: detections on a dataset, their COCO (and VOC07) mAP, and pictures of the
boxes (what ``reslab detect eval`` and a training run's evaluations use).

    uv run reslab detect eval runs/det --data ../shared/data --visualize runs/det/vis
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from reslab.detection.data import CocoDetection, collate
from reslab.detection.evaluate import coco_map, voc07_map


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    dataset: CocoDetection,
    device: torch.device,
    batch: int = 2,
    test_size: int | None = None,
    progress: bool = False,
) -> dict[int, dict[str, torch.Tensor]]:
    """Detections for every image of ``dataset`` (boxes in the original image's pixels)."""
    model.eval()
    if test_size is not None:  # evaluation at one scale
        model.transform.min_size = (test_size,)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, collate_fn=collate)
    out = {}
    for images, targets in tqdm(loader, desc="detect", disable=not progress, leave=False):
        for t, p in zip(targets, model([im.to(device) for im in images]), strict=True):
            out[int(t["image_id"])] = {k: v.cpu() for k, v in p.items()}
    return out


def score(dataset: CocoDetection, predictions: dict, fmt: str) -> dict[str, float]:
    result = coco_map(dataset, predictions)
    if fmt == "voc":
        result["voc07_map"] = voc07_map(dataset, predictions)
    return result


def visualize(
    image: torch.Tensor,
    prediction: dict[str, torch.Tensor],
    classes: list[str],
    path: Path,
    threshold: float = 0.5,
) -> Path:
    """Draw the detections scoring at least ``threshold`` on ``image`` and save a PNG."""
    from torchvision.io import write_png
    from torchvision.utils import draw_bounding_boxes

    keep = prediction["scores"] >= threshold
    labels = [
        f"{classes[int(c)]} {s:.2f}"
        for c, s in zip(prediction["labels"][keep], prediction["scores"][keep], strict=True)
    ]
    palette = [
        "#e6194b",
        "#3cb44b",
        "#ffe119",
        "#4363d8",
        "#f58231",
        "#911eb4",
        "#46f0f0",
        "#f032e6",
    ]
    colors = [palette[int(c) % len(palette)] for c in prediction["labels"][keep]]
    drawn = draw_bounding_boxes(
        (image * 255).to(torch.uint8), prediction["boxes"][keep], labels, colors=colors, width=2
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(drawn, str(path))
    return path
