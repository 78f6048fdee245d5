"""Training: ``fit`` runs a config in a run directory, resumably, whatever the task.

    uv run reslab train cifar10/resnet20 --set train.iterations=400 --out runs/try

A run directory holds ``config.yaml`` (resolved), ``metrics.jsonl`` (one JSON line per logged
interval and evaluation), ``checkpoints/`` (the last k periodic ones and ``final.pt``),
``summary.json`` and ``model.safetensors``. Running the same command again resumes from the newest
checkpoint and ends with the same weights as an uninterrupted run; SIGINT/SIGTERM save a checkpoint
and stop cleanly. A run whose loss or weights stop being finite stops within one logging interval,
with its last good checkpoint kept and no final weights written (:mod:`reslab.engine.rundir` has
the rules for resuming, restarting and locking a run directory).

:func:`fit` owns all of that for every kind of run; a :class:`Task` supplies what differs: the
model, data, optimiser and schedule (:meth:`Task.prepare`), the step, the evaluation, what a
logging window reports, the weights file and the summary's own fields. Classification is
:class:`reslab.engine.classify.Classification` (the default), detection
:class:`reslab.detection.task.Detection`. The loop itself is :mod:`reslab.engine.loop`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from reslab.engine import distributed
from reslab.engine.blocks import Blocks, peak_memory_mb
from reslab.engine.checkpoint import (
    atomic_write,
    remove_temporaries,
    set_rng_state,
)
from reslab.engine.classify import Classification
from reslab.engine.logging import JsonlLogger, json_bytes
from reslab.engine.loop import Meter, Task, TrainState, train_loop
from reslab.engine.rundir import RunLock, finished_summary, resume_point, start_over
from reslab.engine.runtime import (
    CoreShare,
    code_version,
    cudnn_autotune,
    describe_device,
    resolve_device,
    resolve_precision,
)
from reslab.errors import ConfigError, MissingFileError, require_extra


def fit(
    cfg: Any,
    run_dir: str | Path,
    *,
    task: Task | None = None,
    restart: bool = False,
    require_checkpoint: bool = False,
    progress: bool = True,
    stack: Any = None,
) -> dict[str, Any]:
    """Train ``cfg`` in ``run_dir`` as ``task`` (default: classification) and return the summary.

    The newest checkpoint is resumed; a run directory of another config is refused, naming the
    keys that differ, unless ``restart`` deletes its outputs first; a finished run of the same
    config returns its summary. Under torchrun with several processes a classification run is
    data-parallel (:mod:`reslab.engine.distributed`); with ``stack`` (a seat of a
    :class:`~reslab.engine.stacked.StackGroup`) its steps run stacked with the group's other runs.
    """
    task = task or Classification(cfg, stack)
    run_dir = Path(run_dir)
    device = resolve_device(cfg.train.device)
    info = distributed.DistInfo()
    if task.distributed:
        info, device = distributed.setup(device)
    try:
        if cfg.train.batch_size % info.world_size:
            raise ConfigError(
                f"train.batch_size={cfg.train.batch_size} (the global batch) does not split "
                f"evenly over {info.world_size} processes; make it a multiple of {info.world_size}"
            )
        with RunLock(run_dir, enabled=info.is_main), cudnn_autotune(device.type == "cuda"):
            if restart and info.is_main:
                start_over(run_dir)
            distributed.barrier(info)  # the other processes read the directory after rank 0
            summary = finished_summary(cfg, run_dir)
            if summary is not None:
                return summary
            resumed = resume_point(cfg, run_dir)
            if resumed is None and require_checkpoint:
                raise MissingFileError(f"{run_dir / 'checkpoints'} holds no checkpoint to resume")
            return _train(task, run_dir, info, device, resumed, progress)
    finally:
        distributed.cleanup()


def _train(
    task: Task,
    run_dir: Path,
    info: distributed.DistInfo,
    device: torch.device,
    resumed: tuple[dict[str, Any], Path] | None,
    progress: bool,
) -> dict[str, Any]:
    cfg, t, version = task.cfg, task.cfg.train, code_version()  # this session's code
    cores = CoreShare(getattr(t, "threads", "auto"), device)
    if info.is_main:
        for folder in (run_dir, run_dir / "checkpoints"):
            remove_temporaries(folder)  # left by a process killed while writing (we hold the lock)
    parts = task.prepare(run_dir, info, device, fresh=resumed is None)
    if info.is_main:  # written once the run can start: a refused one leaves nothing behind
        config = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
        atomic_write(run_dir / "config.yaml", config.encode())
    meter = Meter(torch.zeros(3, device=device, dtype=torch.float64), parts.batch, cores=cores)
    state = TrainState()
    precision = resolve_precision(getattr(t, "precision", "fp32"), device)
    if resumed is not None:
        ckpt, _ = resumed
        if "precision" in ckpt:  # a run keeps the precision it started with, on any machine
            precision = (ckpt["precision"], ckpt["precision_choice"])
        parts.model.load_state_dict(ckpt["model"])
        parts.optimizer.load_state_dict(ckpt["optimizer"])
        parts.schedule.load_state_dict(ckpt.get("schedule", {}))
        state = TrainState(**ckpt["state"])
        if info.is_main and "window" in ckpt:  # the saved window holds the sum over processes
            meter.window.copy_(ckpt["window"])
        set_rng_state(ckpt["rng"])
    step, step_kind = task.make_step(parts, meter.window, info, device, precision[0])
    step_kind.update(
        precision=precision[0], precision_choice=precision[1], batches_per_epoch=len(step)
    )
    tensorboard = _tensorboard(getattr(t, "tensorboard", False))
    logger = JsonlLogger(
        run_dir / "metrics.jsonl",
        enabled=info.is_main,
        tensorboard_dir=run_dir / "tensorboard" if tensorboard else None,
    )
    logger.truncate_after(state.iteration if resumed else -1)
    if resumed:
        logger.log(event="resume", iteration=state.iteration, code_version=version)
    for event in parts.events:
        logger.log(**event)
    if parts.note:
        logger.log(event="data", iteration=state.iteration, how=parts.note)
    if change := cores.adjust():  # the load of the stretch since the session began
        logger.log(event="threads", iteration=state.iteration, **change)
    run = Blocks(task, run_dir, info, parts, state, meter, logger, version, precision)
    bar = tqdm(
        total=t.iterations,
        initial=state.iteration,
        unit="it",
        desc=cfg.name or "run",
        disable=not (progress and info.is_main),
        dynamic_ncols=True,
        mininterval=1.0,
    )
    try:
        parts.model.train()
        interrupted = train_loop(run, step, parts.schedule.lr, run.evaluate, bar)
        if interrupted is not None:
            return interrupted
        result = run.evaluate(final=True)
        meter.stamp(state)
        run.save("final.pt")
        if not info.is_main:
            return {"status": "finished", "rank": info.rank}
        task.save_weights(parts.model, run_dir / "model.safetensors", version)
        summary = {
            **_summary(cfg, state, meter, info, device, step_kind, parts.schedule, version),
            **task.summary(result or {}),
        }
        if getattr(task, "reports_error", True):  # the last window's training error
            summary["train_error"] = meter.last.get("train_error")
        atomic_write(run_dir / "summary.json", json_bytes(summary))
        return summary
    finally:
        bar.close()
        logger.close()
        cores.restore()


def _tensorboard(setting: bool | str) -> bool:
    """Whether a run writes TensorBoard files: ``true`` needs the extra, ``auto`` uses it if there."""
    if setting == "auto":
        import importlib.util

        return importlib.util.find_spec("tensorboard") is not None
    if setting:
        require_extra("tensorboard", "tensorboard", "train.tensorboard=true")
    return bool(setting)


def _summary(cfg, state, meter, info, device, step_kind, schedule, version) -> dict[str, Any]:
    """What every run's summary says: where it ended, how long and how fast it trained, where and
    with which code (the task adds its results)."""
    t = cfg.train
    summary = {
        "status": "finished",
        "name": cfg.name,
        "iterations": state.iteration,
        "batch_size": t.batch_size,
        "world_size": info.world_size,
        "train_loss": meter.last.get("train_loss"),
        "wall_time_s": round(state.wall_time_s, 2),
        "train_time_s": round(state.train_time_s, 2),
        "images_per_s": (state.iteration - state.untimed_iterations)
        * t.batch_size
        / state.train_time_s
        if state.train_time_s
        else None,
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        **meter.steady(info.world_size),
        "device": describe_device(device)
        + (f" x {info.world_size} processes" if info.enabled else ""),
        **step_kind,
        "threads": getattr(t, "threads", "auto"),
        "thread_changes": meter.cores.changes if meter.cores else 0,
        "seed": t.seed,
        "code_version": version,
        "torch_version": torch.__version__,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if getattr(schedule, "warmup_ended_at", None) is not None:
        summary["warmup_ended_at"] = schedule.warmup_ended_at
    return summary
