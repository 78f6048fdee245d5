"""Machine-readable logs: one JSON object per line in ``metrics.jsonl``; plots read these.

uv run python -c "from reslab.engine.logging import read_jsonl; help(read_jsonl)"

The log is appended to, never through a symbolic link (a link in its place is refused); a write
that fails (a full disk, a file size limit) leaves it as it was and names it. A damaged log, or a
damaged JSON file of a run (:func:`read_json`), is an error naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
from pathlib import Path
from typing import Any

from reslab.errors import DataError, MissingFileError, RunError

# what to do about a damaged log of a run folder
LOG_FIX = "delete it (the run keeps its checkpoints) or start over with --restart"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _open_log(path: Path) -> int:
    """``path`` opened for appending, never through a symbolic link; a torn last line (a crash
    while appending) is dropped, so that the next record starts a line of its own."""
    from reslab.engine.checkpoint import write_error

    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EISDIR):
            what = "a symbolic link" if err.errno == errno.ELOOP else "a folder"
            raise RunError(
                f"{path} is {what}; reslab writes its log only into a plain file (never through "
                "a link): delete it (or start over with --restart) and run the same command again"
            ) from None
        raise write_error(path, err) from None
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        os.ftruncate(fd, os.pread(fd, size, 0).rfind(b"\n") + 1)
    return fd


class JsonlLogger:
    """Appends records to a JSONL file (one write per line, so a crash loses nothing written), and
    mirrors numeric fields to TensorBoard event files in ``tensorboard_dir`` when given."""

    def __init__(
        self, path: str | Path, enabled: bool = True, tensorboard_dir: str | Path | None = None
    ) -> None:
        self.path, self.enabled = Path(path), enabled
        self._fd = _open_log(self.path) if enabled else None
        self._tb = None
        if enabled and tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(tensorboard_dir))

    def log(self, **record: Any) -> None:
        if self._fd is None:
            return
        self._append((json.dumps({k: _clean(v) for k, v in record.items()}) + "\n").encode())
        if self._tb is not None and "iteration" in record:
            step = record["iteration"]
            for key, value in record.items():
                if (
                    key not in ("iteration", "epoch")
                    and isinstance(value, int | float)
                    and not isinstance(value, bool)
                ):
                    self._tb.add_scalar(key, value, step)

    def _append(self, line: bytes) -> None:
        """Append ``line``; a failed write is undone (no torn line, no empty log) and named."""
        from reslab.engine.checkpoint import write_all, write_error

        end = os.fstat(self._fd).st_size
        try:
            write_all(self._fd, line)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, end)
                ours = os.fstat(self._fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
                if end == 0 and ours:
                    self.path.unlink()  # an empty log is no log: as it was before the run
            raise write_error(self.path, err) from None

    def truncate_after(self, iteration: int) -> None:
        """Drop records past ``iteration`` (written after the checkpoint a resume starts from);
        a negative ``iteration`` (a fresh start) empties the log."""
        if self._fd is None:
            return
        if iteration < 0:
            os.ftruncate(self._fd, 0)
            return
        from reslab.engine.checkpoint import atomic_write

        try:
            kept = [
                r for r in read_jsonl(self.path, LOG_FIX) if _iteration(r, self.path) <= iteration
            ]
            os.close(self._fd)
            self._fd = None
            atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
            self._fd = _open_log(self.path)
        except BaseException:
            self.close()  # the run stops here: nothing stays open
            raise

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _iteration(record: dict[str, Any], path: Path) -> int:
    it = record.get("iteration", 0)
    if not isinstance(it, int) or isinstance(it, bool):
        raise DataError(f"{path} has a record whose iteration is {it!r} (damaged); {LOG_FIX}")
    return it


def finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def json_bytes(record: dict[str, Any]) -> bytes:
    """``record`` as indented, strictly valid JSON (non-finite numbers become null)."""
    return (json.dumps(finite(record), indent=2, allow_nan=False) + "\n").encode()


def _first_line(err: Exception) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0]


def read_json(path: str | Path, fix: str) -> dict[str, Any]:
    """The JSON object in ``path``; a file that is not one (truncated, junk, unreadable) is a
    :class:`DataError` naming it and ``fix`` (what the user should do about it)."""
    path = Path(path)
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as err:  # ValueError: bad JSON or encoding
        raise DataError(f"cannot read {path} ({_first_line(err)}): it is damaged; {fix}") from None
    if not isinstance(value, dict):
        raise DataError(
            f"{path} holds a JSON {type(value).__name__}, not an object: it is damaged; {fix}"
        )
    return value


def read_jsonl(
    path: str | Path,
    fix: str = "restore it or delete it (in a run folder: or start the run over with --restart)",
) -> list[dict[str, Any]]:
    """All records of a JSONL file. A torn last line (a crash while appending) is ignored; any
    other line that is not a JSON object is a :class:`DataError` naming the file, the line and
    ``fix``."""
    path = Path(path)
    try:
        lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        raise MissingFileError(f"{path} does not exist") from None
    except OSError as err:
        raise DataError(f"cannot read {path} ({_first_line(err)}); {fix}") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif number < len(lines):  # the text after the last newline is a torn line
            raise DataError(f"{path}, line {number}, is not a JSON record: it is damaged; {fix}")
    return records
