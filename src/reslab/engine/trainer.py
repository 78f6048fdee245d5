"""Training and evaluation: plain functions, and ``fit`` which runs a whole config resumably.

    uv run reslab train cifar10/resnet20 --set train.iterations=400 --out runs/try

A run directory holds ``config.yaml`` (resolved), ``metrics.jsonl`` (one JSON line per logged
interval and evaluation), ``checkpoints/`` (the last k periodic ones and ``final.pt``),
``summary.json`` and ``model.safetensors``. Running the same command again resumes from the newest
checkpoint and ends with the same weights as an uninterrupted run; SIGINT/SIGTERM save a checkpoint
and stop cleanly.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import random
import resource
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm import tqdm

from reslab.config import Config
from reslab.data.cifar import load_cifar10
from reslab.data.loaders import TensorLoader
from reslab.data.transforms import Normalize
from reslab.engine.checkpoint import (
    atomic_save,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    set_rng_state,
)
from reslab.engine.logging import JsonlLogger
from reslab.engine.optim import PaperSGD, StepSchedule, set_lr
from reslab.engine.runtime import (
    autocast,
    code_version,
    configure_cpu,
    describe_device,
    resolve_device,
)
from reslab.models import create_model


@dataclass
class TrainState:
    """Where a run stands: optimisation steps done, and the position in the data order."""

    iteration: int = 0
    epoch: int = 0
    position: int = 0  # batches of the current epoch already used
    train_time_s: float = 0.0  # seconds spent in training steps (all sessions)
    wall_time_s: float = 0.0  # seconds of the whole run, evaluation included (all sessions)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: Config, device: torch.device) -> nn.Module:
    model = create_model(cfg.model.name, **cfg.model.options).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def fit_normalizer(cfg: Config, train_images: torch.Tensor) -> Normalize:
    """The input normalisation of ``cfg``, fitted on the training split's images."""
    return Normalize.fit(train_images, cfg.data.normalization)


def build_cifar(cfg: Config, device: torch.device) -> tuple[TensorLoader, TensorLoader]:
    """Training and evaluation loaders of a CIFAR-10 config (datasets resident on ``device``)."""
    train_x, train_y = load_cifar10(cfg.data.data_dir, cfg.data.split)
    eval_x, eval_y = load_cifar10(cfg.data.data_dir, cfg.data.eval_split)
    normalize = fit_normalizer(cfg, train_x).to(device)
    layout = torch.channels_last if cfg.train.channels_last else torch.contiguous_format

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return normalize(x).contiguous(memory_format=layout)

    common = {"normalize": prepare, "seed": cfg.train.seed, "device": device}
    train = TensorLoader(
        train_x, train_y, cfg.train.batch_size, train=True, pad=cfg.data.pad, **common
    )
    test = TensorLoader(eval_x, eval_y, cfg.train.eval_batch_size, train=False, **common)
    return train, test


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    precision: str = "bf16",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step; returns the summed loss and the number of top-1 errors (device tensors)."""
    with autocast(images.device, precision):
        logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    errors = (logits.detach().argmax(1) != labels).sum()
    return loss.detach() * len(labels), errors


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: TensorLoader | Iterator, precision: str = "fp32"
) -> dict[str, float]:
    """Top-1 / top-5 error (percent) and mean loss of ``model`` in eval mode, without gradients."""
    was_training = model.training
    model.eval()
    loss = top1 = top5 = n = 0
    try:
        for images, labels in loader:
            with autocast(images.device, precision):
                logits = model(images).float()
            loss += F.cross_entropy(logits, labels, reduction="sum").item()
            k = min(5, logits.shape[1])
            topk = logits.topk(k, dim=1).indices
            top1 += (topk[:, 0] != labels).sum().item()
            top5 += (~(topk == labels[:, None]).any(1)).sum().item()
            n += len(labels)
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("evaluate() got an empty loader")
    return {"error": 100 * top1 / n, "top5_error": 100 * top5 / n, "loss": loss / n, "images": n}


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: TensorLoader,
    schedule: StepSchedule,
    state: TrainState,
    *,
    until: int,
    precision: str = "bf16",
    step_fn: Callable | None = None,
    on_step: Callable[[torch.Tensor, torch.Tensor, int], bool] | None = None,
) -> bool:
    """Train from ``state`` to the end of its epoch or to iteration ``until``, whichever is first.

    ``step_fn`` defaults to :func:`train_step`; ``on_step(loss_sum, errors, batch)`` runs after every
    step and may return True to stop early. Returns True when the epoch was finished (``state`` then
    points at the next epoch).
    """
    step_fn = step_fn or train_step
    model.train()
    for images, labels in loader.batches(state.epoch, state.position):
        set_lr(optimizer, schedule.lr(state.iteration))
        loss_sum, errors = step_fn(model, optimizer, images, labels, precision)
        state.iteration += 1
        state.position += 1
        stop = on_step(loss_sum, errors, len(labels)) if on_step is not None else False
        if stop or state.iteration >= until:
            if state.position < len(loader):
                return False
            break
    state.epoch, state.position = state.epoch + 1, 0
    return True


class _StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save_safetensors(model: nn.Module, path: Path, cfg: Config) -> None:
    """Final weights as a plain state dict, with what is needed to rebuild and feed the model."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "model": cfg.model.name,
        "model_options": json.dumps(cfg.model.options),
        "dataset": cfg.data.dataset,
        "normalization": cfg.data.normalization,
        "train_split": cfg.data.split,
        "code_version": code_version(),
    }
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)


def fit(
    cfg: Config, run_dir: str | Path, *, resume: bool = True, progress: bool = True
) -> dict[str, Any]:
    """Train ``cfg`` in ``run_dir`` (resuming from its newest checkpoint) and return the summary."""
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    summary_path = run_dir / "summary.json"
    if resume and summary_path.is_file() and (ckpt_dir / "final.pt").is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("status") == "finished":
            return summary
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    device = resolve_device(cfg.train.device)
    if device.type == "cpu":
        configure_cpu()
    seed_everything(cfg.train.seed)
    model = build_model(cfg, device)
    optimizer = PaperSGD(
        model.parameters(), cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay
    )
    o = cfg.optim
    schedule = StepSchedule(o.lr, o.milestones, o.gamma, o.warmup_lr, o.warmup_until_error)
    train_loader, eval_loader = build_cifar(cfg, device)
    state = TrainState()
    window = {
        "loss": torch.zeros((), device=device),
        "errors": torch.zeros((), device=device),
        "n": 0,
    }

    checkpoints = list_checkpoints(ckpt_dir) if resume else []
    if checkpoints:
        ckpt = load_checkpoint(checkpoints[-1])
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        state = TrainState(**ckpt["state"])
        window = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in ckpt["window"].items()}
        set_rng_state(ckpt["rng"])
    logger = JsonlLogger(run_dir / "metrics.jsonl")
    if checkpoints:
        logger.truncate_after(state.iteration)
        logger.log(event="resume", iteration=state.iteration, code_version=code_version())
    else:
        logger.truncate_after(-1)

    def save(name: str) -> Path:
        state.wall_time_s = wall_base + time.perf_counter() - session_start
        payload = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "state": asdict(state),
            "window": window,
            "rng": rng_state(),
            "config": cfg.to_dict(),
            "code_version": code_version(),
        }
        path = atomic_save(payload, ckpt_dir / name)
        prune_checkpoints(ckpt_dir, cfg.train.keep_checkpoints)
        return path

    total, t = cfg.train.iterations, cfg.train
    bar = tqdm(
        total=total,
        initial=state.iteration,
        unit="it",
        desc=cfg.name or cfg.model.name,
        disable=not progress,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    last = {"train_error": float("nan"), "train_loss": float("nan")}
    session_start, wall_base = time.perf_counter(), state.wall_time_s
    clock = {"t": time.perf_counter(), "train_s": 0.0, "images": 0}  # this session's training steps

    def tick() -> None:
        """Account the training time since the last tick (evaluation and saving excluded)."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        clock["train_s"] += now - clock["t"]
        state.train_time_s += now - clock["t"]
        clock["t"] = now

    def log_window() -> None:
        n = window["n"]
        loss, err = window["loss"].item() / n, 100 * window["errors"].item() / n
        last.update(train_loss=loss, train_error=err)
        ips = clock["images"] / clock["train_s"] if clock["train_s"] > 0 else float("nan")
        logger.log(
            iteration=state.iteration,
            epoch=state.epoch,
            lr=optimizer.param_groups[0]["lr"],
            train_loss=loss,
            train_error=err,
            images_per_s=ips,
            peak_memory_mb=_peak_memory_mb(device),
        )
        bar.set_postfix(
            loss=f"{loss:.3f}", err=f"{err:.1f}%", lr=f"{optimizer.param_groups[0]['lr']:g}"
        )
        if schedule.observe_train_error(err, state.iteration):
            logger.log(
                event="warmup_end",
                iteration=state.iteration,
                train_error=err,
                lr=schedule.lr(state.iteration),
            )
            bar.write(
                f"iteration {state.iteration}: training error {err:.1f}% < {o.warmup_until_error}%, lr -> {schedule.lr(state.iteration):g}"
            )
        window.update(
            loss=torch.zeros((), device=device), errors=torch.zeros((), device=device), n=0
        )

    def evaluate_now() -> dict[str, float]:
        result = evaluate(model, eval_loader)
        logger.log(
            iteration=state.iteration,
            test_error=result["error"],
            test_top5_error=result["top5_error"],
            test_loss=result["loss"],
        )
        return result

    def on_step(loss_sum: torch.Tensor, errors: torch.Tensor, batch: int) -> bool:
        window["loss"] += loss_sum
        window["errors"] += errors
        window["n"] += batch
        clock["images"] += batch
        bar.update(1)
        it = state.iteration
        if it % t.log_every == 0 or it == total:
            tick()
            log_window()
        if t.eval_every and it % t.eval_every == 0 and it < total:
            tick()
            evaluate_now()
            clock["t"] = time.perf_counter()
        if it % t.checkpoint_every == 0 and it < total:
            tick()
            save(f"ckpt_{it:07d}.pt")
            clock["t"] = time.perf_counter()
        return stop.requested

    with _StopRequest() as stop:
        while state.iteration < total and not stop.requested:
            train_one_epoch(
                model,
                optimizer,
                train_loader,
                schedule,
                state,
                until=total,
                precision=t.precision,
                on_step=on_step,
            )
    bar.close()
    tick()
    if state.iteration < total:
        path = save(f"ckpt_{state.iteration:07d}.pt")
        logger.log(event="interrupted", iteration=state.iteration)
        logger.close()
        return {"status": "interrupted", "iteration": state.iteration, "checkpoint": str(path)}

    result = evaluate_now()
    save("final.pt")  # also brings state.wall_time_s up to date
    save_safetensors(model, run_dir / "model.safetensors", cfg)
    summary = {
        "status": "finished",
        "name": cfg.name,
        "model": cfg.model.name,
        "model_options": cfg.model.options,
        "iterations": state.iteration,
        "batch_size": t.batch_size,
        "train_split": cfg.data.split,
        "eval_split": cfg.data.eval_split,
        "train_error": last["train_error"],
        "train_loss": last["train_loss"],
        "test_error": result["error"],
        "test_top5_error": result["top5_error"],
        "test_loss": result["loss"],
        "wall_time_s": round(state.wall_time_s, 2),
        "train_time_s": round(state.train_time_s, 2),
        "images_per_s": state.iteration * t.batch_size / state.train_time_s
        if state.train_time_s
        else None,
        "peak_memory_mb": round(_peak_memory_mb(device), 1),
        "device": describe_device(device),
        "precision": t.precision,
        "seed": t.seed,
        "code_version": code_version(),
        "torch_version": torch.__version__,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if schedule.warmup_ended_at is not None:
        summary["warmup_ended_at"] = schedule.warmup_ended_at
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    logger.close()
    return summary
