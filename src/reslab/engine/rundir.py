"""A run directory: one writer at a time, and the rules for resuming or starting it over.

    uv run reslab train cifar10/resnet20 --out runs/r20             # starts, or resumes runs/r20
    uv run reslab train cifar10/resnet20 --out runs/r20 --restart   # deletes its outputs first

A run directory (of ``reslab train`` or ``reslab detect train``) belongs to one config: the same
command resumes it (from the newest readable
checkpoint), and a command with another config is refused with the differing keys named. While a
process trains in it, it holds ``<run>/.lock`` (an ``flock``, which the kernel drops when the
process ends, however it ends, so a crash never leaves it stuck), and a second process is
refused. The file is removed when the run ends.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from reslab.config import RunConfig, build_dataclass, config_diff
from reslab.engine.checkpoint import latest_checkpoint, load_checkpoint
from reslab.errors import RunError

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
    data-parallel job other than 0 write nothing)."""

    def __init__(self, run_dir: str | Path, enabled: bool = True) -> None:
        self.path, self.enabled = Path(run_dir) / ".lock", enabled
        self._file = None

    def __enter__(self) -> RunLock:
        if not self.enabled:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            file = open(self.path, "a+")
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                file.seek(0)
                holder = file.read().strip() or "unknown"
                file.close()
                raise RunError(
                    f"{self.path.parent} is in use by another reslab process (pid {holder}); wait "
                    "for it to finish or stop it, or give this run another --out"
                ) from None
            try:  # the holder before us may have deleted the file between our open and flock
                same = os.stat(self.path).st_ino == os.fstat(file.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            file.close()
        file.truncate(0)
        file.write(str(os.getpid()))
        file.flush()
        self._file = file
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._file is not None:
            self.path.unlink(missing_ok=True)  # while still holding it (see __enter__)
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def start_over(run_dir: Path) -> None:
    """Delete everything a run wrote into ``run_dir`` (``--restart``)."""
    for name in OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


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
        check_same_config(found[0]["config"], cfg, run_dir)
    return found


def finished_summary(cfg: RunConfig, run_dir: Path) -> dict[str, Any] | None:
    """The summary of a finished run of ``cfg`` in ``run_dir``, or None when it has not finished."""
    summary_path, final = run_dir / "summary.json", run_dir / "checkpoints" / "final.pt"
    if not (summary_path.is_file() and final.is_file()):
        return None
    summary = json.loads(summary_path.read_text())
    if summary.get("status") != "finished":
        return None
    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        saved = yaml.safe_load(config_path.read_text())
    else:
        saved = load_checkpoint(final)["config"]
    check_same_config(saved, cfg, run_dir)
    return summary
