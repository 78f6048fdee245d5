"""Detection metrics: COCO mAP@[.5:.95] and mAP@.5 (pycocotools, the reference implementation) and
PASCAL VOC07 11-point mAP.

``predictions`` map an image id to ``{"boxes": N x 4 (x1, y1, x2, y2), "scores": N, "labels": N}``
with the dataset's labels (1..K); the ground truth is the dataset's own annotations.
"""

from __future__ import annotations

import contextlib
import io

import torch
from torchvision.ops import box_iou

from reslab.detection.data import CocoDetection
from reslab.errors import require_extra

Predictions = dict[int, dict[str, torch.Tensor]]


def coco_map(dataset: CocoDetection, predictions: Predictions) -> dict[str, float]:
    """``{"map": mAP@[.5:.95], "map50": mAP@.5, "map75": ...}`` over the dataset's images."""
    require_extra("pycocotools", "detection", "COCO evaluation")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = []
    for image_id, p in predictions.items():
        for box, score, label in zip(
            p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist(), strict=True
        ):
            x1, y1, x2, y2 = box
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": dataset.label_to_cat[int(label)],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    if not results:
        return {"map": 0.0, "map50": 0.0, "map75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(dataset.annotations))
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = [im["id"] for im in dataset.images]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map": float(ev.stats[0]), "map50": float(ev.stats[1]), "map75": float(ev.stats[2])}


def voc07_map(dataset: CocoDetection, predictions: Predictions, iou: float = 0.5) -> float:
    """PASCAL VOC 2007 mAP (11-point interpolated AP averaged over classes with ground truth);
    crowd (VOC "difficult") boxes are neither positives nor false positives."""
    aps = []
    for label in range(1, len(dataset.classes)):
        gts, n_pos = {}, 0
        for t in dataset.targets:
            keep = t["labels"] == label
            boxes, crowd = t["boxes"][keep], t["iscrowd"][keep].bool()
            gts[int(t["image_id"])] = (boxes, crowd, torch.zeros(len(boxes), dtype=torch.bool))
            n_pos += int((~crowd).sum())
        if n_pos == 0:
            continue
        dets = [
            (float(s), image_id, b)
            for image_id, p in predictions.items()
            for b, s, lab in zip(p["boxes"], p["scores"], p["labels"], strict=True)
            if int(lab) == label
        ]
        dets.sort(key=lambda d: -d[0])
        tp, fp = [], []
        for _, image_id, box in dets:
            boxes, crowd, used = gts.get(
                image_id, (torch.zeros(0, 4), torch.zeros(0, dtype=torch.bool), None)
            )
            if len(boxes) == 0:
                tp.append(0), fp.append(1)
                continue
            overlaps = box_iou(box[None], boxes)[0]
            best = int(overlaps.argmax())
            if overlaps[best] < iou:
                tp.append(0), fp.append(1)
            elif crowd[best]:
                continue  # matched a difficult box: ignored
            elif not used[best]:
                used[best] = True
                tp.append(1), fp.append(0)
            else:
                tp.append(0), fp.append(1)
        tp_c = torch.tensor(tp, dtype=torch.float64).cumsum(0)
        fp_c = torch.tensor(fp, dtype=torch.float64).cumsum(0)
        recall = tp_c / n_pos
        precision = tp_c / (tp_c + fp_c).clamp_min(1e-12)
        ap = 0.0
        for t in torch.linspace(0, 1, 11):
            above = precision[recall >= t - 1e-12]
            ap += float(above.max()) / 11 if len(above) else 0.0
        aps.append(ap)
    return sum(aps) / len(aps) if aps else 0.0
