"""Image classification as a task of :func:`~reslab.engine.trainer.fit`: the paper's networks on
CIFAR-10 or an image folder, with the paper's SGD and schedules.

    uv run reslab train cifar10/resnet20 --set train.iterations=400 --out runs/try

:class:`Classification` builds the data (:mod:`reslab.data.builders`), the network (fine-tuning
from ``train.init``, frozen stages), the optimiser and the schedule; refuses a run that cannot
train before its first step (:func:`check_trainable`); chooses the step
(:func:`~reslab.engine.steps.make_step`); evaluates on the eval split (the final test with the
run's views); and saves ``model.safetensors`` with what rebuilds and feeds the network.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from reslab.config import Config
from reslab.data.builders import DataBundle, build_data
from reslab.engine import distributed
from reslab.engine.evaluate import evaluate
from reslab.engine.loop import Parts
from reslab.engine.optim import PaperSGD, build_schedule
from reslab.engine.steps import make_step
from reslab.errors import ConfigError
from reslab.models import create_model
from reslab.models.factory import save_weights, source_state
from reslab.weights.checks import initialise_from

_INIT_LOCK = threading.Lock()  # the global RNG: packed runs in threads initialise one at a time


class Classification:
    """What :func:`~reslab.engine.trainer.fit` needs of a classification config (``cfg``); with
    ``stack`` (a seat of a :class:`~reslab.engine.stacked.StackGroup`) its steps run stacked."""

    distributed = True

    def __init__(self, cfg: Config, stack: Any = None) -> None:
        self.cfg, self.stack = cfg, stack
        self.data: DataBundle | None = None
        self.model: nn.Module | None = None
        self.final_result: dict[str, Any] = {}

    def prepare(
        self, run_dir: Path, info: distributed.DistInfo, device: torch.device, fresh: bool
    ) -> Parts:
        cfg, t = self.cfg, self.cfg.train
        self.data = build_data(cfg, device, (info.rank, info.world_size), run_dir)
        with _INIT_LOCK:
            seed_everything(t.seed)
            self.model = build_model(cfg, device, len(self.data.classes))
        check_trainable(cfg, self.model, self.data, t.batch_size // info.world_size)
        events = []
        if t.init and fresh:
            declared = "stride_in" in cfg.model.options  # a plain file's layout, declared
            events.append(
                {"event": "init", "iteration": 0, **_initialise(self.model, t.init, info, declared)}
            )
        self.model.freeze(t.freeze_stages, t.freeze_bn)
        o = cfg.optim
        optimizer = PaperSGD(self.model.parameters(), o.lr, o.momentum, o.weight_decay)
        batch = t.batch_size // info.world_size
        return Parts(self.model, optimizer, build_schedule(o), batch, self.data.note, events)

    def make_step(self, parts, window, info, device, precision):
        return make_step(
            self.cfg,
            parts.model,
            parts.optimizer,
            self.data.train,
            window,
            info,
            device,
            self.stack,
            precision,
        )

    def window_fields(self, loss: float, error: float) -> dict[str, float]:
        return {"train_loss": loss, "train_error": error}

    def evaluate(self, final: bool) -> tuple[dict[str, Any], float]:
        """Test errors of the current network: the eval split, or (``final``) the final test
        with the run's views (10-crop on image folders by default)."""
        result = evaluate(self.model, self.data.final if final else self.data.eval)
        views = self.cfg.data.test_views if final and self.cfg.data.dataset == "imagefolder" else ""
        if final:
            self.final_result = result
        fields = {
            "test_error": result["error"],
            "test_top5_error": result["top5_error"],
            "test_loss": result["loss"],
            **({"test_views": views} if views else {}),
        }
        return fields, result["error"]

    def save_weights(self, model: nn.Module, path: Path, version: str) -> None:
        meta = _metadata(self.cfg, model, self.data, version)
        save_weights(model, path, self.cfg.model.name, **meta)

    def summary(self, result: dict[str, Any]) -> dict[str, Any]:
        cfg, d, r = self.cfg, self.cfg.data, self.final_result
        cifar = d.dataset == "cifar10"
        fields = {
            "model": cfg.model.name,
            "model_options": cfg.model.options,
            "dataset": d.dataset,
            "train_split": d.split if cifar else d.train_dir,
            "eval_split": d.eval_split if cifar else d.eval_dir,
            "test_views": "single" if cifar else d.test_views,
            "test_error": r["error"],
            "test_top5_error": r["top5_error"],
            "test_loss": r["loss"],
            "test_images": r["images"],
            "channels_last": cfg.train.channels_last,
        }
        if not cifar:
            fields["skipped_images"] = self.data.train.skipped  # data.skip_corrupt: listed
        return fields


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: Config, device: torch.device, classes: int | None = None) -> nn.Module:
    """The config's network on ``device``; its classifier has ``classes`` outputs unless
    ``model.options`` names ``num_classes``."""
    given = {"num_classes": classes} if classes is not None else {}
    model = create_model(cfg.model.name, **{**given, **cfg.model.options}).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def check_trainable(cfg: Config, model: nn.Module, data: DataBundle, batch: int) -> None:
    """Refuse, before the first step, a run that cannot train (:class:`ConfigError` naming the key
    and the fix): a classifier with fewer outputs than the data has classes, an input the network
    cannot take, or batch-norm layers that would see one value per channel (a 1x1 map at a batch
    of one per process, where training BN is undefined). One image goes through the network."""
    outputs = getattr(getattr(model, "fc", None), "out_features", None)
    if outputs is not None and outputs < len(data.classes):
        raise ConfigError(
            f"model.options.num_classes={outputs} but the data has {len(data.classes)} classes; "
            f"set it to {len(data.classes)} (or leave it out: the data's count is used)"
        )
    size = cfg.data.crop if cfg.data.dataset == "imagefolder" else 32
    channels = getattr(model, "default_input_size", (3,))[0]
    if channels != 3:
        raise ConfigError(f"model.options.in_chans={channels}, but the images are RGB; use 3")
    smallest: list[int] = []
    hooks = [
        m.register_forward_pre_hook(lambda _, x: smallest.append(x[0][0, 0].numel()))
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    except RuntimeError as err:
        key = "data.crop" if cfg.data.dataset == "imagefolder" else "model.name"
        raise ConfigError(
            f"{cfg.model.name} cannot take {size}x{size} inputs ({str(err).splitlines()[0]}); "
            f"change {key}"
        ) from None
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    if smallest and batch * min(smallest) < 2:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} gives {batch} image per process and "
            f"{cfg.model.name}'s last maps are 1x1 at {size}x{size} inputs: batch norm would see "
            "one value per channel; train with 2 or more images per process, or larger inputs"
            + (" (data.crop)" if cfg.data.dataset == "imagefolder" else "")
        )


def _initialise(
    model: nn.Module, source: str, info: distributed.DistInfo, declared: bool = False
) -> dict[str, Any]:
    """``train.init``: start from the tensors of another run, file or weights name; prints which
    were loaded and which are new (the classifier, when the classes differ). ``declared``: the
    config names the bottleneck layout (``model.options.stride_in``) a plain state dict has."""
    state, arch, label = source_state(source)
    loaded, new = initialise_from(model, state, label, arch, declared)
    if info.is_main:
        fresh = f" ({', '.join(new)})" if new else ""
        print(f"initialised from {label}: {len(loaded)} tensors loaded, {len(new)} new{fresh}")
    return {"init": label, "loaded": len(loaded), "new": new}


def _metadata(cfg: Config, model: nn.Module, data: DataBundle, version: str) -> dict[str, Any]:
    """What a weights file needs besides the architecture: how to feed the network and what its
    outputs mean (the image-folder keys only for image-folder runs)."""
    norm = data.normalize
    meta = {
        "dataset": cfg.data.dataset,
        "normalization": cfg.data.normalization,
        "normalize_mean": norm.mean.cpu().flatten().tolist(),
        "normalize_std": norm.std.cpu().flatten().tolist(),
        "normalize_shape": list(norm.mean.shape),
        "classes": data.classes,
        "input_size": list(model.default_input_size),
        "code_version": version,
    }
    if cfg.data.dataset == "cifar10":
        meta["train_split"] = cfg.data.split
    else:
        meta.update(
            train_dir=cfg.data.train_dir,
            eval_dir=cfg.data.eval_dir,
            resize=str(cfg.data.scale[0]),
            crop=str(cfg.data.crop),
        )
    return meta
