"""Where and how a run executes: device, precision, code version, CPU settings.

uv run python -c "from reslab.engine.runtime import describe_device; print(describe_device('cpu'))"
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

import reslab
from reslab.errors import ConfigError
from reslab.processes import cpu_ticks, machine_ticks, process_tree


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "device 'cuda' requested but no CUDA device is available; use --device cpu"
        )
    return torch.device(name)


def describe_device(device: torch.device | str) -> str:
    """A human-readable description of the hardware, stored with every result."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"CPU {cpu} ({torch.get_num_threads()} threads)"


@functools.cache
def code_version() -> str:
    """``git describe`` of the checkout reslab runs from (``-dirty`` when modified), else the version.

    Read once per process, at the first call: a long process (``reslab reproduce`` training several
    nets one after the other) keeps running the code it loaded while the checkout moves on."""
    root = Path(reslab.__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"reslab-{reslab.__version__}"


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles), by PyTorch's own check."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(setting: str, device: torch.device) -> tuple[str, str]:
    """(precision, why) of ``train.precision``: "bf16" and "fp32" as given; "auto" is bf16 on
    CUDA and on CPUs with native bf16, fp32 on other CPUs, where PyTorch's bf16 kernels emulate
    it and run slower than fp32 (3x slower ResNet-20 steps on an AVX-512 Xeon without
    AVX512-BF16, 2026-11-29; pytorch/pytorch#118499)."""
    if setting != "auto":
        return setting, "train.precision"
    if device.type == "cuda":
        return "bf16", "auto: CUDA"
    if native_bf16():
        return "bf16", "auto: this CPU has native bf16 (AVX512-BF16 or AMX)"
    return "fp32", "auto: this CPU has no native bf16 (no AVX512-BF16, no AMX)"


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` ("bf16" or "fp32") on ``device``."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def compile_mode(compile: bool | str, mode: str, device: torch.device) -> str | None:
    """The ``torch.compile`` mode a run uses, or None for eager.

    ``compile="auto"`` compiles on CUDA only: there CUDA graphs remove the per-kernel launch cost
    that dominates these small networks, while on the 2-core CPU compiling measured no gain.
    ``mode="auto"`` is "reduce-overhead" (CUDA graphs) on CUDA and "default" elsewhere.
    """
    enabled = device.type == "cuda" if compile == "auto" else bool(compile)
    if not enabled:
        return None
    if mode == "auto":
        return "reduce-overhead" if device.type == "cuda" else "default"
    return mode


@contextlib.contextmanager
def cudnn_autotune(enabled: bool = True):
    """cuDNN autotuning within the context (training's input shapes are fixed, so the fastest
    kernels are found once); the process's setting is restored afterwards."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled or previous
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


class CoreShare:
    """This process's CPU threads (``train.threads``): a fixed number, or "auto": as many as the
    cores that other processes leave free, between 1 and the threads the process started with
    (``OMP_NUM_THREADS`` or the cores), re-sized at every logging window.

    Two trainings of two threads each on two cores run at 18% of their speed alone each (35% in
    all); of one thread each, 55% each (reslab's measurement of 2026-11-29, README). "auto" reads
    the other processes' CPU use over the last window from ``/proc`` (this process and its
    children, such as DataLoader workers, count as its own) and changes the thread count only
    when the free cores differ from it by 0.75 or more, so that noise does not flap it. A run's
    arithmetic depends on its thread count, so bit-for-bit reproducibility across runs needs a
    fixed ``train.threads`` (or a machine where nothing else runs); each change is logged."""

    def __init__(self, setting: int | str, device: Any) -> None:
        self.limit = torch.get_num_threads()
        if setting != "auto":
            torch.set_num_threads(int(setting))
        self.enabled = (
            setting == "auto"
            and torch.device(device).type == "cpu"
            and Path("/proc/stat").is_file()
        )
        self.cores, self.changes = os.cpu_count() or 1, 0
        self._last = self._sample() if self.enabled else (0, 0, 0)

    def _sample(self) -> tuple[int, int, int]:
        total, busy = machine_ticks()
        return total, busy, cpu_ticks(process_tree(os.getpid()))

    def other_cores(self) -> float:
        """Cores the other processes used since the last call (the window starts anew)."""
        now = self._sample()
        total, busy, own = (a - b for a, b in zip(now, self._last, strict=True))
        self._last = now
        if total <= 0:
            return 0.0
        return max(0.0, (busy - max(own, 0)) / total * self.cores)

    def adjust(self) -> dict[str, Any] | None:
        """Re-size the threads to the free cores; what changed (for the log), or None."""
        if not self.enabled:
            return None
        other = self.other_cores()
        free, current = self.cores - other, torch.get_num_threads()
        if abs(free - current) < 0.75:
            return None
        threads = min(self.limit, max(1, round(free)))
        if threads == current:
            return None
        torch.set_num_threads(threads)
        self.changes += 1
        return {"threads": threads, "other_cores": round(other, 2)}

    def restore(self) -> None:
        """Back to the threads the process had (the next run of a long process starts there)."""
        torch.set_num_threads(self.limit)
