"""The paper's optimiser and learning-rate schedule, counted in iterations.

uv run python -c "from reslab.engine.optim import StepSchedule; s = StepSchedule(0.1, [32000, 48000]); print(s.lr(40000))"
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class PaperSGD(torch.optim.Optimizer):
    """SGD with momentum in the paper's (Torch7's) form, without dampening:

    ``v = momentum * v + lr * (g + weight_decay * w)``, then ``w = w - v``.

    PyTorch's SGD keeps ``v = m*v + g`` and steps ``lr * v``: the two agree while lr is constant and
    differ right after an lr drop, where this form lets the old velocity decay instead of scaling it.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
    ) -> None:
        if lr <= 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"invalid lr={lr}, momentum={momentum} or weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None, *, lr: float | torch.Tensor | None = None) -> None:
        """Update every parameter that has a gradient; ``lr`` (a float or a device tensor)
        replaces the groups' learning rates for this step."""
        if closure is not None:
            raise ValueError("PaperSGD does not take a closure")
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            paper_sgd_update(
                params,
                [p.grad for p in params],
                self.momentum_buffers(params),
                group["lr"] if lr is None else lr,
                group["momentum"],
                group["weight_decay"],
            )

    def momentum_buffers(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """The velocity of each of ``params`` (created as zeros on first use)."""
        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            bufs.append(state["momentum_buffer"])
        return bufs


@torch.no_grad()
def paper_sgd_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    bufs: list[torch.Tensor],
    lr: float | torch.Tensor,
    momentum: float,
    weight_decay: float,
) -> None:
    """``v = momentum*v + lr*(g + weight_decay*w)``, ``w = w - v`` over lists, in place.

    ``lr`` may be a device tensor (what a CUDA graph needs); a float and a tensor of the same value
    give bit-identical results, so the graphed and the eager step train alike.
    """
    if weight_decay:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_mul_(bufs, momentum)
    torch._foreach_add_(bufs, torch._foreach_mul(grads, lr))
    torch._foreach_sub_(params, bufs)


class StepSchedule:
    """``lr * gamma**k`` after the k-th milestone (iterations), with the paper's optional warm-up:
    ``warmup_lr`` until the running training error falls below ``warmup_until_error`` percent."""

    def __init__(
        self,
        lr: float,
        milestones: list[int],
        gamma: float = 0.1,
        warmup_lr: float | None = None,
        warmup_until_error: float = 80.0,
    ) -> None:
        self.base_lr, self.milestones, self.gamma = lr, list(milestones), gamma
        self.warmup_lr, self.warmup_until_error = warmup_lr, warmup_until_error
        self.warmup_active = warmup_lr is not None
        self.warmup_ended_at: int | None = None

    def lr(self, iteration: int) -> float:
        """The learning rate of step ``iteration`` (0-based)."""
        if self.warmup_active:
            return self.warmup_lr
        drops = sum(iteration >= m for m in self.milestones)
        return self.base_lr * self.gamma**drops

    def observe_eval_error(self, error: float, iteration: int) -> bool:
        """Step schedules ignore evaluation errors."""
        return False

    def observe_train_error(self, error: float, iteration: int) -> bool:
        """Feed the running training error (percent); True when this ends the warm-up."""
        if self.warmup_active and error < self.warmup_until_error:
            self.warmup_active, self.warmup_ended_at = False, iteration
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"warmup_active": self.warmup_active, "warmup_ended_at": self.warmup_ended_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.warmup_active, self.warmup_ended_at = state["warmup_active"], state["warmup_ended_at"]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class PlateauSchedule:
    """``lr``, multiplied by ``gamma`` whenever the evaluation error has not improved by
    ``threshold`` points for ``patience`` evaluations (the paper's ImageNet rule: "divided by 10
    when the error plateaus"); the warm-up works as in :class:`StepSchedule`."""

    def __init__(
        self,
        lr: float,
        gamma: float = 0.1,
        patience: int = 3,
        threshold: float = 0.1,
        warmup_lr: float | None = None,
        warmup_until_error: float = 80.0,
    ) -> None:
        self.current, self.gamma, self.patience, self.threshold = lr, gamma, patience, threshold
        self.warmup = StepSchedule(lr, [], 1.0, warmup_lr, warmup_until_error)
        self.best, self.bad_evals, self.drops = float("inf"), 0, []

    @property
    def warmup_ended_at(self) -> int | None:
        return self.warmup.warmup_ended_at

    def lr(self, iteration: int) -> float:
        return self.warmup.warmup_lr if self.warmup.warmup_active else self.current

    def observe_train_error(self, error: float, iteration: int) -> bool:
        return self.warmup.observe_train_error(error, iteration)

    def observe_eval_error(self, error: float, iteration: int) -> bool:
        """Feed an evaluation error (percent); True when it causes a drop."""
        if error < self.best - self.threshold:
            self.best, self.bad_evals = error, 0
            return False
        self.bad_evals += 1
        if self.bad_evals < self.patience:
            return False
        self.current *= self.gamma
        self.bad_evals, self.best = 0, min(self.best, error)
        self.drops.append(iteration)
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            "current": self.current,
            "best": self.best,
            "bad_evals": self.bad_evals,
            "drops": list(self.drops),
            "warmup": self.warmup.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.current, self.best, self.bad_evals = (
            state["current"],
            state["best"],
            state["bad_evals"],
        )
        self.drops = list(state["drops"])
        self.warmup.load_state_dict(state["warmup"])


def build_schedule(optim_cfg) -> StepSchedule | PlateauSchedule:
    """The schedule an ``OptimConfig`` asks for."""
    o = optim_cfg
    if o.schedule == "plateau":
        return PlateauSchedule(
            o.lr,
            o.gamma,
            o.plateau_patience,
            o.plateau_threshold,
            o.warmup_lr,
            o.warmup_until_error,
        )
    return StepSchedule(o.lr, o.milestones, o.gamma, o.warmup_lr, o.warmup_until_error)
