"""``reslab detect train|eval``: Faster R-CNN runs in the engine's ``fit`` (resumable, logged).

    uv run reslab detect train detection/coco128_fpn_resnet50 --set train.iterations=20 --out runs/det
    uv run reslab detect eval runs/det --data ../shared/data/coco128 --visualize runs/det/vis

A detection run is a task of :func:`reslab.engine.trainer.fit` (:class:`Detection`), so it has the
engine's run directory (``config.yaml``, ``metrics.jsonl`` with the loss terms every
``log_every`` iterations and mAP every ``eval_every``, atomic ``checkpoints/`` resumed by the same
command, a divergence stop within one logging window, ``summary.json``), plus
``model.safetensors`` (the detector with its config in the metadata) and ``map.png`` (the mAP@.5
curve). Its config is :mod:`reslab.detection.config`; detections and mAP are
:mod:`reslab.detection.infer`.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import torch

from reslab.data.paths import data_root
from reslab.detection.backbones import build_detector
from reslab.detection.config import DetConfig, load_det_config
from reslab.detection.data import CocoDetection, VOCDetection, collate, training_target
from reslab.detection.infer import predict, score, visualize
from reslab.engine.checkpoint import atomic_write
from reslab.engine.distributed import DistInfo
from reslab.engine.logging import read_jsonl
from reslab.engine.loop import Parts
from reslab.engine.runtime import code_version, resolve_device
from reslab.engine.trainer import fit
from reslab.errors import ConfigError, DataError, WeightsError
from reslab.typecheck import build_dataclass
from reslab.weights.files import find_weights

__all__ = [
    "DetConfig",
    "Detection",
    "DetectionStep",
    "collate",
    "describe",
    "evaluate_run",
    "fit_detector",
    "load_det_config",
    "load_detector",
    "save_detector",
    "visualize",
]


def build_datasets(cfg: DetConfig) -> tuple[CocoDetection, CocoDetection]:
    d = cfg.data
    root = Path(d.data_dir) if d.data_dir else data_root(None)
    if d.format == "voc":
        return (
            VOCDetection(root / d.voc_root, d.train_split, train=True, seed=cfg.train.seed),
            VOCDetection(root / d.voc_root, d.val_split).limit(d.val_limit),
        )
    return (
        CocoDetection(
            root / d.train_images, root / d.train_annotations, train=True, seed=cfg.train.seed
        ),
        CocoDetection(root / d.val_images, root / d.val_annotations).limit(d.val_limit),
    )


def make_model(cfg: DetConfig, num_classes: int) -> torch.nn.Module:
    m = cfg.model
    return build_detector(
        m.backbone,
        num_classes,
        m.design,
        weights=m.weights,
        frozen_stages=m.frozen_stages,
        norm=m.norm,
        min_size=tuple(m.min_size),
        max_size=m.max_size,
    )


def lr_at(cfg: DetConfig, iteration: int) -> float:
    """The learning rate of ``iteration``: ``optim.lr`` scaled linearly to the batch (from 16),
    a linear warm-up from a thousandth of it, and the drops at ``optim.milestones``."""
    o = cfg.optim
    lr = o.lr * cfg.train.batch_size / 16 * o.gamma ** sum(iteration >= m for m in o.milestones)
    if iteration < o.warmup_iterations:
        frac = iteration / o.warmup_iterations
        lr *= 0.001 * (1 - frac) + frac
    return lr


class WarmupSteps:
    """:func:`lr_at` as the engine's schedule: a function of the iteration alone (nothing to
    save, no warm-up by error, no plateau rule)."""

    warmup_ended_at = None

    def __init__(self, cfg: DetConfig) -> None:
        self.cfg = cfg

    def lr(self, iteration: int) -> float:
        return lr_at(self.cfg, iteration)

    def observe_train_error(self, error: float, iteration: int) -> bool:
        return False

    def observe_eval_error(self, error: float, iteration: int) -> bool:
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class DetectionStep:
    """One SGD step of the detector per call, in the engine's step contract
    (:class:`~reslab.engine.loop.Step`): ``start_epoch(epoch, start)`` sets the epoch's
    order and flips, ``len()`` is the batches per epoch. Each step adds ``[loss * images, 0,
    images]`` to the meter's ``window`` and its loss terms to :attr:`parts`."""

    def __init__(self, cfg: DetConfig, model, optimizer, train_set, window: torch.Tensor) -> None:
        self.cfg, self.model, self.optimizer, self.train_set = cfg, model, optimizer, train_set
        self.window, self.device = window, window.device
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.parts: dict[str, torch.Tensor] = {}
        self.images = 0  # images since the loss terms were last taken
        self._batches: list[list[int]] = []
        self._position = 0

    def __len__(self) -> int:
        return len(self.train_set) // self.cfg.train.batch_size

    def start_epoch(self, epoch: int, start: int = 0) -> None:
        t = self.cfg.train
        self.train_set.set_epoch(epoch)  # the flips of this epoch
        order = torch.randperm(
            len(self.train_set), generator=torch.Generator().manual_seed(t.seed * 100_003 + epoch)
        )
        self._batches = order[: len(self) * t.batch_size].view(-1, t.batch_size).tolist()
        self._position = start

    def __call__(self, lr: float) -> None:
        batch = self._batches[self._position]
        self._position += 1
        images, targets = collate([self.train_set[i] for i in batch])
        images = [im.to(self.device) for im in images]
        targets = [{k: v.to(self.device) for k, v in training_target(t).items()} for t in targets]
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        losses = self.model(images, targets)
        loss = sum(losses.values())  # a loss that is no longer finite stops the run at its log
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.optim.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.clip_grad_norm)
        self.optimizer.step()
        with torch.no_grad():
            self.window[0] += loss.detach() * len(batch)
            self.window[2] += len(batch)
            for k, v in losses.items():
                self.parts[k] = self.parts.get(k, 0) + v.detach() * len(batch)
        self.images += len(batch)

    def take_parts(self) -> dict[str, float]:
        """The loss terms' means over the images since the last call."""
        parts, images, self.parts, self.images = self.parts, self.images, {}, 0
        return {k: (v / max(images, 1)).item() for k, v in parts.items()}


class Detection:
    """A detection run as a task of :func:`~reslab.engine.trainer.fit`: the detector, its data,
    torchvision-style SGD with warm-up, mAP evaluations (``val_*`` in the log) and the detector's
    weights file with its config; one process."""

    distributed = False
    reports_error = False  # the window's loss only; detections have no training error

    def __init__(self, cfg: DetConfig) -> None:
        self.cfg = cfg
        self.started = dt.datetime.now(dt.UTC)

    def prepare(self, run_dir: Path, info: DistInfo, device: torch.device, fresh: bool) -> Parts:
        cfg, t = self.cfg, self.cfg.train
        torch.manual_seed(t.seed)
        self.train_set, self.val_set = build_datasets(cfg)
        if len(self.train_set) < t.batch_size:
            raise DataError(
                f"{len(self.train_set)} training images are fewer than one batch "
                f"(train.batch_size={t.batch_size}); lower train.batch_size"
            )
        self.model = make_model(cfg, len(self.train_set.classes)).to(device)
        self.device = device
        params = [p for p in self.model.parameters() if p.requires_grad]
        o = cfg.optim
        optimizer = torch.optim.SGD(
            params, lr=lr_at(cfg, 0), momentum=o.momentum, weight_decay=o.weight_decay
        )
        note = f"{len(self.train_set)} training and {len(self.val_set)} validation images"
        return Parts(self.model, optimizer, WarmupSteps(cfg), t.batch_size, note)

    def make_step(self, parts, window, info, device, precision):
        self.step = DetectionStep(self.cfg, parts.model, parts.optimizer, self.train_set, window)
        return self.step, {}

    def window_fields(self, loss: float, error: float) -> dict[str, float]:
        return {"loss": loss, **self.step.take_parts()}

    def evaluate(self, final: bool) -> tuple[dict[str, Any], None]:
        cfg = self.cfg
        preds = predict(self.model, self.val_set, self.device, test_size=cfg.model.test_size)
        result = score(self.val_set, preds, cfg.data.format)
        self.model.transform.min_size = tuple(cfg.model.min_size)
        self.model.train()
        self.result = result
        return {f"val_{k}": v for k, v in result.items()}, None

    def save_weights(self, model: torch.nn.Module, path: Path, version: str) -> None:
        save_detector(model, path, self.cfg, self.train_set.classes)
        plot_map_curve(path.parent)

    def summary(self, result: dict[str, Any]) -> dict[str, Any]:
        return {
            "backbone": self.cfg.model.backbone,
            "design": self.cfg.model.design,
            **result,
            "started": self.started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


def fit_detector(
    cfg: DetConfig, run_dir: str | Path, *, restart: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train ``cfg`` in ``run_dir`` (resuming from its newest checkpoint; ``restart`` deletes its
    outputs first) in the engine's :func:`~reslab.engine.trainer.fit`; returns the summary (a
    finished run's at once)."""
    return fit(cfg, run_dir, task=Detection(cfg), restart=restart, progress=progress)


def save_detector(model: torch.nn.Module, path: Path, cfg: DetConfig, classes: list[str]) -> None:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "config": json.dumps(cfg.to_dict()),
        "classes": json.dumps(classes),
        "code_version": code_version(),
    }
    atomic_write(path, save(state, metadata=meta))  # a link there is replaced, not written through


def load_detector(weights: str | Path) -> tuple[torch.nn.Module, DetConfig, list[str]]:
    """A detector saved by :func:`fit_detector` (a ``model.safetensors`` or its run directory);
    anything else is a :class:`WeightsError` naming the file."""
    from reslab.weights.checks import load_state
    from reslab.weights.files import meta_value, read_metadata, read_tensors

    path = find_weights(weights)
    what = "give the run directory or model.safetensors of `reslab detect train`"
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path} is not a detector's weights file (a .safetensors); {what}")
    meta = read_metadata(path)
    if "config" not in meta:
        held = "no detection config"
        if "model" in meta:
            held = f"a classification model ({meta['model']}; `reslab eval` tests it)"
        raise WeightsError(f"{path} holds {held}, not a detector of `reslab detect train`; {what}")
    try:
        cfg = build_dataclass(DetConfig, meta_value(meta, "config", path))
    except ConfigError as err:
        raise WeightsError(
            f"{path}: its metadata 'config' is no detection config ({err})"
        ) from None
    classes = meta_value(meta, "classes", path)
    if not classes:
        raise WeightsError(f"{path}: no 'classes' in its metadata; the file's metadata is damaged")
    cfg.model.weights = None  # the saved state has the trained backbone
    model = make_model(cfg, len(classes))
    load_state(
        model, read_tensors(path).state, path, f"{cfg.model.design} {cfg.model.backbone} detector"
    )
    return model, cfg, classes


def evaluate_run(
    weights: str | Path,
    *,
    data: str | None = None,
    limit: int = 0,
    draw_dir: str | Path | None = None,
    draw: int = 8,
    threshold: float = 0.5,
    device: str = "auto",
) -> dict[str, Any]:
    """``reslab detect eval``: COCO mAP (and VOC07 mAP for VOC data) of a trained detector on its
    validation set (under ``data`` when given; the first ``limit`` images, 0: all); with
    ``draw_dir``, PNGs of the first ``draw`` images with the boxes scoring >= ``threshold``."""
    if limit < 0 or draw < 0:
        raise ConfigError(f"--limit {limit} and --draw {draw} must be >= 0")
    model, cfg, classes = load_detector(weights)
    if data:
        cfg.data.data_dir = data
    cfg.data.val_limit = limit
    _, val = build_datasets(cfg)
    device = resolve_device(device)
    model.to(device)
    preds = predict(model, val, device, test_size=cfg.model.test_size, progress=True)
    result = {**score(val, preds, cfg.data.format), "images": len(val), "weights": str(weights)}
    if draw_dir:
        for i in range(min(draw, len(val))):
            image, target = val[i]
            image_id = int(target["image_id"])
            out = Path(draw_dir) / f"{image_id}.png"
            visualize(image, preds[image_id], classes, out, threshold)
        result["drawn"] = min(draw, len(val))
    return result


def describe(result: dict[str, Any]) -> str:
    """One line about a training run's summary or an evaluation's result."""
    if result.get("status") == "interrupted":
        return f"interrupted at iteration {result['iteration']}; run the same command to resume"
    if "status" in result:
        return (
            f"{result['name']}: {result['iterations']} iterations, mAP@[.5:.95] "
            f"{result['val_map']:.3f}, mAP@.5 {result['val_map50']:.3f} on {result['device']}"
        )
    voc = f", VOC07 mAP {result['voc07_map']:.3f}" if "voc07_map" in result else ""
    drawn = f"drew {result['drawn']} images; " if "drawn" in result else ""
    return (
        f"{drawn}mAP@[.5:.95] {result['map']:.3f}, mAP@.5 {result['map50']:.3f}{voc} on "
        f"{result['images']} images"
    )


def plot_map_curve(run_dir: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "val_map50" in r]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    its = [r["iteration"] for r in rows]
    ax.plot(its, [r["val_map50"] for r in rows], "o-", label="mAP@.5")
    ax.plot(its, [r["val_map"] for r in rows], "s--", label="mAP@[.5:.95]")
    ax.set_xlabel("iterations")
    ax.set_ylabel("mAP")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = run_dir / "map.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
