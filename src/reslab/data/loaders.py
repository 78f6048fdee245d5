"""In-memory batch iteration for tensor datasets (CIFAR): shuffled, augmented, resumable.

    uv run python -c "from reslab.data.loaders import TensorLoader; help(TensorLoader)"

The order of epoch ``e`` and the augmentation of its batch ``b`` are drawn from generators seeded by
``(seed, e)`` and ``(seed, e, b)``, so a run resumed at any batch sees exactly the data an
uninterrupted run would, and the hot path has no per-sample Python.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from reslab.data.transforms import crop_flip, crop_flip_params


def seeded_generator(*key: int) -> torch.Generator:
    """A CPU generator whose seed is derived from the integers ``key`` (via numpy's SeedSequence)."""
    seed = int(np.random.SeedSequence(list(key)).generate_state(2, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


class TensorLoader:
    """Batches of (normalised float images, labels) from uint8 ``images`` kept on ``device``.

    Args:
        images, labels: the dataset (uint8 N x C x H x W, int64 N); moved to ``device`` once.
        batch_size: images per batch.
        normalize: callable mapping a uint8 batch to the model's float input.
        train: shuffle, augment (pad-crop-flip) and drop the last partial batch.
        seed: seeds the order and the augmentation (see the module doc).
        pad: padding of the random crop (the paper's 4).
        shard: ``(rank, world_size)``: yield only this rank's equal slice of every global batch,
            augmented exactly as in a single process (``batch_size`` is the global batch).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        normalize: Callable[[torch.Tensor], torch.Tensor],
        *,
        train: bool,
        seed: int = 0,
        pad: int = 4,
        device: torch.device | str = "cpu",
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        rank, world = shard
        if not 0 <= rank < world:
            raise ValueError(f"shard={shard}: need 0 <= rank < world_size")
        if train and batch_size % world:
            raise ValueError(f"global batch {batch_size} is not divisible by {world} processes")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if train and len(images) < batch_size:
            raise ValueError(
                f"training set of {len(images)} images is smaller than one batch ({batch_size})"
            )
        self.device = torch.device(device)
        self.images, self.labels = images.to(self.device), labels.to(self.device)
        self.batch_size, self.normalize, self.train = batch_size, normalize, train
        self.seed, self.pad, self.shard = seed, pad, shard

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """Index order of ``epoch`` (the identity when not training)."""
        n = len(self.images)
        if not self.train:
            return torch.arange(n)
        return torch.randperm(n, generator=seeded_generator(self.seed, epoch))

    def epoch_tables(
        self, epoch: int
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The training epoch ``epoch`` as tables on the device, one row per global batch: image
        indices (batches x batch_size) and crop rows, crop columns and mirror flags (same shape).

        Each batch's parameters come from the seed of (seed, epoch, batch), so any row is the same
        whichever batch a run starts or resumes at; the whole epoch moves to the device at once.
        """
        if not self.train:
            raise ValueError("epoch_tables() describes training epochs (train=True)")
        nb, bs = len(self), self.batch_size
        order = self.order(epoch)[: nb * bs].view(nb, bs).to(self.device)
        drawn = [
            crop_flip_params(bs, seeded_generator(self.seed, epoch, b), self.pad) for b in range(nb)
        ]
        params = tuple(torch.stack(p).to(self.device) for p in zip(*drawn, strict=True))
        return order, params

    def batches(
        self, epoch: int = 0, start: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start, start+1, ...`` of ``epoch``."""
        rank, world = self.shard
        if not self.train:
            order = self.order(epoch).to(self.device)
            for b in range(start, len(self)):
                idx = order[b * self.batch_size : (b + 1) * self.batch_size]
                yield self.normalize(self.images[idx]), self.labels[idx]
            return
        order, params = self.epoch_tables(epoch)
        part = slice(rank * self.batch_size // world, (rank + 1) * self.batch_size // world)
        for b in range(start, len(self)):
            idx = order[b, part]  # this rank's part of the global batch and of its parameters
            x = crop_flip(self.images[idx], *(p[b, part] for p in params), pad=self.pad)
            yield self.normalize(x), self.labels[idx]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()
