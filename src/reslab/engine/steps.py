"""The training step a run uses, chosen once: eager, one CUDA graph, or stacked with other runs.

    uv run python -c "from reslab.engine.steps import make_step; help(make_step)"

Every kind keeps :class:`~reslab.engine.loop.Step`'s contract and runs the same step body,
:func:`~reslab.engine.step.train_step`: :class:`EagerStep` kernel by kernel from Python (any
device, DDP, ``torch.compile``), :class:`~reslab.engine.graphed.GraphedStep` replayed from one CUDA
graph, :class:`~reslab.engine.stacked.StackedStep` as one net of a stack of runs.
"""

from __future__ import annotations

import torch
from torch import nn

from reslab.config import Config
from reslab.engine import distributed
from reslab.engine.optim import PaperSGD, set_lr
from reslab.engine.runtime import compile_mode, resolve_precision
from reslab.engine.step import train_step
from reslab.errors import ConfigError


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
