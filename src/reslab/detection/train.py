"""``reslab detect train|eval``: Faster R-CNN runs with the engine's habits (resumable, logged).

    uv run reslab detect train detection/coco128_fpn_resnet50 --set train.iterations=20 --out runs/det
    uv run reslab detect eval runs/det --data ../shared/data/coco128 --visualize runs/det/vis

A run directory holds ``config.yaml``, ``metrics.jsonl`` (losses every ``log_every`` iterations and
mAP every ``eval_every``), ``checkpoints/`` (atomic; the same command resumes from the newest),
``summary.json``, ``model.safetensors`` (detector weights with the config in the metadata) and
``map.png`` (the mAP@.5 curve). The run directory follows the engine's rules
(:mod:`reslab.engine.rundir`): one process at a time, another config refused with the keys named,
``--restart`` to start over, a finished run returns its summary. The run trains in the engine's
loop (:func:`reslab.engine.trainer.train_loop`, the one classification uses): only the steps
count on its clock, and SIGINT/SIGTERM checkpoint and stop after the step.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import yaml
from tqdm import tqdm

from reslab.config import (
    ConfigError,
    Count,
    Device,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Range,
    RunConfig,
    build_dataclass,
    read_config_data,
)
from reslab.data.paths import data_root
from reslab.detection.backbones import build_detector
from reslab.detection.data import CocoDetection, VOCDetection, collate, training_target
from reslab.detection.evaluate import coco_map, voc07_map
from reslab.engine.checkpoint import (
    atomic_save,
    atomic_write,
    prune_checkpoints,
    remove_temporaries,
    rng_state,
    set_rng_state,
)
from reslab.engine.distributed import DistInfo
from reslab.engine.logging import JsonlLogger, json_bytes, read_jsonl
from reslab.engine.rundir import RunLock, finished_summary, resume_point, start_over
from reslab.engine.runtime import code_version, describe_device, resolve_device
from reslab.engine.trainer import Meter, TrainState, train_loop
from reslab.errors import DataError, DivergedError, WeightsError
from reslab.weights.files import find_weights


@dataclass
class DetModelConfig:
    backbone: str = "resnet50"  # any reslab ImageNet-family model
    design: Literal["c4", "fpn"] = "fpn"  # "c4" (the paper) or "fpn"
    weights: str | None = None  # ImageNet weights of the backbone (reslab or torchvision layout)
    frozen_stages: Count = 1  # stem (+ stages) without gradients
    norm: Literal["auto", "frozen", "batch"] = "auto"  # auto: frozen with weights, else batch
    min_size: list[PositiveInt] = field(default_factory=lambda: [800])  # several: multi-scale
    max_size: PositiveInt = 1333
    test_size: PositiveInt = 800


@dataclass
class DetDataConfig:
    format: Literal["coco", "voc"] = "coco"  # images + instances JSON, or PASCAL VOC XML
    data_dir: str | None = None  # root the paths below are relative to (default: data root)
    train_images: str = "coco128/train2017"
    train_annotations: str = "coco128/annotations/instances_train2017.json"
    val_images: str = "coco128/train2017"
    val_annotations: str = "coco128/annotations/instances_train2017.json"
    voc_root: str = "VOCdevkit/VOC2007"
    train_split: str = "trainval"
    val_split: str = "test"
    workers: Count = 2
    val_limit: Count = 0  # evaluate on the first N validation images (0: all)


@dataclass
class DetOptimConfig:
    lr: PositiveFloat = 0.02  # for batch 16 (scaled linearly with train.batch_size)
    momentum: Annotated[float, Range(0, 1, high_open=True)] = 0.9
    weight_decay: NonNegativeFloat = 1.0e-4
    milestones: list[PositiveInt] = field(default_factory=lambda: [60000, 80000])
    gamma: Annotated[float, Range(0, 1, low_open=True)] = 0.1
    warmup_iterations: Count = 500  # linear warm-up from lr/1000
    clip_grad_norm: NonNegativeFloat = 0.0  # clip the gradient's global norm to this (0: off)


@dataclass
class DetTrainConfig:
    iterations: PositiveInt = 90000
    batch_size: PositiveInt = 2
    seed: Annotated[int, Range(0, 2**32 - 1)] = 0
    device: Device = "auto"
    log_every: PositiveInt = 20
    eval_every: Count = 0  # 0: at the end only
    checkpoint_every: PositiveInt = 500
    keep_checkpoints: PositiveInt = 2


@dataclass
class DetConfig(RunConfig):
    model: DetModelConfig = field(default_factory=DetModelConfig)
    data: DetDataConfig = field(default_factory=DetDataConfig)
    optim: DetOptimConfig = field(default_factory=DetOptimConfig)
    train: DetTrainConfig = field(default_factory=DetTrainConfig)

    def check(self) -> None:
        if not self.model.min_size:
            raise ConfigError("model.min_size: give at least one shorter-side size")


def load_det_config(
    name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> DetConfig:
    return build_dataclass(DetConfig, read_config_data(name_or_path, overrides))


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
        m.backbone, num_classes, m.design, weights=m.weights, frozen_stages=m.frozen_stages,
        norm=m.norm, min_size=tuple(m.min_size), max_size=m.max_size,
    )  # fmt: skip


def lr_at(cfg: DetConfig, iteration: int) -> float:
    o = cfg.optim
    lr = o.lr * cfg.train.batch_size / 16 * o.gamma ** sum(iteration >= m for m in o.milestones)
    if iteration < o.warmup_iterations:
        frac = iteration / o.warmup_iterations
        lr *= 0.001 * (1 - frac) + frac
    return lr


@torch.no_grad()
def predict(model: torch.nn.Module, dataset: CocoDetection, device: torch.device, batch: int = 2,
            test_size: int | None = None, progress: bool = False) -> dict[int, dict[str, torch.Tensor]]:  # fmt: skip
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


def fit_detector(
    cfg: DetConfig, run_dir: str | Path, *, restart: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train ``cfg`` in ``run_dir`` (resuming from its newest checkpoint; ``restart`` deletes its
    outputs first); returns the summary (a finished run's at once)."""
    run_dir = Path(run_dir)
    with RunLock(run_dir):
        if restart:
            start_over(run_dir)
        summary = finished_summary(cfg, run_dir)
        if summary is not None:
            return summary
        resumed = resume_point(cfg, run_dir)
        for folder in (run_dir, run_dir / "checkpoints"):
            remove_temporaries(folder)  # left by a process killed while writing
        atomic_write(
            run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode()
        )
        return _train_detector(cfg, run_dir, resumed, progress)


class DetectionStep:
    """One SGD step of the detector per call, in the engine's step contract
    (:func:`~reslab.engine.trainer.train_loop`): ``start_epoch(epoch, start)`` sets the epoch's
    order and flips, ``len()`` is the batches per epoch. Each step adds ``[loss * images, 0,
    images]`` to the meter's ``window`` and its loss terms to :attr:`parts`."""

    def __init__(self, cfg: DetConfig, model, optimizer, train_set, state: TrainState,
                 window: torch.Tensor):  # fmt: skip
        self.cfg, self.model, self.optimizer, self.train_set = cfg, model, optimizer, train_set
        self.state = state  # the run's (for the iteration in messages)
        self.window, self.device = window, window.device
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.parts: dict[str, torch.Tensor] = {}
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
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            parts = {k: round(v.item(), 4) for k, v in losses.items()}
            raise DivergedError(
                f"iteration {self.state.iteration}: the loss is not finite ({parts}); lower optim.lr"
            )
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

    def take_parts(self, images: float) -> dict[str, float]:
        """The loss terms' means over the ``images`` since the last call."""
        parts, self.parts = self.parts, {}
        return {k: (v / images).item() for k, v in parts.items()}


@dataclass
class _Detection:
    """What :func:`~reslab.engine.trainer.train_loop` calls back for a detection run: the
    logging, evaluation and checkpoint blocks."""

    cfg: DetConfig
    run_dir: Path
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step: DetectionStep
    state: TrainState
    meter: Meter
    logger: JsonlLogger
    val_set: CocoDetection
    info: DistInfo = field(default_factory=DistInfo)  # one process (no stop to agree on)

    def log_window(self, bar: tqdm) -> None:
        parts = self.step.take_parts(self.meter.window[2].item())
        loss, _ = self.meter.read(self.info)
        s, seconds = self.state, self.meter.train_s
        self.logger.log(
            iteration=s.iteration, epoch=s.epoch, lr=self.optimizer.param_groups[0]["lr"],
            loss=loss, **parts,
            images_per_s=self.meter.timed_images(1) / seconds if seconds > 0 else float("nan"),
        )  # fmt: skip
        bar.set_postfix(loss=f"{loss:.3f}")

    def evaluate(self) -> dict[str, float]:
        device = self.meter.window.device
        preds = predict(self.model, self.val_set, device, test_size=self.cfg.model.test_size)
        result = score(self.val_set, preds, self.cfg.data.format)
        self.model.transform.min_size = tuple(self.cfg.model.min_size)
        self.model.train()
        self.logger.log(
            iteration=self.state.iteration, **{f"val_{k}": v for k, v in result.items()}
        )
        return result

    def save(self, name: str) -> Path:
        payload = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                   "state": asdict(self.state), "rng": rng_state(), "config": self.cfg.to_dict(),
                   "code_version": code_version()}  # fmt: skip
        path = atomic_save(payload, self.run_dir / "checkpoints" / name)
        prune_checkpoints(self.run_dir / "checkpoints", self.cfg.train.keep_checkpoints)
        return path


def _train_detector(
    cfg: DetConfig, run_dir: Path, resumed: tuple[dict[str, Any], Path] | None, progress: bool
) -> dict[str, Any]:
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    train_set, val_set = build_datasets(cfg)
    t = cfg.train
    if len(train_set) < t.batch_size:
        raise DataError(
            f"{len(train_set)} training images are fewer than one batch ({t.batch_size})"
        )
    model = make_model(cfg, len(train_set.classes)).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr_at(cfg, 0), momentum=cfg.optim.momentum,
                          weight_decay=cfg.optim.weight_decay)  # fmt: skip
    state = TrainState()
    if resumed is not None:
        ckpt, _ = resumed
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state = TrainState(**ckpt["state"])
        set_rng_state(ckpt["rng"])  # the RPN/RoI samplers draw from the global generator
    meter = Meter(torch.zeros(3, device=device, dtype=torch.float64), t.batch_size)
    step = DetectionStep(cfg, model, opt, train_set, state, meter.window)
    logger = JsonlLogger(run_dir / "metrics.jsonl")
    logger.truncate_after(state.iteration if resumed else -1)
    run = _Detection(cfg, run_dir, model, opt, step, state, meter, logger, val_set)
    bar = tqdm(total=t.iterations, initial=state.iteration, unit="it", disable=not progress,
               desc=cfg.name)  # fmt: skip
    start = dt.datetime.now(dt.UTC)
    try:
        model.train()
        interrupted = train_loop(run, step, lambda it: lr_at(cfg, it), run.evaluate, bar)
        if interrupted is not None:
            return interrupted
        result = run.evaluate()
        meter.stamp(state)
        run.save("final.pt")
    finally:
        bar.close()
        logger.close()
    save_detector(model, run_dir / "model.safetensors", cfg, train_set.classes)
    plot_map_curve(run_dir)
    summary = {
        "status": "finished", "name": cfg.name, "backbone": cfg.model.backbone,
        "design": cfg.model.design, "iterations": state.iteration, "batch_size": t.batch_size,
        **{f"val_{k}": v for k, v in result.items()},
        "wall_time_s": round(state.wall_time_s, 2), "train_time_s": round(state.train_time_s, 2),
        "images_per_s": (state.iteration - state.untimed_iterations) * t.batch_size
        / state.train_time_s if state.train_time_s else None,
        "device": describe_device(device), "code_version": code_version(),
        "torch_version": torch.__version__, "started": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }  # fmt: skip
    atomic_write(run_dir / "summary.json", json_bytes(summary))
    return summary


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


def visualize(image: torch.Tensor, prediction: dict[str, torch.Tensor], classes: list[str], path: Path,
              threshold: float = 0.5) -> Path:  # fmt: skip
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
