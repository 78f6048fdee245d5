"""Writing files so that a crash, a full disk or a link in the way never leaves a half-written one.

    uv run python -c "from reslab.files import atomic_write; print(atomic_write('/tmp/reslab-demo.txt', b'hello'))"

Every file reslab writes goes to a temporary file in the same directory and is renamed over its
target, so a crash never leaves a half-written file behind under the real name, and a symbolic link
in its place is replaced, never written through; a full disk or a file size limit is an error
naming the file. Plain Python (no torch), so that every layer of reslab can write through it.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from reslab.errors import RunError

__all__ = ["TEMPORARY_GLOB", "atomic_write", "write_all", "write_error"]

TEMPORARY_GLOB = ".*.tmp"  # what atomic_write leaves while it writes


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
