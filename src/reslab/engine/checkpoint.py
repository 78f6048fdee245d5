"""Complete, atomic checkpoints that load without executing code from the file.

    uv run python -c "from reslab.engine.checkpoint import latest_checkpoint; help(latest_checkpoint)"

A checkpoint holds the model, optimiser and schedule states, the step counters, the RNG states of
torch/numpy/python (and CUDA), the config and the code version. Every file reslab writes goes to a
temporary file in the same directory and is renamed over its target, so a crash never leaves a
half-written file behind under the real name, and a symbolic link in its place is replaced, never
written through; a full disk or a file size limit is an error naming the file.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import random
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reslab.errors import CheckpointError, MissingFileError, RunError

__all__ = [
    "CheckpointError",
    "atomic_save",
    "atomic_write",
    "latest_checkpoint",
    "load_checkpoint",
    "write_error",
]

CHECKPOINT_RE = re.compile(r"ckpt_(\d+)\.pt$")
TEMPORARY_GLOB = ".*.tmp"  # what atomic_write leaves while it writes


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


def atomic_write(path: str | Path, data: bytes | memoryview) -> Path:
    """Write ``data`` to a temporary file beside ``path``, sync it, then rename it over ``path``.

    The rename replaces ``path`` itself: a symbolic link there is replaced, never written through.
    A full disk, a file size limit (``ulimit -f``), or a read-only or forbidden place leaves
    ``path`` as it was (no temporary file either) and raises :class:`RunError` naming the file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise write_error(path, err) from None
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as err:
        raise write_error(path, err) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until all of ``data`` is written (a write may take only part of it)."""
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view) :]


# what a user can fix about a failed write, by errno
_WRITE_FIXES = {
    errno.ENOSPC: "free space there and run the same command again",
    errno.EDQUOT: "free space there (a disk quota is full) and run the same command again",
    errno.EFBIG: "raise the file size limit (`ulimit -f unlimited`) and run the same command again",
    errno.EROFS: "it is on a read-only file system; write elsewhere (another --out)",
    errno.EACCES: "fix its folder's permissions (or write elsewhere) and run the same command again",
    errno.EPERM: "fix its folder's permissions (or write elsewhere) and run the same command again",
    errno.ENAMETOOLONG: "give it a shorter path (a shorter --out)",
}


def write_error(path: Path, err: OSError) -> Exception:
    """:class:`RunError` naming ``path`` and the fix for a write that failed with ``err`` (a full
    disk, a file size limit, a read-only or forbidden place); ``err`` itself otherwise."""
    fix = _WRITE_FIXES.get(err.errno)
    if fix is None:
        return err
    return RunError(
        f"cannot write {path}: {os.strerror(err.errno)}; {path} was left as it was. {fix[0].upper()}{fix[1:]}"
    )


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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: tensors and plain data only, never code."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} does not exist")
    if not (zipfile.is_zipfile(path) or _starts_like_a_pickle(path)):  # else: damaged, or junk
        raise CheckpointError(
            f"cannot read checkpoint {path} (truncated or corrupt: not the zip archive that "
            "torch.save writes, nor a pickle)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {path}: it holds objects other than tensors and plain data, and "
            f"loading it would run code from the file ({str(err).splitlines()[0]}). Only load "
            "checkpoints you trust; reslab writes plain-data checkpoints."
        ) from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as err:
        raise CheckpointError(
            f"cannot read checkpoint {path} (truncated or corrupt: {str(err).splitlines()[0]})"
        ) from None


def _starts_like_a_pickle(path: Path) -> bool:
    """Whether ``path`` begins with a pickle's protocol opcode (torch's legacy format does too)."""
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


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
