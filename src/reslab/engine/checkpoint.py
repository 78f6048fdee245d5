"""Complete, atomic checkpoints that load without executing code from the file.

    uv run python -c "from reslab.engine.checkpoint import latest_checkpoint; help(latest_checkpoint)"

A checkpoint holds the model, optimiser and schedule states, the step counters, the RNG states of
torch/numpy/python (and CUDA), the config and the code version. Like every file reslab writes, it
is written by :func:`reslab.files.atomic_write` (a temporary file renamed over its target, so a
crash never leaves half a checkpoint under the real name); ``atomic_write``, ``write_all`` and
``write_error`` can be imported from here too.
"""

from __future__ import annotations

import io
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reslab.errors import CheckpointError
from reslab.files import TEMPORARY_GLOB, atomic_write, write_all, write_error
from reslab.weights.files import load_checkpoint

__all__ = [
    "CheckpointError",
    "atomic_save",
    "atomic_write",
    "latest_checkpoint",
    "load_checkpoint",
    "write_all",
    "write_error",
]

CHECKPOINT_RE = re.compile(r"ckpt_(\d+)\.pt$")


def rng_state() -> dict[str, Any]:
    """RNG states of python, numpy, torch (and CUDA) as plain data (loadable with weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(x: Any) -> Any:
    return tuple(_as_tuples(v) for v in x) if isinstance(x, list | tuple) else x


def own_storage(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every tensor that views part of a larger storage (a stacked run's, see
    :mod:`reslab.engine.stacked`) copied: ``torch.save`` writes a view's whole storage."""
    return {
        k: v.clone() if v.untyped_storage().nbytes() > v.numel() * v.element_size() else v
        for k, v in state.items()
    }


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_write` (serialised in memory first,
    so that a write error is the operating system's own)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write(path, buffer.getbuffer())


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Periodic checkpoints ``ckpt_<iteration>.pt`` in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m[1]), p) for p in directory.iterdir() if (m := CHECKPOINT_RE.search(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> tuple[dict[str, Any], Path] | None:
    """The newest readable periodic checkpoint in ``directory`` and its path, or None.

    A newest file that cannot be read (truncated by a crash outside reslab's atomic writes, or
    damaged on disk) is skipped with a warning naming it, and the previous one is used; a file that
    would run code is never skipped silently: it stops the run."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return load_checkpoint(path), path
        except CheckpointError as err:
            if str(err).startswith("refusing"):
                raise
            warnings.warn(f"{err}; resuming from the previous checkpoint", stacklevel=2)
    return None


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` periodic checkpoints."""
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)


def remove_temporaries(directory: str | Path) -> list[Path]:
    """Delete the temporary files that a process killed while writing left in ``directory``
    (call it only while holding the run's lock, so that no writer is active)."""
    directory = Path(directory)
    stale = sorted(directory.glob(TEMPORARY_GLOB)) if directory.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
