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
from reslab.data.cifar import CLASSES as CIFAR10_CLASSES
from reslab.data.cifar import load_cifar10
from reslab.data.imagefolder import (
    CenterCrop,
    ImageFolder,
    ImageFolderLoader,
    ScaleAugment,
    TenCrop,
    imagenet_normalize,
)
from reslab.data.loaders import TensorLoader
from reslab.data.paths import data_root
from reslab.data.transforms import Normalize
from reslab.engine import distributed
from reslab.engine.checkpoint import (
    atomic_save,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    set_rng_state,
)
from reslab.engine.graphed import GraphedStep
from reslab.engine.logging import JsonlLogger
from reslab.engine.multiview import view_probs
from reslab.engine.optim import PaperSGD, StepSchedule, build_schedule, set_lr
from reslab.engine.runtime import (
    autocast,
    code_version,
    compile_mode,
    configure_cpu,
    configure_cuda,
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


@dataclass
class DataBundle:
    """Everything a run reads: loaders, the input normalisation and the class names."""

    train: Any  # .batches(epoch, start), len() = batches per epoch
    eval: Any  # periodic evaluation (CIFAR: the eval split; folders: centre crops)
    final: Any  # the final test (folders: 10-crop by default)
    normalize: Normalize
    classes: list[str]


def build_cifar(cfg: Config, device: torch.device, shard: tuple[int, int] = (0, 1)) -> DataBundle:
    """CIFAR-10 loaders, datasets resident on ``device``; ``shard=(rank, world_size)`` gives this
    process's slice of every global training batch."""
    train_x, train_y = load_cifar10(cfg.data.data_dir, cfg.data.split)
    eval_x, eval_y = load_cifar10(cfg.data.data_dir, cfg.data.eval_split)
    normalize = fit_normalizer(cfg, train_x).to(device)
    layout = torch.channels_last if cfg.train.channels_last else torch.contiguous_format

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return normalize(x).contiguous(memory_format=layout)

    common = {"normalize": prepare, "seed": cfg.train.seed, "device": device}
    train = TensorLoader(
        train_x, train_y, cfg.train.batch_size, train=True, pad=cfg.data.pad, shard=shard, **common
    )
    test = TensorLoader(eval_x, eval_y, cfg.train.eval_batch_size, train=False, **common)
    return DataBundle(train, test, test, normalize, list(CIFAR10_CLASSES))


def build_imagefolder(
    cfg: Config, device: torch.device, shard: tuple[int, int] = (0, 1)
) -> DataBundle:
    """Image-folder loaders: scale augmentation + lighting for training, centre crops for periodic
    evaluation and ``data.test_views`` (10-crop by default) for the final test."""
    d = cfg.data
    root = data_root(d.data_dir)
    train_set = ImageFolder(root / d.train_dir, ScaleAugment(d.scale[0], d.scale[1], d.crop))
    normalize = imagenet_normalize(d.normalization, train_set).to(device)

    def eval_loader(transform, batch: int) -> ImageFolderLoader:
        dataset = ImageFolder(root / d.eval_dir, transform).strided(d.eval_limit)
        if dataset.classes != train_set.classes:
            raise ValueError(
                f"{root / d.eval_dir} and {root / d.train_dir} have different class folders"
            )
        return ImageFolderLoader(
            dataset, batch, normalize, train=False, workers=d.workers, device=device
        )

    train = ImageFolderLoader(
        train_set,
        cfg.train.batch_size,
        normalize,
        train=True,
        lighting=d.lighting,
        workers=d.workers,
        seed=cfg.train.seed,
        device=device,
        shard=shard,
    )
    center = eval_loader(CenterCrop(d.scale[0], d.crop), cfg.train.eval_batch_size)
    final = (
        center
        if d.test_views == "center"
        else eval_loader(TenCrop(d.scale[0], d.crop), max(1, cfg.train.eval_batch_size // 10))
    )
    return DataBundle(train, center, final, normalize, train_set.classes)


def build_data(cfg: Config, device: torch.device, shard: tuple[int, int] = (0, 1)) -> DataBundle:
    return (build_imagefolder if cfg.data.dataset == "imagefolder" else build_cifar)(
        cfg, device, shard
    )


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    precision: str = "bf16",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step; returns the summed loss and the number of top-1 errors (device tensors)."""
    if images.is_cuda:  # a new step for CUDA graphs (torch.compile "reduce-overhead")
        torch.compiler.cudagraph_mark_step_begin()
    with autocast(images.device, precision):
        logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
    errors = (logits.detach().argmax(1) != labels).sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach() * len(labels), errors


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: TensorLoader | Iterator, precision: str = "fp32"
) -> dict[str, float]:
    """Top-1 / top-5 error (percent) and mean loss of ``model`` in eval mode, without gradients.

    Batches of N x K x C x H x W views (10-crop) are scored by their softmax averaged over the views.
    """
    was_training = model.training
    model.eval()
    loss = top1 = top5 = n = 0
    try:
        for images, labels in loader:
            with autocast(images.device, precision):
                if images.dim() == 5:  # N x K views: softmax averaged over the views
                    probs = view_probs(model, images)
                    logits = probs.clamp_min(1e-12).log()
                else:
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


def train_one_epoch_graphed(
    step: GraphedStep,
    schedule: StepSchedule,
    state: TrainState,
    *,
    until: int,
    on_step: Callable[[torch.Tensor | None, torch.Tensor | None, int], bool] | None = None,
) -> bool:
    """:func:`train_one_epoch` with the whole step replayed from a CUDA graph (:mod:`graphed`);
    the step adds its loss and errors to the window itself, so ``on_step`` gets None for them."""
    batches, size = len(step.loader), step.loader.batch_size
    step.start_epoch(state.epoch, state.position)
    while state.position < batches:
        step.set_lr(schedule.lr(state.iteration))
        step.step()
        state.iteration += 1
        state.position += 1
        stop = on_step(None, None, size) if on_step is not None else False
        if stop or state.iteration >= until:
            if state.position < batches:
                return False
            break
    state.epoch, state.position = state.epoch + 1, 0
    return True


def use_cuda_graph(cfg: Config, info: distributed.DistInfo, device: torch.device) -> bool:
    """Whether a run trains through :class:`GraphedStep` (``train.cuda_graph``; "auto": on CUDA, in
    one process, for CIFAR, unless ``train.compile`` is set explicitly). ``true`` on a CPU runs the
    same step eagerly (what the CPU tests use)."""
    t = cfg.train
    possible = not info.enabled and cfg.data.dataset == "cifar10"
    if t.cuda_graph == "auto":
        return possible and device.type == "cuda" and t.compile == "auto"
    if t.cuda_graph and not possible:
        raise ValueError(
            "train.cuda_graph=true needs one process and CIFAR data "
            f"({info.world_size} processes, dataset {cfg.data.dataset}); set train.cuda_graph=auto"
        )
    if t.cuda_graph and t.compile is True and t.compile_mode == "reduce-overhead":
        raise ValueError(
            "train.cuda_graph=true captures the whole step already; compile inside it with "
            "train.compile_mode=default or max-autotune, not reduce-overhead"
        )
    return bool(t.cuda_graph)


def graph_compile_mode(cfg: Config, device: torch.device) -> str | None:
    """The ``torch.compile`` mode of the model inside a whole-step graph: only when
    ``train.compile=true`` ("auto" there means "default": fused kernels, no CUDA graphs of its own)."""
    if cfg.train.compile is not True:
        return None
    mode = _compile_mode(cfg, device)
    return "default" if mode == "reduce-overhead" else mode


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
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


def _steady(clock: dict[str, float], world_size: int) -> dict[str, float]:
    """This session's throughput after its first logging window (compilation, cuDNN autotuning and
    warm-up excluded), and how long that first window took."""
    if "first_s" not in clock or clock["train_s"] <= clock["first_s"]:
        return {}
    images = world_size * clock["images"] - clock["first_images"]
    return {
        "session_first_window_s": round(clock["first_s"], 2),
        "session_steady_images_per_s": round(images / (clock["train_s"] - clock["first_s"]), 1),
    }


def save_safetensors(
    model: nn.Module, path: Path, cfg: Config, data: DataBundle, version: str | None = None
) -> None:
    """Final weights as a plain state dict; the metadata says how to rebuild and feed the model
    (model name and options, input normalisation statistics, class names)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "model": cfg.model.name,
        "model_options": json.dumps(cfg.model.options),
        "dataset": cfg.data.dataset,
        "normalization": cfg.data.normalization,
        "train_split": cfg.data.split,
        "eval_dir": cfg.data.eval_dir,
        "input_size": json.dumps(list(getattr(model, "default_input_size", ()))),
        "crop": str(cfg.data.crop),
        "resize": str(cfg.data.scale[0]),
        "normalize_mean": json.dumps(data.normalize.mean.cpu().flatten().tolist()),
        "normalize_std": json.dumps(data.normalize.std.cpu().flatten().tolist()),
        "normalize_shape": json.dumps(list(data.normalize.mean.shape)),
        "classes": json.dumps(data.classes),
        "code_version": version or code_version(),
    }
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)


def fit(
    cfg: Config, run_dir: str | Path, *, resume: bool = True, progress: bool = True
) -> dict[str, Any]:
    """Train ``cfg`` in ``run_dir`` (resuming from its newest checkpoint) and return the summary.

    Under torchrun with several processes the run is data-parallel (:mod:`reslab.engine.distributed`).
    """
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if resume and summary_path.is_file() and (run_dir / "checkpoints" / "final.pt").is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("status") == "finished":
            return summary
    info, device = distributed.setup(resolve_device(cfg.train.device))
    try:
        return _fit(cfg, run_dir, info, device, resume=resume, progress=progress)
    finally:
        distributed.cleanup()


def _compile_mode(cfg: Config, device: torch.device) -> str | None:
    return compile_mode(cfg.train.compile, cfg.train.compile_mode, device)


def _wrap_model(cfg: Config, core: nn.Module, info: distributed.DistInfo, device: torch.device):
    """(the module to save and evaluate, the module to train: DDP-wrapped and/or compiled)."""
    model = core
    if info.enabled:
        if cfg.train.sync_bn:
            if device.type != "cuda":
                raise ValueError(
                    "train.sync_bn=true needs CUDA devices (SyncBatchNorm does not run on CPU)"
                )
            core = model = nn.SyncBatchNorm.convert_sync_batchnorm(core)
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(core, device_ids=ids)
    mode = None if use_cuda_graph(cfg, info, device) else _compile_mode(cfg, device)
    if mode is not None:
        model = torch.compile(model, mode=mode, dynamic=False)  # training shapes are fixed
    return core, model


def _fit(
    cfg: Config,
    run_dir: Path,
    info: distributed.DistInfo,
    device: torch.device,
    *,
    resume: bool,
    progress: bool,
) -> dict[str, Any]:
    ckpt_dir, t, o = run_dir / "checkpoints", cfg.train, cfg.optim
    version = code_version()  # the code this session runs (the checkout may change meanwhile)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if device.type == "cpu":
        configure_cpu()
    elif device.type == "cuda":
        configure_cuda()
    seed_everything(t.seed)
    core, model = _wrap_model(cfg, build_model(cfg, device), info, device)
    optimizer = PaperSGD(core.parameters(), o.lr, o.momentum, o.weight_decay)
    schedule = build_schedule(o)
    data = build_data(cfg, device, shard=(info.rank, info.world_size))
    train_loader = data.train
    state = TrainState()
    # loss sum, error count and image count of the current logging window, kept on the device
    window = torch.zeros(3, device=device, dtype=torch.float64)

    checkpoints = list_checkpoints(ckpt_dir) if resume else []
    if checkpoints:
        ckpt = load_checkpoint(checkpoints[-1])
        core.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        state = TrainState(**ckpt["state"])
        if info.is_main:  # the saved window already holds the sum over processes
            saved = ckpt["window"]
            if isinstance(saved, dict):  # checkpoints of the first engine version
                saved = torch.tensor(
                    [float(saved["loss"]), float(saved["errors"]), float(saved["n"])]
                )
            window.copy_(saved)
        set_rng_state(ckpt["rng"])
    tb_dir = run_dir / "tensorboard" if t.tensorboard else None
    logger = JsonlLogger(run_dir / "metrics.jsonl", enabled=info.is_main, tensorboard_dir=tb_dir)
    logger.truncate_after(state.iteration if checkpoints else -1)
    if checkpoints:
        logger.log(event="resume", iteration=state.iteration, code_version=version)

    total = t.iterations
    session_start, wall_base = time.perf_counter(), state.wall_time_s
    clock = {"t": time.perf_counter(), "train_s": 0.0, "images": 0}  # this session's training steps
    last = {"train_error": float("nan"), "train_loss": float("nan"), "stop": False}
    bar = tqdm(
        total=total,
        initial=state.iteration,
        unit="it",
        desc=cfg.name or cfg.model.name,
        disable=not (progress and info.is_main),
        dynamic_ncols=True,
        mininterval=1.0,
    )

    def save(name: str) -> Path | None:
        """Checkpoint; every process calls it (the window is summed over them), rank 0 writes."""
        state.wall_time_s = wall_base + time.perf_counter() - session_start
        distributed.all_reduce_sum(window, info)
        if not info.is_main:
            window.zero_()
            return None
        payload = {
            "model": core.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "state": asdict(state),
            "window": window.cpu(),
            "rng": rng_state(),
            "config": cfg.to_dict(),
            "code_version": version,
            "world_size": info.world_size,
        }
        path = atomic_save(payload, ckpt_dir / name)
        prune_checkpoints(ckpt_dir, t.keep_checkpoints)
        return path

    def tick() -> None:
        """Account the training time since the last tick (evaluation and saving excluded)."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        clock["train_s"] += now - clock["t"]
        state.train_time_s += now - clock["t"]
        clock["t"] = now

    def log_window() -> None:
        loss_sum, errors, n = distributed.all_reduce_sum(window, info).tolist()
        window.zero_()
        loss, err = loss_sum / n, 100 * errors / n
        last.update(train_loss=loss, train_error=err)
        lr = optimizer.param_groups[0]["lr"]
        images = info.world_size * clock["images"]
        ips = images / clock["train_s"] if clock["train_s"] > 0 else float("nan")
        if "first_s" not in clock:  # the first window holds compilation and autotuning
            clock.update(first_s=clock["train_s"], first_images=images)
        logger.log(
            iteration=state.iteration,
            epoch=state.epoch,
            lr=lr,
            train_loss=loss,
            train_error=err,
            images_per_s=ips,
            peak_memory_mb=_peak_memory_mb(device),
        )
        bar.set_postfix(loss=f"{loss:.3f}", err=f"{err:.1f}%", lr=f"{lr:g}")
        if schedule.observe_train_error(err, state.iteration):  # same numbers in every process
            new_lr = schedule.lr(state.iteration)
            logger.log(event="warmup_end", iteration=state.iteration, train_error=err, lr=new_lr)
            if info.is_main:
                bar.write(
                    f"iteration {state.iteration}: training error {err:.1f}% < "
                    f"{o.warmup_until_error}%, lr -> {new_lr:g}"
                )

    def evaluate_now(loader: Any = data.eval, views: str = "") -> dict[str, float] | None:
        """Rank 0 evaluates; the error reaches every process (the plateau rule needs it)."""
        result, shared = None, torch.zeros(1, device=device, dtype=torch.float64)
        if info.is_main:
            result = evaluate(core, loader)
            shared += result["error"]
            extra = {"test_views": views} if views else {}
            logger.log(
                iteration=state.iteration,
                test_error=result["error"],
                test_top5_error=result["top5_error"],
                test_loss=result["loss"],
                **extra,
            )
        error = distributed.all_reduce_sum(shared, info).item()
        if schedule.observe_eval_error(error, state.iteration):
            logger.log(event="lr_drop", iteration=state.iteration, lr=schedule.lr(state.iteration))
        return result

    def on_step(loss_sum: torch.Tensor | None, errors: torch.Tensor | None, batch: int) -> bool:
        if loss_sum is not None:  # (a graphed step adds to the window itself)
            window[0] += loss_sum
            window[1] += errors
            window[2] += batch
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
        last["stop"] = distributed.any_process(stop.requested, info, device)
        return last["stop"]

    graphed = None
    if use_cuda_graph(cfg, info, device):
        graphed = GraphedStep(
            core,
            optimizer,
            train_loader,
            window,
            t.precision,
            compile_mode=graph_compile_mode(cfg, device),
        )
    with StopRequest() as stop:
        while state.iteration < total and not last["stop"]:
            if graphed is not None:
                core.train()
                train_one_epoch_graphed(graphed, schedule, state, until=total, on_step=on_step)
                continue
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

    views = cfg.data.test_views if cfg.data.dataset == "imagefolder" else ""
    result = evaluate_now(data.final, views)
    save("final.pt")  # also brings state.wall_time_s up to date
    if not info.is_main:
        return {"status": "finished", "rank": info.rank}
    save_safetensors(core, run_dir / "model.safetensors", cfg, data, version)
    processes = f" x {info.world_size} processes" if info.enabled else ""
    summary = {
        "status": "finished",
        "name": cfg.name,
        "model": cfg.model.name,
        "model_options": cfg.model.options,
        "iterations": state.iteration,
        "batch_size": t.batch_size,
        "world_size": info.world_size,
        "dataset": cfg.data.dataset,
        "train_split": cfg.data.split if cfg.data.dataset == "cifar10" else cfg.data.train_dir,
        "eval_split": cfg.data.eval_split if cfg.data.dataset == "cifar10" else cfg.data.eval_dir,
        "test_views": views or "single",
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
        **_steady(clock, info.world_size),
        "device": describe_device(device) + processes,
        "precision": t.precision,
        "compile": (
            graph_compile_mode(cfg, device) if graphed is not None else _compile_mode(cfg, device)
        )
        or "off",
        "cuda_graph": "off" if graphed is None else "whole step" if graphed.capture else "eager",
        "channels_last": t.channels_last,
        "seed": t.seed,
        "code_version": version,
        "torch_version": torch.__version__,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if schedule.warmup_ended_at is not None:
        summary["warmup_ended_at"] = schedule.warmup_ended_at
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    logger.close()
    return summary
