"""Stacked runs: N networks of one architecture trained as one N-times wider network.

    uv run reslab reproduce table6 --only resnet110 --seeds 5 --concurrent 5 --pack stacked

The third way of packing runs (:mod:`reslab.engine.packed`). A small net leaves a GPU idle between
its kernels; N nets stacked side by side run the same number of kernels, each N times larger:

- every convolution becomes a grouped convolution with one group per net;
- every BatchNorm normalises the N nets' channels side by side (its statistics are per channel,
  so per net), the option-A shortcut pads each net's channels, the classifier runs per net;
- the loss is the *sum* of the nets' own cross-entropies, so each net's gradients are exactly those
  of its own loss; each run's optimizer then steps its own parameters with its own learning rate
  (ResNet-110's warm-up, which raises it once that net's training error falls below 80%, stays
  per net).

The nets keep their own parameters and buffers, as views: while the group trains, each stacked
layer holds one tensor per weight (and BN statistic) and the nets' own tensors are slices of it,
so the stacked forward copies nothing, each run's optimizer updates its slices in place, and the
gradients of the stacked tensors are handed to the nets as slices too; when the group changes,
every net gets storage of its own back (checkpoints copy the slices). Each run is still an ordinary :func:`~reslab.engine.trainer.fit` in its own thread, with its own
seed, data order, checkpoints and summary; only its training step is a :class:`StackedStep`, which
hands the batch to the :class:`StackGroup` and waits until every run of the group has handed in
its own, when one of them runs the stacked step for all (on CUDA replayed from one CUDA graph).
The step body is the N-way form of :func:`~reslab.engine.step.train_step`.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reslab.engine.graphed import BatchTables, DeviceLR, Replayer
from reslab.engine.optim import PaperSGD
from reslab.errors import ConfigError
from reslab.models.layers import FixedStatsBatchNorm2d, PadShortcut

# layers without parameters or state that act per channel or per element: the same on N nets'
# channels side by side as on one net's
_CHANNELWISE = (nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Identity)


class _Stacked(nn.Module):
    """A layer of the stacked net, made of the same layer of each net (kept in a tuple, so that
    they are not registered here).

    While bound, each of the layer's tensors (parameters, BN statistics) is one stacked tensor and
    the nets' own tensors are views of their slices: the stacked forward reads them without a copy,
    an optimizer stepping a net's parameters writes into the stack, and BN updates its statistics
    in place. Unbinding gives every net its own storage back."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.members = tuple(layers)
        self.stacked: dict[str, torch.Tensor] = {}

    def bind(self) -> None:
        first = self.members[0]
        for name, tensor in [*first._parameters.items(), *first._buffers.items()]:
            if tensor is None:
                continue
            parts = [getattr(m, name).detach() for m in self.members]
            whole = torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)
            whole.requires_grad_(tensor.requires_grad and name in first._parameters)
            self.stacked[name] = whole
            for m, view in zip(self.members, self._slices(whole, tensor.dim() == 0), strict=True):
                if name in m._parameters:
                    m._parameters[name].data = view
                else:
                    m._buffers[name] = view

    def unbind(self) -> None:
        for name in self.stacked:
            for m in self.members:
                if name in m._parameters:
                    p = m._parameters[name]
                    p.data = p.data.clone()
                    p.grad = None
                else:
                    m._buffers[name] = m._buffers[name].clone()
        self.stacked = {}

    def share_grads(self) -> None:
        """After backward: each net's parameter gradients are the slices of the stacked ones."""
        for name, whole in self.stacked.items():
            if whole.grad is not None:
                for m, grad in zip(self.members, self._slices(whole.grad), strict=True):
                    m._parameters[name].grad = grad
                whole.grad = None

    def _slices(self, whole: torch.Tensor, scalars: bool = False) -> tuple[torch.Tensor, ...]:
        """Each net's part of a stacked tensor (0-dim parts of a stack of scalars)."""
        whole = whole.detach()
        return whole.unbind(0) if scalars else whole.chunk(len(self.members))


class StackedConv2d(_Stacked):
    """The nets' convolutions as one grouped convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, w = self.members[0], self.stacked
        groups = c.groups * len(self.members)
        return F.conv2d(x, w["weight"], w.get("bias"), c.stride, c.padding, c.dilation, groups)


class StackedBatchNorm2d(_Stacked):
    """The nets' BatchNorms over their channels side by side."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, t = self.members[0], self.stacked
        fixed = isinstance(first, FixedStatsBatchNorm2d)  # normalises with, and keeps, its stats
        batch_stats = first.training and not fixed
        if batch_stats:
            t["num_batches_tracked"].add_(1)
        return F.batch_norm(
            x, t["running_mean"], t["running_var"], t["weight"], t["bias"], batch_stats,
            first.momentum, first.eps,
        )  # fmt: skip


class StackedLinear(_Stacked):
    """The nets' classifiers, each on its own net's features; logits side by side."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, (k, c) = len(self.members), self.members[0].weight.shape
        w, b = self.stacked["weight"].view(n, k, c), self.stacked["bias"].view(1, n, k)
        return (torch.einsum("bnc,nkc->bnk", x.view(len(x), n, c), w) + b).flatten(1)


class StackedPadShortcut(_Stacked):
    """Option A on each net's channels: subsample, then zero-pad that net's channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.members[0]
        if pad.stride != 1:
            x = x[:, :, :: pad.stride, :: pad.stride]
        extra = pad.out_ch - pad.in_ch
        before = extra // 2 if pad.where == "both" else 0
        per_net = x.unflatten(1, (len(self.members), pad.in_ch))
        return F.pad(per_net, (0, 0, 0, 0, before, extra - before)).flatten(1, 2)


_STACKED = {
    nn.Conv2d: StackedConv2d,
    nn.BatchNorm2d: StackedBatchNorm2d,
    FixedStatsBatchNorm2d: StackedBatchNorm2d,
    nn.Linear: StackedLinear,
    PadShortcut: StackedPadShortcut,
}


def _stackable(layer: nn.Module) -> bool:
    """Whether a layer of a type with a stacked form has none of the settings it leaves out."""
    if isinstance(layer, nn.Conv2d):
        return layer.padding_mode == "zeros"
    if isinstance(layer, nn.BatchNorm2d):  # exponential running statistics, as the models have
        return layer.track_running_stats and layer.momentum is not None
    if isinstance(layer, nn.Linear):
        return layer.bias is not None
    return True


class StackedNets(nn.Module):
    """The N nets computed at once: input ``[B, N*C, H, W]`` (net i's images in the i-th block
    of channels), output ``[B, N*K]`` (net i's logits in the i-th block).

    ``net`` is a copy of the first net whose every layer is replaced by its stacked form, so the
    nets' own ``forward`` code (blocks, shortcuts, pre-activation, plain nets) runs unchanged.
    Use it between :meth:`bind` and :meth:`unbind` (a context manager does both)."""

    def __init__(self, nets: list[nn.Module]) -> None:
        super().__init__()
        first = nets[0]
        shapes = [[(k, tuple(v.shape)) for k, v in net.state_dict().items()] for net in nets]
        if any(s != shapes[0] for s in shapes):
            raise ConfigError("stacked runs need one architecture; these nets' layers differ")
        shell = copy.deepcopy(first)
        self.layers: list[_Stacked] = []
        for name, layer in list(first.named_modules()):
            if next(layer.children(), None) is not None:
                continue  # a container: its forward runs as written, on the stacked layers
            if isinstance(layer, _CHANNELWISE) and type(layer) not in _STACKED:
                continue
            kind = _STACKED.get(type(layer))
            if kind is None or not _stackable(layer):
                raise ConfigError(
                    f"cannot stack layer {name!r} ({type(layer).__name__}); train these runs "
                    "with --pack processes or streams"
                )
            stacked = kind([n.get_submodule(name) for n in nets])
            parent, _, child = name.rpartition(".")
            setattr(shell.get_submodule(parent), child, stacked)
            self.layers.append(stacked)
        self.net = shell.train(first.training)
        self.nets = tuple(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def bind(self) -> StackedNets:
        for layer in self.layers:
            layer.bind()
        return self

    def unbind(self) -> None:
        for layer in self.layers:
            layer.unbind()

    def share_grads(self) -> None:
        for layer in self.layers:
            layer.share_grads()

    def __enter__(self) -> StackedNets:
        return self.bind()

    def __exit__(self, *exc) -> None:
        self.unbind()


def stacked_train_step(
    stack: StackedNets, runs: list[Any], batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> None:
    """:func:`~reslab.engine.step.train_step` for N runs at once (``stack`` bound; each run has
    ``optimizer``, ``lr``, ``window`` and ``precision``): the stacked forward on the runs'
    ``batches``, each run's cross-entropy on its own logits, backward of their sum, each run's SGD
    update with its own learning rate, and each run's loss and errors added to its own window. No
    host synchronisation, so that it can be captured."""
    images = torch.cat([x for x, _ in batches], 1)
    enabled = runs[0].precision == "bf16"
    with torch.autocast(images.device.type, torch.bfloat16, enabled=enabled, cache_enabled=False):
        logits = stack(images).chunk(len(runs), 1)
        losses = [F.cross_entropy(z.float(), y) for z, (_, y) in zip(logits, batches, strict=True)]
    torch.stack(losses).sum().backward()
    stack.share_grads()
    for r, z, loss, (_, y) in zip(runs, logits, losses, batches, strict=True):
        r.optimizer.step(lr=r.lr)
        with torch.no_grad():
            r.window[0] += loss.detach() * len(y)
            r.window[1] += (z.detach().argmax(1) != y).sum()
            r.window[2] += len(y)


class StackGroup:
    """Runs (one thread each) whose steps execute together as one stacked net.

    A run takes a :class:`Seat` with :meth:`join` and gives it back with ``seat.leave()`` when it
    ends (however it ends). Each step waits until every seated run has handed in its step; the
    last one to arrive runs the stacked step for all. A run that is evaluating or checkpointing
    holds the others' next step until it comes back (runs of one config do both at the same
    iterations). With ``capture`` (CUDA) the stacked step is recorded once as a CUDA graph after
    ``warmup`` eager steps and replayed (:class:`~reslab.engine.graphed.Replayer`); the runs'
    batches come from their device tables, so nothing crosses to the host per step. The graph is
    captured again whenever the group's runs change."""

    def __init__(self, capture: bool = False, warmup: int = 3) -> None:
        self._cond = threading.Condition()
        self._seats: list[Seat] = []
        self._waiting: dict[Seat, StackedStep] = {}
        self._generation = 0
        self._failures: dict[int, BaseException] = {}
        self._stack: StackedNets | None = None  # bound to the nets of the last step
        self.replay = Replayer(capture, warmup)

    def join(self) -> Seat:
        seat = Seat(self)
        with self._cond:
            self._seats.append(seat)
        return seat

    def _leave(self, seat: Seat) -> None:
        with self._cond:
            if seat in self._seats:
                self._seats.remove(seat)
                self._waiting.pop(seat, None)
                if self._stack is not None and seat.model in self._stack.nets:
                    self._unbind()  # the run ends with tensors of its own
                self._run_if_complete()

    def _submit(self, seat: Seat, run: StackedStep) -> None:
        with self._cond:
            self._waiting[seat] = run
            generation = self._generation
            self._run_if_complete()
            while self._generation == generation:
                self._cond.wait()
            failure = self._failures.get(generation)
        if failure is not None:
            raise RuntimeError("the stacked training step failed") from failure

    def _run_if_complete(self) -> None:
        """Run the step once every seated run has handed in its own (the lock is held)."""
        if not self._waiting or len(self._waiting) < len(self._seats):
            return
        runs = [self._waiting[s] for s in self._seats]
        try:
            self._step(runs)
        except BaseException as err:  # every waiting run raises it
            self._failures[self._generation] = err
        self._waiting.clear()
        self._generation += 1
        self._cond.notify_all()

    def _step(self, runs: list[StackedStep]) -> None:
        nets = tuple(r.model for r in runs)
        if self._stack is None or self._stack.nets != nets:
            self._unbind()
            self._stack = StackedNets(list(nets)).bind()
        stack = self._stack

        def body() -> None:
            stacked_train_step(stack, runs, [r.tables.batch() for r in runs])
            for r in runs:
                r.tables.advance()

        def zero_grads() -> None:
            for r in runs:
                r.model.zero_grad(set_to_none=True)

        self.replay(body, zero_grads)

    def _unbind(self) -> None:
        if self._stack is not None:
            self._stack.unbind()
        self._stack = None
        self.replay.reset()


class Seat:
    """A run's place in a :class:`StackGroup`."""

    def __init__(self, group: StackGroup) -> None:
        self.group = group
        self.model: nn.Module | None = None

    def step(self, run: StackedStep) -> None:
        self.model = run.model
        self.group._submit(self, run)

    def leave(self) -> None:
        self.group._leave(self)


class StackedStep:
    """A run's training steps, executed stacked with the other runs of its group: used like
    :class:`~reslab.engine.steps.EagerStep` (``start_epoch``, then one call per step with its
    learning rate). Its batches come from device tables, as the whole-step graph reads them."""

    def __init__(self, seat: Seat, model, optimizer: PaperSGD, loader, window, precision) -> None:
        self.seat, self.model, self.optimizer, self.loader = seat, model, optimizer, loader
        self.window, self.precision = window, precision
        self.tables = BatchTables(loader)
        self.device_lr = DeviceLR(optimizer, loader.device)

    @property
    def lr(self) -> torch.Tensor:
        return self.device_lr.tensor

    def __len__(self) -> int:
        return len(self.loader)

    def start_epoch(self, epoch: int, start: int = 0) -> None:
        self.tables.start_epoch(epoch, start)

    def __call__(self, lr: float) -> None:
        self.device_lr.set(lr)
        self.seat.step(self)


def group_for(cfg: Any) -> StackGroup:
    """A group for runs of ``cfg``'s :func:`stack_key`: its step captured as a CUDA graph on CUDA
    unless ``train.cuda_graph`` is false."""
    from reslab.engine.runtime import resolve_device

    cuda = resolve_device(cfg.train.device).type == "cuda"
    return StackGroup(capture=cuda and cfg.train.cuda_graph is not False)


def stack_key(cfg: Any) -> tuple:
    """Runs with the same key can be stacked: one architecture, batch size, precision, layout."""
    t = cfg.train
    options = tuple(sorted((k, repr(v)) for k, v in cfg.model.options.items()))
    return (cfg.model.name, options, cfg.data.dataset, t.batch_size, t.precision,
            t.channels_last, t.device, t.freeze_stages, t.freeze_bn)  # fmt: skip
