"""Where and how a run executes: device, precision, code version, CPU settings.

uv run python -c "from reslab.engine.runtime import describe_device; print(describe_device('cpu'))"
"""

from __future__ import annotations

import contextlib
import functools
import platform
import subprocess
from pathlib import Path

import torch

import reslab
from reslab.errors import ConfigError


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
