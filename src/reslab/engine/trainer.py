"""Training: ``fit`` runs a config in a run directory, resumably; its loop reads top to bottom.

    uv run reslab train cifar10/resnet20 --set train.iterations=400 --out runs/try

A run directory holds ``config.yaml`` (resolved), ``metrics.jsonl`` (one JSON line per logged
interval and evaluation), ``checkpoints/`` (the last k periodic ones and ``final.pt``),
``summary.json`` and ``model.safetensors``. Running the same command again resumes from the newest
checkpoint and ends with the same weights as an uninterrupted run; SIGINT/SIGTERM save a checkpoint
and stop cleanly. A run whose loss or weights stop being finite stops within one logging interval,
with its last good checkpoint kept and no final weights written (:mod:`reslab.engine.rundir` has
the rules for resuming, restarting and locking a run directory).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import resource
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from reslab.config import Config
from reslab.data.builders import DataBundle, build_data
from reslab.engine import distributed
from reslab.engine.checkpoint import (
    atomic_save,
    atomic_write,
    own_storage,
    prune_checkpoints,
    remove_temporaries,
    rng_state,
    set_rng_state,
)
from reslab.engine.evaluate import evaluate
from reslab.engine.logging import JsonlLogger, json_bytes
from reslab.engine.optim import PaperSGD, build_schedule, set_lr
from reslab.engine.rundir import RunLock, finished_summary, resume_point, start_over
from reslab.engine.runtime import (
    CoreShare,
    code_version,
    compile_mode,
    cudnn_autotune,
    describe_device,
    resolve_device,
    resolve_precision,
)
from reslab.engine.step import train_step
from reslab.errors import ConfigError, DivergedError, MissingFileError, require_extra
from reslab.models import create_model
from reslab.models.factory import save_weights, source_state
from reslab.weights.checks import initialise_from


@dataclass
class TrainState:
    """Where a run stands: optimisation steps done, and the position in the data order."""

    iteration: int = 0
    epoch: int = 0
    position: int = 0  # batches of the current epoch already used
    train_time_s: float = 0.0  # seconds spent in training steps (all sessions)
    wall_time_s: float = 0.0  # seconds of the whole run, evaluation included (all sessions)
    untimed_iterations: int = 0  # steps of logging windows a pause fell into (not timed)

    def advance(self, batches_per_epoch: int) -> bool:
        """Count one step; True when it used up the epoch (the state then points at the next)."""
        self.iteration, self.position = self.iteration + 1, self.position + 1
        if self.position < batches_per_epoch:
            return False
        self.epoch, self.position = self.epoch + 1, 0
        return True


@dataclass
class Meter:
    """The current logging window and this session's clock.

    ``window`` holds ``[loss sum, errors, images]`` on the training device (the steps add to it
    without a host synchronisation); :meth:`read` sums it over processes and empties it. The clock
    counts only training steps: evaluation and checkpointing happen between :meth:`tick` and
    :meth:`resume`. A stretch between two ticks into which the process was paused (SIGSTOP, then
    SIGCONT: a queued run paused for a benchmark) is left out of the clock and of the images the
    throughput counts.
    """

    window: torch.Tensor
    batch: int  # images per step in this process
    train_s: float = 0.0  # this session's seconds in training steps
    images: int = 0  # images this process trained on in this session
    untimed: int = 0  # of them, images of stretches a pause fell into
    first_window: tuple[float, int] | None = None  # (seconds, images): compilation, autotuning
    last: dict[str, float] = field(default_factory=dict)  # the last window's loss and error
    _since: float = field(default_factory=time.perf_counter)
    _images_since: int = 0
    _continued: int = field(default_factory=lambda: _CONTINUED[0])
    _session: tuple[float, float] = (0.0, 0.0)  # (start of this session, wall time before it)
    cores: CoreShare | None = None  # this process's CPU threads, re-sized at logging windows

    def begin(self, state: TrainState) -> None:
        """This session's training starts now, from ``state``."""
        self._session = (time.perf_counter(), state.wall_time_s)
        self.resume()

    def stamp(self, state: TrainState) -> None:
        """Bring the run's wall time (all sessions, evaluation included) up to now."""
        start, before = self._session
        state.wall_time_s = before + time.perf_counter() - start

    def tick(self, state: TrainState) -> None:
        """Add the training time since the last tick (or resume) to the clocks."""
        if self.window.is_cuda:  # this run's stream (packed runs share the device)
            torch.cuda.current_stream(self.window.device).synchronize()
        now = time.perf_counter()
        if self._continued != _CONTINUED[0]:  # paused meanwhile: these steps are not timed
            self._continued = _CONTINUED[0]
            self.untimed += self.images - self._images_since
            state.untimed_iterations += (self.images - self._images_since) // self.batch
        else:
            self.train_s += now - self._since
            state.train_time_s += now - self._since
        self._since, self._images_since = now, self.images
        self.stamp(state)

    def timed_images(self, world_size: int) -> int:
        """Images of this session whose time the clock counts (all processes)."""
        return world_size * (self.images - self.untimed)

    def resume(self) -> None:
        """Training starts again now (after an evaluation or a checkpoint)."""
        self._since, self._images_since = time.perf_counter(), self.images

    def read(self, info: distributed.DistInfo) -> tuple[float, float]:
        """(mean loss, error in percent) of the window over all processes; the window empties."""
        loss_sum, errors, n = distributed.all_reduce_sum(self.window, info).tolist()
        self.window.zero_()
        if self.first_window is None:
            self.first_window = (self.train_s, self.timed_images(info.world_size))
        self.last = {"train_loss": loss_sum / n, "train_error": 100 * errors / n}
        return self.last["train_loss"], self.last["train_error"]

    def steady(self, world_size: int) -> dict[str, float]:
        """This session's throughput after its first window, and how long that window took."""
        if self.first_window is None or self.train_s <= self.first_window[0]:
            return {}
        first_s, first_images = self.first_window
        images = self.timed_images(world_size) - first_images
        return {
            "session_first_window_s": round(first_s, 2),
            "session_steady_images_per_s": round(images / (self.train_s - first_s), 1),
        }


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


class EagerStep:
    """Training steps run kernel by kernel from Python: any device, DDP, ``torch.compile``.

    Like :class:`~reslab.engine.graphed.GraphedStep`: ``start_epoch(epoch, start)``, then one call
    per step with its learning rate; the step adds its loss and errors to ``window``.
    """

    def __init__(self, model, optimizer: PaperSGD, loader, window: torch.Tensor, precision: str):
        self.model, self.optimizer, self.loader = model, optimizer, loader
        self.window, self.precision = window, precision
        self._batches = iter(())

    def __len__(self) -> int:
        return len(self.loader)

    def start_epoch(self, epoch: int, start: int = 0) -> None:
        self._batches = self.loader.batches(epoch, start)

    def __call__(self, lr: float) -> None:
        set_lr(self.optimizer, lr)  # checkpoints and logs read it there
        images, labels = next(self._batches)
        if images.is_cuda:  # a new step for CUDA graphs (torch.compile "reduce-overhead")
            torch.compiler.cudagraph_mark_step_begin()
        self.optimizer.zero_grad(set_to_none=True)
        train_step(self.model, self.optimizer, images, labels, self.precision, lr, self.window)


def _compile_mode(cfg: Config, device: torch.device) -> str | None:
    return compile_mode(cfg.train.compile, cfg.train.compile_mode, device)


def use_cuda_graph(cfg: Config, info: distributed.DistInfo, device: torch.device) -> bool:
    """Whether a run trains through :class:`GraphedStep` (``train.cuda_graph``; "auto": on CUDA, in
    one process, for CIFAR, unless ``train.compile`` is set explicitly). ``true`` on a CPU runs the
    same step eagerly (what the CPU tests use)."""
    t = cfg.train
    possible = not info.enabled and cfg.data.dataset == "cifar10"
    if t.cuda_graph == "auto":
        return possible and device.type == "cuda" and t.compile == "auto"
    if t.cuda_graph and not possible:
        raise ConfigError(
            "train.cuda_graph=true needs one process and CIFAR data "
            f"({info.world_size} processes, dataset {cfg.data.dataset}); set train.cuda_graph=auto"
        )
    if t.cuda_graph and t.compile is True and t.compile_mode == "reduce-overhead":
        raise ConfigError(
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


def make_step(cfg, core, optimizer, loader, window, info, device, stack=None, precision=None):
    """The run's training step in ``precision`` (default: ``train.precision`` resolved), chosen
    once: stacked with other runs where ``stack`` (a :class:`~reslab.engine.stacked.Seat`) is
    given, else the whole step as one CUDA graph where
    that applies, else eager (wrapped for DDP under torchrun, compiled where ``train.compile``
    says so). Returns (step, description for the summary)."""
    precision = precision or resolve_precision(cfg.train.precision, device)[0]
    if stack is not None:
        from reslab.engine.stacked import StackedStep

        if info.enabled or cfg.data.dataset != "cifar10" or cfg.train.compile is True:
            raise ConfigError(
                "stacked runs (--pack stacked) train CIFAR in one process, uncompiled: set "
                "train.compile to auto, or pack these runs as streams or processes"
            )
        step = StackedStep(stack, core, optimizer, loader, window, precision)
        graph = "whole stacked step" if stack.group.replay.capture else "off"
        return step, {"compile": "off", "cuda_graph": graph, "packing": "stacked"}
    if use_cuda_graph(cfg, info, device):
        from reslab.engine.graphed import GraphedStep

        mode = graph_compile_mode(cfg, device)
        step = GraphedStep(core, optimizer, loader, window, precision, compile_mode=mode)
        return step, {
            "compile": mode or "off",
            "cuda_graph": "whole step" if step.capture else "eager",
        }
    model = core
    if info.enabled:
        if cfg.train.sync_bn:
            if device.type != "cuda":
                raise ConfigError("train.sync_bn=true needs CUDA devices (no SyncBatchNorm on CPU)")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(core)
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    mode = _compile_mode(cfg, device)
    if mode is not None:
        model = torch.compile(model, mode=mode, dynamic=False)  # training shapes are fixed
    step = EagerStep(model, optimizer, loader, window, precision)
    return step, {"compile": mode or "off", "cuda_graph": "off"}


_INIT_LOCK = threading.Lock()
_STOP = threading.Event()  # SIGINT/SIGTERM arrived: every training loop of the process stops
_CONTINUED = [0]  # SIGCONTs received: the process was paused (its clocks leave that stretch out)


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step, and counts SIGCONTs
    (a pause that the run's clocks leave out, see :class:`Meter`).

    The handlers are installed by the outermost ``StopRequest`` of the main thread, which clears
    the flag on entry; others (nested, or in the threads of packed runs) read the same flag."""

    _depth = 0

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return _STOP.is_set()

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            if StopRequest._depth == 0:
                _STOP.clear()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self._previous[sig] = signal.signal(sig, self._handle)
                if hasattr(signal, "SIGCONT"):
                    self._previous[signal.SIGCONT] = signal.signal(signal.SIGCONT, self._continued)
            StopRequest._depth += 1
        return self

    @staticmethod
    def _handle(signum, frame) -> None:
        _STOP.set()

    @staticmethod
    def _continued(signum, frame) -> None:
        _CONTINUED[0] += 1

    def __exit__(self, *exc) -> None:
        if threading.current_thread() is threading.main_thread():
            StopRequest._depth -= 1
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def fit(
    cfg: Config,
    run_dir: str | Path,
    *,
    restart: bool = False,
    require_checkpoint: bool = False,
    progress: bool = True,
    stack: Any = None,
) -> dict[str, Any]:
    """Train ``cfg`` in ``run_dir`` and return the summary (see the module doc).

    The newest checkpoint is resumed; a run directory of another config is refused, naming the
    keys that differ, unless ``restart`` deletes its outputs first; a finished run of the same
    config returns its summary. Under torchrun with several processes the run is data-parallel
    (:mod:`reslab.engine.distributed`); with ``stack`` (a seat of a
    :class:`~reslab.engine.stacked.StackGroup`) its steps run stacked with the group's other runs.
    """
    run_dir = Path(run_dir)
    info, device = distributed.setup(resolve_device(cfg.train.device))
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
            return _train(cfg, run_dir, info, device, resumed, progress, stack)
    finally:
        distributed.cleanup()


def _train(
    cfg: Config,
    run_dir: Path,
    info: distributed.DistInfo,
    device: torch.device,
    resumed: tuple[dict[str, Any], Path] | None,
    progress: bool,
    stack: Any = None,
) -> dict[str, Any]:
    t, version = cfg.train, code_version()  # the code this session runs (the checkout may move)
    cores = CoreShare(t.threads, device)
    if info.is_main:
        for folder in (run_dir, run_dir / "checkpoints"):
            remove_temporaries(folder)  # left by a process killed while writing (we hold the lock)
    data = build_data(cfg, device, (info.rank, info.world_size), run_dir)
    with _INIT_LOCK:  # the global RNG: packed runs in threads initialise one at a time
        seed_everything(t.seed)
        core = build_model(cfg, device, len(data.classes))
    check_trainable(cfg, core, data, t.batch_size // info.world_size)
    if info.is_main:  # written once the run can start: a refused one leaves nothing behind
        atomic_write(
            run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode()
        )
    declared = "stride_in" in cfg.model.options  # a plain file's layout, declared by the config
    started_from = _initialise(core, t.init, info, declared) if t.init and not resumed else None
    core.freeze(t.freeze_stages, t.freeze_bn)
    optimizer = PaperSGD(
        core.parameters(), cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay
    )
    schedule = build_schedule(cfg.optim)
    per_process = t.batch_size // info.world_size
    meter = Meter(torch.zeros(3, device=device, dtype=torch.float64), per_process, cores=cores)
    state = TrainState()
    precision = resolve_precision(t.precision, device)
    if resumed is not None:
        ckpt, _ = resumed
        if "precision" in ckpt:  # a run keeps the precision it started with, on any machine
            precision = (ckpt["precision"], ckpt["precision_choice"])
        core.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        state = TrainState(**ckpt["state"])
        if info.is_main:  # the saved window already holds the sum over processes
            meter.window.copy_(ckpt["window"])
        set_rng_state(ckpt["rng"])
    step, step_kind = make_step(
        cfg, core, optimizer, data.train, meter.window, info, device, stack, precision[0]
    )
    step_kind.update(
        precision=precision[0], precision_choice=precision[1], batches_per_epoch=len(step)
    )
    tb_dir = run_dir / "tensorboard" if _tensorboard(t.tensorboard) else None
    logger = JsonlLogger(run_dir / "metrics.jsonl", enabled=info.is_main, tensorboard_dir=tb_dir)
    logger.truncate_after(state.iteration if resumed else -1)
    if resumed:
        logger.log(event="resume", iteration=state.iteration, code_version=version)
    if started_from is not None:
        logger.log(event="init", iteration=0, **started_from)
    logger.log(event="data", iteration=state.iteration, how=data.note)
    if change := cores.adjust():  # the load of the stretch since the session began
        logger.log(event="threads", iteration=state.iteration, **change)
    run = _Run(
        cfg, run_dir, info, core, optimizer, schedule, state, meter, logger, version, precision
    )
    bar = tqdm(
        total=t.iterations, initial=state.iteration, unit="it", desc=cfg.name or cfg.model.name,
        disable=not (progress and info.is_main), dynamic_ncols=True, mininterval=1.0,
    )  # fmt: skip
    try:
        core.train()
        interrupted = train_loop(run, step, schedule.lr, lambda: run.evaluate(data.eval), bar)
        if interrupted is not None:
            return interrupted
        views = cfg.data.test_views if cfg.data.dataset == "imagefolder" else ""
        result = run.evaluate(data.final, views)
        meter.stamp(state)
        run.save("final.pt")
        if not info.is_main:
            return {"status": "finished", "rank": info.rank}
        meta = _metadata(cfg, core, data, version)
        save_weights(core, run_dir / "model.safetensors", cfg.model.name, **meta)
        summary = _summary(cfg, state, meter, result, info, device, step_kind, schedule, version)
        if cfg.data.dataset == "imagefolder":
            summary["skipped_images"] = data.train.skipped  # data.skip_corrupt: left out, listed
        atomic_write(run_dir / "summary.json", json_bytes(summary))
        return summary
    finally:
        bar.close()
        logger.close()
        cores.restore()


def train_loop(run: Any, step: Any, lr: Callable[[int], float], evaluate: Callable[[], Any],
               bar: tqdm) -> dict[str, Any] | None:  # fmt: skip
    """The loop every run trains in (classification and detection alike), from ``run.state`` to
    ``run.cfg.train.iterations``.

    ``step(lr)`` trains on one batch (``step.start_epoch(epoch, start)`` sets the data order and
    ``len(step)`` is the batches per epoch). Every ``train.log_every`` steps ``run.log_window(bar)``
    logs the meter's window, every ``train.eval_every`` ``evaluate()`` runs and every
    ``train.checkpoint_every`` ``run.save(name)`` writes a checkpoint; the meter's clock counts
    the steps only. SIGINT/SIGTERM stop the run after the step with a checkpoint: the result is
    then the interrupted run's summary, else None (the run reached its iterations).
    """
    t, state, meter = run.cfg.train, run.state, run.meter
    step.start_epoch(state.epoch, state.position)
    meter.begin(state)
    with StopRequest() as stop:
        while state.iteration < t.iterations:
            step(lr(state.iteration))
            if state.advance(len(step)):
                step.start_epoch(state.epoch)
            meter.images += meter.batch
            bar.update(1)
            it, last = state.iteration, state.iteration == t.iterations

            logged = it % t.log_every == 0 or last
            if logged:  # also where divergence and the warm-up's end are noticed
                meter.tick(state)
                run.log_window(bar)
                if meter.cores is not None and (change := meter.cores.adjust()):
                    run.logger.log(event="threads", iteration=it, **change)
            if t.eval_every and it % t.eval_every == 0 and not last:
                meter.tick(state)
                evaluate()
                meter.resume()
            if it % t.checkpoint_every == 0 and not last:
                meter.tick(state)
                run.save(f"ckpt_{it:07d}.pt")
                meter.resume()
            # SIGINT/SIGTERM stop after this step; under DDP the processes agree on it at
            # logging steps (a collective every step would cost a host synchronisation)
            if (logged and run.anyone_stopping(stop)) if run.info.enabled else stop.requested:
                break
    meter.tick(state)
    if state.iteration == t.iterations:
        return None
    path = run.save(f"ckpt_{state.iteration:07d}.pt")
    run.logger.log(event="interrupted", iteration=state.iteration)
    return {"status": "interrupted", "iteration": state.iteration, "checkpoint": str(path)}


@dataclass
class _Run:
    """What the loop's logging, evaluation and checkpoint blocks share."""

    cfg: Config
    run_dir: Path
    info: distributed.DistInfo
    core: nn.Module
    optimizer: PaperSGD
    schedule: Any
    state: TrainState
    meter: Meter
    logger: JsonlLogger
    version: str
    precision: tuple[str, str] = ("fp32", "train.precision")  # (precision, how it was chosen)

    def log_window(self, bar: tqdm) -> None:
        """Log the window's loss and error; stop a run whose loss is no longer finite; end the
        warm-up when the training error falls below its threshold."""
        state, lr = self.state, self.optimizer.param_groups[0]["lr"]
        loss, err = self.meter.read(self.info)
        images = self.meter.timed_images(self.info.world_size)
        self.logger.log(
            iteration=state.iteration, epoch=state.epoch, lr=lr, train_loss=loss, train_error=err,
            images_per_s=images / self.meter.train_s if self.meter.train_s > 0 else float("nan"),
            peak_memory_mb=_peak_memory_mb(self.meter.window.device),
        )  # fmt: skip
        if not np.isfinite(loss):
            self._diverged(
                f"the training loss of the last {self.cfg.train.log_every} steps is {loss}"
            )
        bar.set_postfix(loss=f"{loss:.3f}", err=f"{err:.1f}%", lr=f"{lr:g}")
        if self.schedule.observe_train_error(err, state.iteration):  # the same in every process
            new_lr = self.schedule.lr(state.iteration)
            self.logger.log(
                event="warmup_end", iteration=state.iteration, train_error=err, lr=new_lr
            )
            if self.info.is_main:
                bar.write(
                    f"iteration {state.iteration}: training error {err:.1f}% < "
                    f"{self.cfg.optim.warmup_until_error}%, lr -> {new_lr:g}"
                )

    def evaluate(self, loader: Any, views: str = "") -> dict[str, float] | None:
        """Rank 0 evaluates; the error reaches every process (the plateau rule needs it)."""
        result, device = None, self.meter.window.device
        shared = torch.zeros(1, device=device, dtype=torch.float64)
        if self.info.is_main:
            result = evaluate(self.core, loader)
            shared += result["error"]
            self.logger.log(
                iteration=self.state.iteration, test_error=result["error"],
                test_top5_error=result["top5_error"], test_loss=result["loss"],
                **({"test_views": views} if views else {}),
            )  # fmt: skip
        error = distributed.all_reduce_sum(shared, self.info).item()
        if self.schedule.observe_eval_error(error, self.state.iteration):
            lr = self.schedule.lr(self.state.iteration)
            self.logger.log(event="lr_drop", iteration=self.state.iteration, lr=lr)
        return result

    def save(self, name: str) -> Path | None:
        """A complete checkpoint (every process calls it: the window is summed over them; rank 0
        writes). Non-finite weights or losses are never saved: the run stops instead."""
        distributed.all_reduce_sum(self.meter.window, self.info)
        if not bool(torch.isfinite(self.meter.window).all()):
            self._diverged(f"the training loss since iteration {self._last_log()} is not finite")
        bad = next((n for n, p in self.core.state_dict().items() if not p.isfinite().all()), None)
        if bad is not None:
            self._diverged(f"the weights are no longer finite ({bad})")
        if not self.info.is_main:
            self.meter.window.zero_()
            return None
        payload = {
            "model": own_storage(self.core.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "state": asdict(self.state),
            "window": self.meter.window.cpu(),
            "rng": rng_state(),
            "config": self.cfg.to_dict(),
            "code_version": self.version,
            "world_size": self.info.world_size,
            "precision": self.precision[0],
            "precision_choice": self.precision[1],
        }
        checkpoints = self.run_dir / "checkpoints"
        path = atomic_save(payload, checkpoints / name)
        prune_checkpoints(checkpoints, self.cfg.train.keep_checkpoints)
        return path

    def anyone_stopping(self, stop: StopRequest) -> bool:
        return distributed.any_process(stop.requested, self.info, self.meter.window.device)

    def _last_log(self) -> int:
        every = self.cfg.train.log_every
        return self.state.iteration // every * every

    def _diverged(self, what: str) -> None:
        it, lr = self.state.iteration, self.optimizer.param_groups[0]["lr"]
        self.logger.log(event="diverged", iteration=it, lr=lr)
        kept = sorted(p.name for p in (self.run_dir / "checkpoints").glob("ckpt_*.pt"))
        raise DivergedError(
            f"training diverged by iteration {it} (lr {lr:g}): {what}. Nothing of it was saved"
            + (f"; the last good checkpoint is {kept[-1]}" if kept else "")
            + ". Lower optim.lr (or check the data) and start over with --restart"
        )


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


def _tensorboard(setting: bool | str) -> bool:
    """Whether a run writes TensorBoard files: ``true`` needs the extra, ``auto`` uses it if there."""
    if setting == "auto":
        import importlib.util

        return importlib.util.find_spec("tensorboard") is not None
    if setting:
        require_extra("tensorboard", "tensorboard", "train.tensorboard=true")
    return bool(setting)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
            train_dir=cfg.data.train_dir, eval_dir=cfg.data.eval_dir,
            resize=str(cfg.data.scale[0]), crop=str(cfg.data.crop),
        )  # fmt: skip
    return meta


def _summary(cfg, state, meter, result, info, device, step_kind, schedule, version) -> dict:
    t, d = cfg.train, cfg.data
    cifar = d.dataset == "cifar10"
    summary = {
        "status": "finished",
        "name": cfg.name,
        "model": cfg.model.name,
        "model_options": cfg.model.options,
        "iterations": state.iteration,
        "batch_size": t.batch_size,
        "world_size": info.world_size,
        "dataset": d.dataset,
        "train_split": d.split if cifar else d.train_dir,
        "eval_split": d.eval_split if cifar else d.eval_dir,
        "test_views": "single" if cifar else d.test_views,
        "train_error": meter.last.get("train_error"),
        "train_loss": meter.last.get("train_loss"),
        "test_error": result["error"],
        "test_top5_error": result["top5_error"],
        "test_loss": result["loss"],
        "test_images": result["images"],
        "wall_time_s": round(state.wall_time_s, 2),
        "train_time_s": round(state.train_time_s, 2),
        "images_per_s": (state.iteration - state.untimed_iterations)
        * t.batch_size
        / state.train_time_s
        if state.train_time_s
        else None,
        "peak_memory_mb": round(_peak_memory_mb(device), 1),
        **meter.steady(info.world_size),
        "device": describe_device(device)
        + (f" x {info.world_size} processes" if info.enabled else ""),
        **step_kind,
        "channels_last": t.channels_last,
        "threads": t.threads,
        "thread_changes": meter.cores.changes if meter.cores else 0,
        "seed": t.seed,
        "code_version": version,
        "torch_version": torch.__version__,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if schedule.warmup_ended_at is not None:
        summary["warmup_ended_at"] = schedule.warmup_ended_at
    return summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """What ``reslab train`` prints of a run's summary: a sentence, then a JSON line."""
    if summary["status"] == "not started":  # a packed run that a stop came before
        return ["not started (stopped before its turn); run the same command again to train it"]
    if summary["status"] == "died":  # a packed run's process was killed (the OOM killer)
        return [summary["error"]]
    if summary["status"] != "finished":
        return [
            f"interrupted at iteration {summary['iteration']}; checkpoint {summary['checkpoint']}; "
            "run the same command again to resume"
        ]
    s = summary
    keys = ("test_error", "test_top5_error", "train_error", "iterations")
    return [
        f"{s['model']}: {s['iterations']} iterations, training error {s['train_error']:.2f}%, test "
        f"error {s['test_error']:.2f}% (accuracy {100 - s['test_error']:.2f}%), top-5 error "
        f"{s['test_top5_error']:.2f}%, {s['images_per_s']:.0f} images/s on {s['device']}, "
        f"{s['wall_time_s']:.0f} s",
        json.dumps({k: s[k] for k in keys}),
    ]


def demo_overrides(iterations: int) -> list[str]:
    """``reslab demo``: the paper's ResNet-20 recipe on a short schedule, the lr dropping at 50%
    and 75% of the iterations, with no evaluation before the end."""
    n = iterations
    return [
        f"train.iterations={n}",
        f"optim.milestones=[{max(1, n // 2)},{max(1, 3 * n // 4)}]",
        "train.eval_every=0",
        f"train.checkpoint_every={max(n // 4, 1)}",
        f"train.log_every={max(min(100, n // 8), 1)}",
        f"name=demo-resnet20-{n}it",
    ]
