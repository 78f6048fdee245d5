"""A run's blocks: what the training loop calls besides the step (logging a window, evaluating,
saving a checkpoint, agreeing on a stop), the same for every task.

    uv run python -c "from reslab.engine.blocks import Blocks; help(Blocks)"

:class:`Blocks` keeps :class:`~reslab.engine.loop.RunBlocks`'s contract for
:func:`~reslab.engine.trainer.fit`: every logging window is checked for a loss that is no longer
finite, and a checkpoint is complete (model, optimiser, schedule, counters, window, RNG states,
config, code version, precision) or not written at all.
"""

from __future__ import annotations

import resource
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reslab.engine import distributed
from reslab.engine.checkpoint import atomic_save, own_storage, prune_checkpoints, rng_state
from reslab.engine.logging import JsonlLogger
from reslab.engine.loop import Meter, StopRequest, TrainState
from reslab.errors import DivergedError


@dataclass
class Blocks:
    """The loop's logging, evaluation and checkpoint blocks (:class:`~reslab.engine.loop.RunBlocks`):
    what every task shares; the task says what a window and an evaluation report."""

    task: Any  # the run's task (reslab.engine.trainer.Task)
    run_dir: Path
    info: distributed.DistInfo
    parts: Any  # what the task prepared (reslab.engine.trainer.Parts)
    state: TrainState
    meter: Meter
    logger: JsonlLogger
    version: str
    precision: tuple[str, str] = ("fp32", "train.precision")  # (precision, how it was chosen)

    @property
    def cfg(self) -> Any:
        return self.task.cfg

    def log_window(self, bar: Any) -> None:
        """Log the window's loss (and what the task adds); stop a run whose loss is no longer
        finite; end the warm-up when the training error falls below its threshold."""
        state, lr = self.state, self.parts.optimizer.param_groups[0]["lr"]
        loss, err = self.meter.read(self.info)
        images = self.meter.timed_images(self.info.world_size)
        self.logger.log(
            iteration=state.iteration,
            epoch=state.epoch,
            lr=lr,
            **self.task.window_fields(loss, err),
            images_per_s=images / self.meter.train_s if self.meter.train_s > 0 else float("nan"),
            peak_memory_mb=peak_memory_mb(self.meter.window.device),
        )
        if not np.isfinite(loss):
            self._diverged(
                f"the training loss of the last {self.cfg.train.log_every} steps is {loss}"
            )
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:g}")
        schedule = self.parts.schedule
        if schedule.observe_train_error(err, state.iteration):  # the same in every process
            new_lr = schedule.lr(state.iteration)
            self.logger.log(
                event="warmup_end", iteration=state.iteration, train_error=err, lr=new_lr
            )
            if self.info.is_main:
                bar.write(
                    f"iteration {state.iteration}: training error {err:.1f}% < "
                    f"{self.cfg.optim.warmup_until_error}%, lr -> {new_lr:g}"
                )

    def evaluate(self, final: bool = False) -> dict[str, Any] | None:
        """Rank 0 evaluates and logs; the error reaches every process (the plateau rule)."""
        result, device = None, self.meter.window.device
        shared = torch.zeros(1, device=device, dtype=torch.float64)
        if self.info.is_main:
            result, error = self.task.evaluate(final)
            shared += error if error is not None else float("nan")
            self.logger.log(iteration=self.state.iteration, **result)
        error = distributed.all_reduce_sum(shared, self.info).item()
        schedule = self.parts.schedule
        if np.isfinite(error) and schedule.observe_eval_error(error, self.state.iteration):
            lr = schedule.lr(self.state.iteration)
            self.logger.log(event="lr_drop", iteration=self.state.iteration, lr=lr)
        return result

    def save(self, name: str) -> Path | None:
        """A complete checkpoint (every process calls it: the window is summed over them; rank 0
        writes). Non-finite weights or losses are never saved: the run stops instead."""
        model = self.parts.model
        distributed.all_reduce_sum(self.meter.window, self.info)
        if not bool(torch.isfinite(self.meter.window).all()):
            self._diverged(f"the training loss since iteration {self._last_log()} is not finite")
        bad = next((n for n, p in model.state_dict().items() if not p.isfinite().all()), None)
        if bad is not None:
            self._diverged(f"the weights are no longer finite ({bad})")
        if not self.info.is_main:
            self.meter.window.zero_()
            return None
        payload = {
            "model": own_storage(model.state_dict()),
            "optimizer": self.parts.optimizer.state_dict(),
            "schedule": self.parts.schedule.state_dict(),
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
        it, lr = self.state.iteration, self.parts.optimizer.param_groups[0]["lr"]
        self.logger.log(event="diverged", iteration=it, lr=lr)
        kept = sorted(p.name for p in (self.run_dir / "checkpoints").glob("ckpt_*.pt"))
        raise DivergedError(
            f"training diverged by iteration {it} (lr {lr:g}): {what}. Nothing of it was saved"
            + (f"; the last good checkpoint is {kept[-1]}" if kept else "")
            + ". Lower optim.lr (or check the data) and start over with --restart"
        )


def peak_memory_mb(device: torch.device) -> float:
    """The process's peak memory so far in MiB (the device's allocations on CUDA)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
