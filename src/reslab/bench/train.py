"""Training and inference throughput: reslab's path against a typical-user baseline, side by side.

    RESLAB_DATA=../shared/data uv run reslab bench train --models resnet20 resnet56

reslab's path is the engine's own: the dataset resident on the device as uint8, batched pad-crop-
flip, bf16 autocast, channels_last, the foreach paper-SGD, metrics kept on the device (no host sync
per step). The baseline is written as a typical user would: eager fp32 NCHW, a ``DataLoader`` with
per-sample torchvision transforms on PIL images, ``zero_grad(); backward(); step()`` and ``.item()``
every step. Both run in the same process on the same machine, one after the other.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from reslab.engine.loop import TrainState
from reslab.engine.optim import PaperSGD
from reslab.engine.runtime import autocast, compile_mode, cudnn_autotune
from reslab.engine.step import train_step
from reslab.engine.steps import EagerStep
from reslab.models import create_model

PAPER_IMAGES = 64_000 * 128  # the CIFAR schedule: 64k iterations of 128 images


def _cifar_tensors(data_dir: str | Path | None, n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        from reslab.data.cifar import load_cifar10

        images, labels = load_cifar10(data_dir, "train", download=False)
        return images[:n], labels[:n], "CIFAR-10 train"
    except FileNotFoundError:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        return images, torch.randint(0, 10, (n,), generator=g), "synthetic"


def _time_steps(step, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def _measure(fn, device: torch.device) -> tuple[float, float | None]:
    """(fn(), peak GPU memory in MiB during it; None on CPU)."""
    if device.type != "cuda":
        return fn(), None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    value = fn()
    return value, torch.cuda.max_memory_allocated(device) / 2**20


def _precision(device: torch.device | str) -> str:
    """The engine's default precision on ``device`` (``train.precision=auto``)."""
    from reslab.engine.runtime import resolve_precision

    return resolve_precision("auto", torch.device(device))[0]


def _compile(model: torch.nn.Module, mode: str | None) -> torch.nn.Module:
    """Compiled for fixed shapes: without ``dynamic=False`` the second model of a class compiled in
    one process recompiles with dynamic shapes (measured: minutes for ResNet-50 on an H100)."""
    if mode is None:
        return model
    torch._dynamo.reset()
    return torch.compile(model, mode=mode, dynamic=False)


def engine_step(
    name: str,
    images,
    labels,
    batch: int,
    device,
    compile: str | None = None,
    cuda_graph: bool = False,
    warmup: int = 3,
    seat=None,
    seed: int = 0,
):
    """One call = one step of the engine's CIFAR training (loader + step, metrics on the device),
    as ``fit`` runs it; ``compile`` is a ``torch.compile`` mode or None (eager); ``cuda_graph``
    replays the whole step from one CUDA graph (:class:`~reslab.engine.graphed.GraphedStep`,
    eager on CPU); a ``seat`` of a :class:`~reslab.engine.stacked.StackGroup` steps stacked with
    the group. The returned function's ``window`` attribute holds the metric sums."""
    from reslab.data.loaders import TensorLoader
    from reslab.data.transforms import Normalize
    from reslab.engine.graphed import GraphedStep

    model = create_model(name).to(device).to(memory_format=torch.channels_last)
    opt = PaperSGD(model.parameters(), 0.1, 0.9, 1e-4)
    normalize = Normalize.fit(images).to(device)
    loader = TensorLoader(
        images,
        labels,
        batch,
        lambda x: normalize(x).contiguous(memory_format=torch.channels_last),
        train=True,
        device=device,
        seed=seed,
    )
    window = torch.zeros(3, dtype=torch.float64, device=device)
    if seat is not None:
        from reslab.engine.stacked import StackedStep

        step = StackedStep(seat, model, opt, loader, window, _precision(device))
    elif cuda_graph:  # (a graphed step compiles the model itself)
        if compile:
            torch._dynamo.reset()
        step = GraphedStep(
            model,
            opt,
            loader,
            window,
            _precision(device),
            warmup=min(warmup, 3),
            compile_mode=compile,
        )
    else:
        step = EagerStep(_compile(model, compile), opt, loader, window, _precision(device))
    state = TrainState()
    step.start_epoch(0)

    def one_step():  # the engine's loop without its logging
        step(0.1)
        if state.advance(len(step)):
            step.start_epoch(state.epoch)

    one_step.window = window
    return one_step


def reslab_cifar_train(
    name: str,
    images,
    labels,
    batch: int,
    steps: int,
    warmup: int,
    device,
    compile: str | None = None,
    cuda_graph: bool = False,
) -> float:
    """Images/s of :func:`engine_step`."""
    one_step = engine_step(name, images, labels, batch, device, compile, cuda_graph, warmup)
    elapsed = _time_steps(one_step, steps, warmup, device)
    one_step.window.tolist()  # the one read, after timing (the engine reads every log interval)
    return steps * batch / elapsed


def _typical_step(model, opt, x: torch.Tensor, y: torch.Tensor) -> None:
    """The baseline's step as a typical user writes it: eager fp32, ``.item()`` every step."""
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    loss.item()


def baseline_cifar_train(
    name: str, images, labels, batch: int, steps: int, warmup: int, device, workers: int = 2
) -> float:
    """Images/s of the typical-user loop: per-sample PIL transforms in a DataLoader, fp32 NCHW."""
    import torchvision.transforms as T
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    class PILCifar(Dataset):
        tf = T.Compose(
            [
                T.RandomCrop(32, padding=4),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
            ]
        )

        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return self.tf(Image.fromarray(images[i].permute(1, 2, 0).numpy())), int(labels[i])

    loader = DataLoader(
        PILCifar(),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
    )
    model = create_model(name).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    it = iter(())

    def step():
        nonlocal it
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        _typical_step(model, opt, x.to(device), y.to(device))

    return steps * batch / _time_steps(step, steps, warmup, device)


def inference(name: str, batch: int, steps: int, device, fast: bool, size: int = 32) -> float:
    """Images/s of eval-mode forward passes: bf16 + channels_last (fast) or fp32 NCHW."""
    model = create_model(name).to(device).eval()
    x = torch.randn(batch, 3, size, size, device=device)
    if fast:
        model, x = (
            model.to(memory_format=torch.channels_last),
            x.contiguous(memory_format=torch.channels_last),
        )

    @torch.no_grad()
    def step():
        with autocast(device, _precision(device) if fast else "fp32"):
            model(x)

    return steps * batch / _time_steps(step, steps, 1, device)


def synthetic_train(
    name: str,
    batch: int,
    steps: int,
    device,
    fast: bool,
    size: int = 224,
    compile: str | None = None,
    warmup: int = 1,
) -> float:
    """Images/s of training steps on synthetic data (ImageNet-size models), fast path or baseline."""
    model = create_model(name).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    if fast:
        model, x = (
            _compile(model.to(memory_format=torch.channels_last), compile),
            x.contiguous(memory_format=torch.channels_last),
        )
        opt = PaperSGD(model.parameters(), 0.1, 0.9, 1e-4)
        window = torch.zeros(3, dtype=torch.float64, device=device)

        def step():
            if x.is_cuda:  # a new step for CUDA graphs (torch.compile "reduce-overhead")
                torch.compiler.cudagraph_mark_step_begin()
            opt.zero_grad(set_to_none=True)
            train_step(model, opt, x, y, _precision(device), 0.1, window)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

        def step():
            _typical_step(model, opt, x, y)

    return steps * batch / _time_steps(step, steps, warmup, device)


def run(
    models: list[str],
    data_dir: str | Path | None = None,
    device: str = "cpu",
    steps: int = 20,
    batch: int = 128,
    imagenet_batch: int | None = None,
    compile: str = "auto",
    workers: int | None = None,
    cuda_graph: str = "auto",
) -> list[dict[str, Any]]:
    """One row per model: reslab's path (the engine's defaults on ``device``) against the baseline.

    ``compile`` is a ``torch.compile`` mode, "false", or "auto" (the engine's default: CUDA graphs on
    CUDA, eager on CPU); for CIFAR models on CUDA the default is the engine's whole-step CUDA graph
    (``cuda_graph``: auto/true/false). When graphed or compiled, the eager fast path is measured too
    (``eager_images_per_s``).
    ImageNet-size models train on synthetic 224x224 data with ``imagenet_batch`` images (the paper's
    256 on CUDA, 16 on CPU by default).
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    mode = None if compile == "false" else compile_mode(compile, "auto", device)
    if compile not in ("auto", "false"):
        mode = compile
    # the engine's default on CUDA for CIFAR: the whole step as one CUDA graph (no compile)
    graph = cuda_graph == "true" or (cuda_graph == "auto" and cuda and compile == "auto")
    imagenet_batch = imagenet_batch or (256 if cuda else 16)
    workers = workers if workers is not None else (4 if cuda else 2)
    warmup = 10 if cuda else 3  # CUDA graphs are recorded after warm-up runs
    images, labels, source = _cifar_tensors(data_dir, 10_240)
    rows = []
    with cudnn_autotune(cuda):  # fixed shapes: cuDNN finds the fastest kernels once
        for name in models:
            is_imagenet = create_model(name).stem_kind == "imagenet"
            if is_imagenet:
                n = max(3, steps // 4)
                ours_fn = partial(
                    synthetic_train, name, imagenet_batch, n, device, True, warmup=warmup
                )
                base_fn = partial(
                    synthetic_train, name, imagenet_batch, n, device, False, warmup=warmup
                )
                row = {"model": name, "data": "synthetic 224x224", "batch_size": imagenet_batch}
                infer = (imagenet_batch, n, 224)
            else:
                ours_fn = partial(
                    reslab_cifar_train, name, images, labels, batch, steps, warmup, device,
                    cuda_graph=graph,
                )  # fmt: skip
                base_fn = partial(
                    baseline_cifar_train,
                    name,
                    images,
                    labels,
                    batch,
                    steps,
                    warmup,
                    device,
                    workers,
                )
                row = {"model": name, "data": source, "batch_size": batch}
                infer = (500, max(3, steps // 4), 32)
            graphed = graph and not is_imagenet
            # inside the whole-step graph the model is compiled only when a mode is named explicitly
            ours_mode = (compile if compile not in ("auto", "false") else None) if graphed else mode
            ours, ours_mem = _measure(partial(ours_fn, compile=ours_mode), device)
            base, base_mem = _measure(base_fn, device)
            row.update(
                compile=ours_mode or "off",
                cuda_graph=("whole step" if cuda else "eager (no CUDA)") if graphed else "off",
                precision=_precision(device),
                images_per_s=ours,
                baseline_images_per_s=base,
                speedup=ours / base,
            )
            if graphed or ours_mode is not None:  # the same path without graphs or compilation
                row["eager_images_per_s"] = (
                    partial(ours_fn, cuda_graph=False) if graphed else ours_fn
                )(compile=None)
            if not is_imagenet:
                row["paper_schedule_s"] = PAPER_IMAGES / ours
                row["baseline_paper_schedule_s"] = PAPER_IMAGES / base
            if cuda:
                row["peak_memory_mb"], row["baseline_peak_memory_mb"] = ours_mem, base_mem
            row["inference_images_per_s"] = inference(name, *infer[:2], device, True, infer[2])
            row["baseline_inference_images_per_s"] = inference(
                name, *infer[:2], device, False, infer[2]
            )
            rows.append(row)
    return rows
