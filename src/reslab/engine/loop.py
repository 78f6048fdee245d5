"""The training loop, top to bottom, and the two contracts it is written against.

    uv run python -c "from reslab.engine.loop import train_loop; help(train_loop)"

Every run trains in :func:`train_loop`, classification and detection alike (a task gives
:func:`reslab.engine.trainer.fit` its pieces). The loop knows two things about them: a
:class:`Step` trains on the next batch with a given learning rate, and the run's
:class:`RunBlocks` log a window, save a checkpoint and agree on a stop. :class:`TrainState` is
where a run stands (saved in every checkpoint); :class:`Meter` is this session's logging window
and clock, which counts the training steps only (evaluation, checkpoints and paused stretches are
left out); :class:`StopRequest` turns SIGINT/SIGTERM into a stop after the current step.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from reslab.engine import distributed
from reslab.engine.logging import JsonlLogger
from reslab.engine.runtime import CoreShare


class Step(Protocol):
    """One training step per call: :func:`train_loop` calls ``start_epoch(epoch, start)`` to set
    an epoch's data order (from batch ``start``), then the step once per iteration with its
    learning rate; ``len(step)`` is the batches of an epoch. A step adds ``[loss sum, errors,
    images]`` of its batch to the meter's ``window`` on the training device (no host sync).
    :class:`~reslab.engine.steps.EagerStep`, :class:`~reslab.engine.graphed.GraphedStep`,
    :class:`~reslab.engine.stacked.StackedStep` and detection's step keep it."""

    def __len__(self) -> int: ...

    def start_epoch(self, epoch: int, start: int = 0) -> None: ...

    def __call__(self, lr: float) -> None: ...


class RunBlocks(Protocol):
    """What the loop calls besides the step: the run's settings (``cfg.train``: iterations,
    log_every, eval_every, checkpoint_every), where it stands, its meter and log, and its
    logging, checkpoint and stop blocks."""

    cfg: Any
    state: TrainState
    meter: Meter
    logger: JsonlLogger
    info: distributed.DistInfo

    def log_window(self, bar: Any) -> None: ...

    def save(self, name: str) -> Path | None: ...

    def anyone_stopping(self, stop: StopRequest) -> bool: ...


@dataclass
class Parts:
    """What a task prepares for a run: the network whose state is checkpointed, its optimiser and
    learning-rate schedule (``lr(iteration)``, ``observe_train_error``, ``observe_eval_error``,
    ``state_dict``, ``load_state_dict``), the images per step in this process, and what the run's
    log should say first (how the data is read; where the weights came from)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any
    batch: int
    note: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)


class Task(Protocol):
    """What one kind of run (classification, detection) gives :func:`fit`."""

    cfg: Any
    distributed: bool  # whether it may run data-parallel under torchrun

    def prepare(
        self, run_dir: Path, info: distributed.DistInfo, device: torch.device, fresh: bool
    ) -> Parts: ...

    def make_step(
        self,
        parts: Parts,
        window: torch.Tensor,
        info: distributed.DistInfo,
        device: torch.device,
        precision: str,
    ) -> tuple[Step, dict[str, Any]]: ...

    def window_fields(self, loss: float, error: float) -> dict[str, float]: ...

    def evaluate(self, final: bool) -> tuple[dict[str, Any], float | None]: ...

    def save_weights(self, model: nn.Module, path: Path, version: str) -> None: ...

    def summary(self, result: dict[str, Any]) -> dict[str, Any]: ...


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


def train_loop(
    run: RunBlocks, step: Step, lr: Callable[[int], float], evaluate: Callable[[], Any], bar: Any
) -> dict[str, Any] | None:
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
