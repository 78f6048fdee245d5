"""The whole CIFAR training step as one CUDA graph: one launch per step instead of hundreds.

    uv run reslab train cifar10/resnet20 --set train.cuda_graph=true   # on a CUDA device

A ResNet-20 step is about 400 small kernels (augmentation gather, forward, loss, backward, the SGD
update, metric sums); launched one by one from Python, their launch cost, not the arithmetic, sets
the speed on a GPU. :class:`GraphedStep` records the step once with :class:`torch.cuda.CUDAGraph` and
replays it: the batch is picked *inside* the graph from epoch tables resident on the device (image
indices, crop offsets, mirror flags; see :meth:`TensorLoader.epoch_tables`) by a step counter the graph
itself advances, the learning rate is a device tensor, and the loss and error sums accumulate into a
device window that the trainer reads every logging interval. Nothing crosses to the host per step.

The step body is :func:`~reslab.engine.step.train_step`, the very function the eager path runs (the
same paper SGD, autocast and metric window), on the batch the graph gathers itself. The first
``warmup`` steps run eagerly through the same code (CUDA graphs need warmed-up cuDNN/cuBLAS handles);
every later step is a replay. On a CPU (or with ``capture=False``) every step runs eagerly, which is
how the tests check the arithmetic on machines without a GPU.
"""

from __future__ import annotations

import torch
from torch import nn

from reslab.data.loaders import TensorLoader
from reslab.data.transforms import crop_flip
from reslab.engine.optim import PaperSGD
from reslab.engine.step import train_step


class BatchTables:
    """A run's training epoch on its device at fixed addresses, and the batch counter that picks
    a row of it: what a captured step reads its batch from (no host data per step).

    ``start_epoch`` loads an epoch's tables (image indices, crop offsets, mirror flags; see
    :meth:`TensorLoader.epoch_tables`); :meth:`batch` gathers the current batch on the device and
    :meth:`advance` moves the counter, both inside a graph if need be."""

    def __init__(self, loader: TensorLoader) -> None:
        if loader.shard != (0, 1):
            raise ValueError("BatchTables serve one process; use the eager step under torchrun")
        self.loader, device = loader, loader.device
        nb, bs = len(loader), loader.batch_size
        self.order = torch.zeros(nb, bs, dtype=torch.long, device=device)
        self.oy = torch.zeros(nb, bs, dtype=torch.long, device=device)
        self.ox = torch.zeros(nb, bs, dtype=torch.long, device=device)
        self.mirror = torch.zeros(nb, bs, dtype=torch.bool, device=device)
        self.row = torch.zeros(1, dtype=torch.long, device=device)

    def start_epoch(self, epoch: int, start: int = 0) -> None:
        """Load epoch ``epoch``'s tables; the next batch is its batch ``start``."""
        order, (oy, ox, mirror) = self.loader.epoch_tables(epoch)
        for static, new in ((self.order, order), (self.oy, oy), (self.ox, ox)):
            static.copy_(new)
        self.mirror.copy_(mirror)
        self.row.fill_(start)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The current batch (normalised images, labels), gathered on the device."""
        loader, row = self.loader, self.row
        idx = self.order.index_select(0, row).view(-1)
        oy, ox, mirror = (t.index_select(0, row).view(-1) for t in (self.oy, self.ox, self.mirror))
        images = loader.normalize(crop_flip(loader.images[idx], oy, ox, mirror, pad=loader.pad))
        return images, loader.labels[idx]

    def advance(self) -> None:
        self.row += 1


class DeviceLR:
    """A learning rate as a device tensor (what a captured step reads), written only when the
    schedule changes it; the optimizer's group keeps the float for checkpoints and logs."""

    def __init__(self, optimizer: PaperSGD, device: torch.device) -> None:
        self.optimizer = optimizer
        self.value = float(optimizer.param_groups[0]["lr"])
        self.tensor = torch.tensor(self.value, device=device)

    def set(self, lr: float) -> None:
        if lr != self.value:
            self.tensor.fill_(lr)
            self.value = lr
        self.optimizer.param_groups[0]["lr"] = lr


class Replayer:
    """Runs a step body: eagerly for the first ``warmup`` steps (on a side stream when it will be
    captured: CUDA graphs need warmed-up cuDNN/cuBLAS handles), then records it once as a CUDA
    graph and replays it for every later step. Without ``capture`` every step runs eagerly.

    ``zero_grads`` sets the trained gradients to None before each eager step and before the
    capture, so that backward writes them (the graph then allocates, and rewrites, them)."""

    def __init__(self, capture: bool, warmup: int = 3) -> None:
        self.capture, self.warmup = capture, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager_steps = 0

    def reset(self) -> None:
        """Forget the graph (what it reads has moved): warm up and capture again."""
        self.graph, self.eager_steps = None, 0

    def __call__(self, body, zero_grads) -> None:
        if self.graph is not None:
            self.graph.replay()
            return
        zero_grads()
        if not self.capture or self.eager_steps < self.warmup:
            if self.capture:  # warm-up on a side stream, as CUDA graph capture requires
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    body()
                torch.cuda.current_stream().wait_stream(side)
            else:
                body()
            self.eager_steps += 1
            return
        self.graph = torch.cuda.CUDAGraph()
        # packed runs (one thread and stream each) capture on their own stream, thread_local so
        # that the others may go on meanwhile; a lone run captures on torch's side stream
        current = torch.cuda.current_stream()
        own = None if current == torch.cuda.default_stream() else current
        with torch.cuda.graph(self.graph, stream=own, capture_error_mode="thread_local"):
            body()
        self.graph.replay()  # capturing records the step without running it


class GraphedStep:
    """Training steps of ``model`` on ``loader``'s epochs, replayed from one CUDA graph.

    Used like :class:`~reslab.engine.steps.EagerStep`: ``start_epoch(epoch, start)``, then one
    call per step with its learning rate.

    Args:
        model: the module to train (eager; in training mode).
        optimizer: a :class:`PaperSGD` with one parameter group; its momentum buffers are used (and
            created when missing), so checkpoints of the optimizer stay valid.
        loader: the training :class:`TensorLoader` (one process, data on the step's device).
        window: float64 device tensor ``[loss sum, error count, images]`` the steps add to.
        precision: "bf16" (autocast) or "fp32".
        capture: record a CUDA graph (default: when the data is on a CUDA device).
        warmup: eager steps before the capture.
        compile_mode: ``torch.compile`` the model with this mode ("default", "max-autotune") so
            that the graph replays Inductor's fused kernels; None keeps the eager kernels.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: PaperSGD,
        loader: TensorLoader,
        window: torch.Tensor,
        precision: str = "bf16",
        *,
        capture: bool | None = None,
        warmup: int = 3,
        compile_mode: str | None = None,
    ) -> None:
        if len(optimizer.param_groups) != 1:
            raise ValueError("GraphedStep needs an optimizer with a single parameter group")
        if compile_mode == "reduce-overhead":
            raise ValueError("compile_mode='reduce-overhead' would nest CUDA graphs; use 'default'")
        self.model, self.optimizer, self.loader, self.window = model, optimizer, loader, window
        self.forward = (
            model
            if compile_mode is None
            else torch.compile(model, mode=compile_mode, dynamic=False)
        )
        self.precision = precision
        device = loader.device
        self.capture = device.type == "cuda" if capture is None else capture
        if self.capture and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {device}")
        self.lr = DeviceLR(optimizer, device)
        self.tables = BatchTables(loader)  # what the graph reads its batch from
        self.replay = Replayer(self.capture, warmup)

    def __len__(self) -> int:
        return len(self.loader)

    def __call__(self, lr: float) -> None:
        self.set_lr(lr)
        self.step()

    def _body(self) -> None:
        """The batch picked by the step counter, then :func:`train_step`; no host
        synchronisation, so that it can be captured."""
        images, labels = self.tables.batch()
        lr = self.lr.tensor
        train_step(self.forward, self.optimizer, images, labels, self.precision, lr, self.window)
        self.tables.advance()

    def start_epoch(self, epoch: int, start: int = 0) -> None:
        """Load epoch ``epoch``'s tables; the next step is its batch ``start``."""
        self.tables.start_epoch(epoch, start)

    def set_lr(self, lr: float) -> None:
        self.lr.set(lr)  # a device write only when the schedule changes

    def step(self) -> None:
        """Train on the next batch of the current epoch."""
        self.replay(self._body, lambda: self.model.zero_grad(set_to_none=True))
