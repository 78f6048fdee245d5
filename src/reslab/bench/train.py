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
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from reslab.engine.optim import PaperSGD
from reslab.engine.runtime import autocast, configure_cpu
from reslab.engine.trainer import train_step
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


def reslab_cifar_train(
    name: str,
    images,
    labels,
    batch: int,
    steps: int,
    warmup: int,
    device,
    compile: bool | str = False,
) -> float:
    """Images/s of the engine's CIFAR training step (loader + step, metrics on the device)."""
    from reslab.data.loaders import TensorLoader
    from reslab.data.transforms import Normalize

    model = create_model(name).to(device).to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model, mode=None if compile is True else compile)
    opt = PaperSGD(model.parameters(), 0.1, 0.9, 1e-4)
    normalize = Normalize.fit(images).to(device)
    loader = TensorLoader(
        images,
        labels,
        batch,
        lambda x: normalize(x).contiguous(memory_format=torch.channels_last),
        train=True,
        device=device,
    )
    batches = iter(())
    total = torch.zeros(2, device=device)
    epoch = 0

    def step():
        nonlocal batches, epoch
        try:
            x, y = next(batches)
        except StopIteration:
            batches, epoch = loader.batches(epoch), epoch + 1
            x, y = next(batches)
        loss, errors = train_step(model, opt, x, y, "bf16")
        total[0] += loss
        total[1] += errors

    elapsed = _time_steps(step, steps, warmup, device)
    total.tolist()  # the one read, after timing (the engine reads every log interval)
    return steps * batch / elapsed


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
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()

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
        with autocast(device, "bf16" if fast else "fp32"):
            model(x)

    return steps * batch / _time_steps(step, steps, 1, device)


def synthetic_train(
    name: str, batch: int, steps: int, device, fast: bool, size: int = 224
) -> float:
    """Images/s of training steps on synthetic data (ImageNet-size models), fast path or baseline."""
    model = create_model(name).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    if fast:
        model, x = (
            model.to(memory_format=torch.channels_last),
            x.contiguous(memory_format=torch.channels_last),
        )
        opt = PaperSGD(model.parameters(), 0.1, 0.9, 1e-4)

        def step():
            train_step(model, opt, x, y, "bf16")
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

        def step():
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()

    return steps * batch / _time_steps(step, steps, 1, device)


def run(
    models: list[str],
    data_dir: str | Path | None = None,
    device: str = "cpu",
    steps: int = 20,
    batch: int = 128,
    imagenet_batch: int = 16,
    compile: str | None = None,
) -> list[dict[str, Any]]:
    device = torch.device(device)
    if device.type == "cpu":
        configure_cpu()
    images, labels, source = _cifar_tensors(data_dir, 10_240)
    rows = []
    for name in models:
        is_imagenet = create_model(name).stem_kind == "imagenet"
        if is_imagenet:
            n = max(3, steps // 4)
            ours = synthetic_train(name, imagenet_batch, n, device, fast=True)
            base = synthetic_train(name, imagenet_batch, n, device, fast=False)
            row = {"model": name, "data": "synthetic 224x224", "batch_size": imagenet_batch}
            infer_ours = inference(name, imagenet_batch, n, device, True, 224)
            infer_base = inference(name, imagenet_batch, n, device, False, 224)
        else:
            ours = reslab_cifar_train(
                name, images, labels, batch, steps, 3, device, compile=compile or False
            )
            base = baseline_cifar_train(name, images, labels, batch, steps, 3, device)
            row = {
                "model": name,
                "data": source,
                "batch_size": batch,
                "paper_schedule_s": PAPER_IMAGES / ours,
                "baseline_paper_schedule_s": PAPER_IMAGES / base,
            }
            infer_ours = inference(name, 500, max(3, steps // 4), device, True)
            infer_base = inference(name, 500, max(3, steps // 4), device, False)
        row.update(
            images_per_s=ours,
            baseline_images_per_s=base,
            speedup=ours / base,
            inference_images_per_s=infer_ours,
            baseline_inference_images_per_s=infer_base,
        )
        if device.type == "cuda":
            row["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        rows.append(row)
    return rows
