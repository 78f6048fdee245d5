"""Detection datasets: COCO-format (images + instances JSON) and PASCAL VOC (XML), as torchvision's
detectors read them: a float image in [0, 1] and a target with ``boxes`` (x1, y1, x2, y2 pixels),
``labels`` (1..K, 0 is background), ``image_id``, ``area`` and ``iscrowd``.

    uv run python -c "from reslab.detection.data import CocoDetection; d = CocoDetection('../shared/data/coco128/train2017', '../shared/data/coco128/annotations/instances_train2017.json'); print(len(d), d[0][1])"

COCO conventions: crowd annotations are kept in the target with ``iscrowd=1`` but are not used as
training boxes (:func:`training_target` drops them; the evaluation ignores detections matched to
them); images without annotations are kept (their targets are empty); boxes are ``[x, y, w, h]``
in the JSON. A malformed annotation (not four finite numbers, width or height <= 0, outside the
image, or an unknown category) raises :class:`AnnotationError` naming the image id and annotation.
Training augmentation is the horizontal flip here; the multi-scale shorter side is the detector's
own resize (``min_size`` as a tuple).
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import torch
from torchvision.io import ImageReadMode, decode_image, read_file

from reslab.errors import DataError, MissingFileError

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


class AnnotationError(DataError):
    """A malformed annotation; the message names the image and the annotation."""


def _read_image(path: Path) -> torch.Tensor:
    if not path.is_file():
        raise MissingFileError(f"image {path} listed in the annotations does not exist")
    return decode_image(read_file(str(path)), mode=ImageReadMode.RGB).float() / 255


def hflip(image: torch.Tensor, target: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Mirror an image and its boxes."""
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes}


def training_target(target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The boxes a detector trains on: crowd regions left out, as COCO training does."""
    keep = target["iscrowd"] == 0
    return {
        k: (v[keep] if k in ("boxes", "labels", "area", "iscrowd") else v)
        for k, v in target.items()
    }


class CocoDetection(torch.utils.data.Dataset):
    """A COCO-format dataset.

    Args:
        image_dir: folder of the images named in the JSON's ``file_name``.
        annotations: the instances JSON.
        train: apply the random horizontal flip (seeded per (seed, epoch, index) via ``set_epoch``).
    """

    def __init__(
        self, image_dir: str | Path, annotations: str | Path, *, train: bool = False, seed: int = 0
    ) -> None:
        self.image_dir, self.annotations = Path(image_dir), Path(annotations)
        if not self.annotations.is_file():
            raise MissingFileError(f"annotation file {self.annotations} does not exist")
        if not self.image_dir.is_dir():
            raise MissingFileError(f"image folder {self.image_dir} does not exist")
        data = json.loads(self.annotations.read_text())
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise AnnotationError(
                    f"{self.annotations}: no {key!r} list (not a COCO instances file)"
                )
        self.categories = sorted(data["categories"], key=lambda c: c["id"])
        self.cat_to_label = {c["id"]: i + 1 for i, c in enumerate(self.categories)}
        self.label_to_cat = {v: k for k, v in self.cat_to_label.items()}
        self.classes = ["__background__"] + [c["name"] for c in self.categories]
        self.images = sorted(data["images"], key=lambda im: im["id"])
        by_image: dict[int, list[dict]] = {im["id"]: [] for im in self.images}
        for ann in data["annotations"]:
            if ann.get("image_id") not in by_image:
                raise AnnotationError(
                    f"{self.annotations}: annotation {ann.get('id')} refers to unknown image id "
                    f"{ann.get('image_id')}"
                )
            by_image[ann["image_id"]].append(ann)
        self.targets = [self._target(im, by_image[im["id"]]) for im in self.images]
        self.train, self.seed, self.epoch = train, seed, 0

    def _target(self, image: dict, anns: list[dict]) -> dict[str, torch.Tensor]:
        boxes, labels, area, crowd = [], [], [], []
        for ann in anns:
            where = f"{self.annotations}: image id {image['id']} ({image.get('file_name')}), annotation {ann.get('id')}"
            bbox = ann.get("bbox")
            if not (
                isinstance(bbox, list)
                and len(bbox) == 4
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)
            ):
                raise AnnotationError(
                    f"{where}: bbox {bbox!r} is not four finite numbers [x, y, w, h]"
                )
            x, y, w, h = bbox
            if w <= 0 or h <= 0:
                raise AnnotationError(f"{where}: bbox {bbox} has a non-positive width or height")
            W, H = image["width"], image["height"]
            if x < -1 or y < -1 or x + w > W + 1 or y + h > H + 1:
                raise AnnotationError(f"{where}: bbox {bbox} lies outside the {W}x{H} image")
            if ann.get("category_id") not in self.cat_to_label:
                raise AnnotationError(f"{where}: unknown category_id {ann.get('category_id')}")
            boxes.append([max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)])
            labels.append(self.cat_to_label[ann["category_id"]])
            area.append(float(ann.get("area", w * h)))
            crowd.append(int(ann.get("iscrowd", 0)))
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": torch.tensor(image["id"]),
            "area": torch.tensor(area, dtype=torch.float32),
            "iscrowd": torch.tensor(crowd, dtype=torch.int64),
        }

    def limit(self, n: int) -> CocoDetection:
        """The first ``n`` images (all when 0): a quicker evaluation set; metrics cover only them."""
        if not n or n >= len(self.images):
            return self
        import copy

        subset = copy.copy(self)
        subset.images, subset.targets = self.images[:n], self.targets[:n]
        return subset

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = _read_image(self.image_dir / self.images[index]["file_name"])
        target = {k: v.clone() for k, v in self.targets[index].items()}
        if self.train:
            g = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) & 0x7FFFFFFF)
            if torch.rand((), generator=g) < 0.5:
                image, target = hflip(image, target)
        return image, target


class VOCDetection(CocoDetection):
    """PASCAL VOC (``root/Annotations/*.xml``, ``root/JPEGImages``, ``root/ImageSets/Main/<split>.txt``),
    turned into the COCO form above; objects marked ``difficult`` become crowd regions (ignored in
    training and evaluation, as the VOC protocol ignores them)."""

    def __init__(
        self, root: str | Path, split: str = "trainval", *, train: bool = False, seed: int = 0
    ):
        root = Path(root)
        listing = root / "ImageSets" / "Main" / f"{split}.txt"
        if not listing.is_file():
            raise MissingFileError(f"VOC split list {listing} does not exist")
        images, anns = [], []
        for image_id, name in enumerate(listing.read_text().split(), start=1):
            xml = root / "Annotations" / f"{name}.xml"
            try:
                tree = ET.parse(xml).getroot()
            except (OSError, ET.ParseError) as err:
                raise AnnotationError(f"{xml} (image {name}): {err}") from None
            size = tree.find("size")
            width, height = int(size.findtext("width")), int(size.findtext("height"))
            images.append(
                {"id": image_id, "file_name": f"{name}.jpg", "width": width, "height": height}
            )
            for obj in tree.findall("object"):
                cls = obj.findtext("name", "").strip()
                if cls not in VOC_CLASSES:
                    raise AnnotationError(f"{xml} (image {name}): unknown class {cls!r}")
                b = obj.find("bndbox")
                x1, y1, x2, y2 = (
                    float(b.findtext(k)) - 1 for k in ("xmin", "ymin", "xmax", "ymax")
                )
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": image_id,
                        "category_id": VOC_CLASSES.index(cls) + 1,
                        "bbox": [x1, y1, x2 - x1 + 1, y2 - y1 + 1],
                        "iscrowd": int(obj.findtext("difficult", "0") == "1"),
                    }
                )
        cats = [{"id": i + 1, "name": c} for i, c in enumerate(VOC_CLASSES)]
        coco = {"images": images, "annotations": anns, "categories": cats}
        cache = root / f".reslab-{split}-coco.json"
        try:
            cache.write_text(json.dumps(coco))
        except OSError:  # read-only dataset: keep the conversion in a temporary file
            import tempfile

            cache = Path(tempfile.mkstemp(suffix=".json")[1])
            cache.write_text(json.dumps(coco))
        super().__init__(root / "JPEGImages", cache, train=train, seed=seed)


def collate(batch: list[tuple[Any, Any]]) -> tuple[list, list]:
    """Detection batches are lists (images differ in size)."""
    return [b[0] for b in batch], [b[1] for b in batch]
