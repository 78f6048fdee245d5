"""A run directory: one writer at a time, and the rules for resuming or starting it over.

    uv run reslab train cifar10/resnet20 --out runs/r20             # starts, or resumes runs/r20
    uv run reslab train cifar10/resnet20 --out runs/r20 --restart   # deletes its outputs first

A run directory (of ``reslab train`` or ``reslab detect train``) belongs to one config: the same
command resumes it (from the newest readable
checkpoint), and a command with another config is refused with the differing keys named. While a
process trains in it, it holds ``<run>/.lock`` (an ``flock``, which the kernel drops when the
process ends, however it ends, so a crash never leaves it stuck), and a second process is
refused. The file is removed when the run ends. No file of a run is written through a symbolic
link (a linked ``.lock`` or ``metrics.jsonl`` is refused, the others are replaced), and a damaged
``summary.json``, ``config.yaml`` or ``metrics.jsonl`` is one line naming it and the fix.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from reslab.config import RunConfig, build_dataclass, config_diff
from reslab.engine.checkpoint import latest_checkpoint, load_checkpoint, write_all, write_error
from reslab.engine.logging import read_json
from reslab.errors import CheckpointError, DataError, RunError

# what reslab writes into a run directory (``--restart`` deletes these)
OUTPUTS = (
    "checkpoints",
    "tensorboard",
    "metrics.jsonl",
    "summary.json",
    "model.safetensors",
    "config.yaml",
    "pixel_mean.safetensors",
    "map.png",
)


class RunLock:
    """Exclusive use of ``run_dir`` by this process (a no-op when not ``enabled``: the ranks of a
    data-parallel job other than 0 write nothing). It creates ``run_dir``; a path that cannot be a
    folder (an existing file, a name too long) and a ``.lock`` that is a symbolic link are refused
    in one line."""

    def __init__(self, run_dir: str | Path, enabled: bool = True) -> None:
        self.path, self.enabled = Path(run_dir) / ".lock", enabled
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        if not self.enabled:
            return self
        _make_folder(self.path.parent)
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunError(
                    f"{self.path.parent} is in use by another reslab process (pid {holder}); wait "
                    "for it to finish or stop it, or give this run another --out"
                ) from None
            try:  # the holder before us may have deleted the file between our open and flock
                now, held = os.stat(self.path, follow_symlinks=False), os.fstat(fd)
                same = (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            write_all(fd, str(os.getpid()).encode())
        except OSError as err:
            self.__exit__()
            raise write_error(self.path, err) from None
        return self

    def _open(self) -> int:
        """The lock file, created if need be, never through a symbolic link."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(self.path, flags, 0o644)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.EISDIR):
                what = "a symbolic link" if err.errno == errno.ELOOP else "a folder"
                raise RunError(
                    f"{self.path} is {what}, not reslab's lock file (reslab never writes a run's "
                    "files through a link): delete it and run the same command again"
                ) from None
            raise write_error(self.path, err) from None

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # while still holding it (see __enter__)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _make_folder(run_dir: Path) -> None:
    """Create ``run_dir`` (and its parents), or a :class:`RunError` naming it and the fix."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        why = {
            errno.EEXIST: "it is a file, not a folder; give --out a folder (a new or an existing one)",
            errno.ENOTDIR: "part of its path is a file, not a folder; give --out a folder path",
            errno.ENAMETOOLONG: "a name in it is too long for the file system; give a shorter --out",
            errno.ELOOP: "its path has a loop of symbolic links; give another --out",
        }.get(err.errno, f"{os.strerror(err.errno)}; give another --out (or fix that place)")
        raise RunError(f"cannot use {run_dir} as a run folder: {why}") from None


def start_over(run_dir: Path) -> None:
    """Delete everything a run wrote into ``run_dir`` (``--restart``); a symbolic link among them
    is removed, never followed."""
    for name in OUTPUTS:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


# what to do about a damaged file of a run folder
FIX = "delete it or start over with --restart"


def check_same_config(saved: dict[str, Any], cfg: RunConfig, run_dir: Path) -> None:
    """Refuse to continue a run of ``saved`` config with ``cfg`` (a classification or a detection
    config), naming the keys that differ."""
    diff = config_diff(build_dataclass(type(cfg), saved), cfg)
    if diff:
        raise RunError(
            f"{run_dir} holds a run of a different config ({'; '.join(diff)}); run it with its own "
            "settings to resume it, add --restart to start it over with these, or give another --out"
        )


def resume_point(cfg: RunConfig, run_dir: Path) -> tuple[dict[str, Any], Path] | None:
    """The checkpoint a run of ``cfg`` resumes from (and its path), None for a fresh start."""
    found = latest_checkpoint(run_dir / "checkpoints")
    if found is not None:
        ckpt, path = found
        if not (isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict)):
            raise CheckpointError(f"{path} is not a reslab checkpoint (it has no config); {FIX}")
        check_same_config(ckpt["config"], cfg, run_dir)
    return found


def finished_summary(cfg: RunConfig, run_dir: Path) -> dict[str, Any] | None:
    """The summary of a finished run of ``cfg`` in ``run_dir``, or None when it has not finished.
    A damaged ``summary.json`` or ``config.yaml`` is an error naming it."""
    summary_path, final = run_dir / "summary.json", run_dir / "checkpoints" / "final.pt"
    if not (summary_path.is_file() and final.is_file()):
        return None
    summary = read_json(summary_path, FIX)
    if summary.get("status") != "finished":
        return None
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        check_same_config(load_checkpoint(final)["config"], cfg, run_dir)
        return summary
    try:
        saved = yaml.safe_load(config_path.read_bytes())
        check_same_config(saved, cfg, run_dir)
    except (OSError, ValueError, RecursionError, yaml.YAMLError) as err:  # ConfigError too
        why = (str(err).splitlines() or [type(err).__name__])[0]
        raise DataError(f"cannot read {config_path} ({why}): it is damaged; {FIX}") from None
    return summary
