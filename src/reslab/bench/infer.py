"""CPU inference throughput: torch eager, torch with bf16 autocast, and onnxruntime, side by side.

    uv run reslab bench infer --models resnet20 resnet56

Each runtime runs the same network (He-initialised: the weights do not change the speed) on the
same normalised float input, at batch 1 (latency) and batch 256 (throughput), in one process one
after the other; the ratios are against torch eager fp32 measured in the same call. onnxruntime runs
the network exported by ``reslab export --bare`` (fp32, its CPU execution provider).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from reslab.errors import require_extra


def _rate(fn, batch: int, seconds: float = 2.0) -> float:
    """Images/s of ``fn`` (one batch per call), timed over at least ``seconds`` after a warm-up."""
    fn()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or calls < 3:
        fn()
        calls += 1
    return calls * batch / elapsed


def _row(name: str, model, fast, session, batch: int) -> dict[str, Any]:
    x = torch.randn(batch, *model.default_input_size)
    x_last, x_np = x.contiguous(memory_format=torch.channels_last), x.numpy()
    input_name = session.get_inputs()[0].name

    @torch.no_grad()
    def eager():
        model(x)

    @torch.no_grad()
    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast(x_last)

    eager_rate, bf16_rate = _rate(eager, batch), _rate(bf16, batch)
    ort_rate = _rate(lambda: session.run(None, {input_name: x_np}), batch)
    return {
        "model": name, "batch_size": batch, "torch_eager_fp32_images_per_s": eager_rate,
        "torch_bf16_channels_last_images_per_s": bf16_rate, "onnxruntime_fp32_images_per_s": ort_rate,
        "bf16_ratio": bf16_rate / eager_rate, "onnxruntime_ratio": ort_rate / eager_rate,
    }  # fmt: skip


def run(models: list[str], batches: tuple[int, ...] = (1, 256), **_: Any) -> list[dict[str, Any]]:
    """One row per model and batch size: images/s of each runtime and its ratio to torch eager."""
    from reslab.models import create_model

    ort = require_extra("onnxruntime", "export", "onnxruntime inference")
    rows = []
    for name in models:
        model = create_model(name).eval()
        size = model.default_input_size
        fast = create_model(name).eval().to(memory_format=torch.channels_last)
        fast.load_state_dict(model.state_dict())
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = Path(tmp) / f"{name}.onnx"
            batch_dim = torch.export.Dim("batch", min=1)
            with torch.no_grad():
                torch.onnx.export(model, (torch.zeros(2, *size),), str(onnx_path), dynamo=True, dynamic_shapes=({0: batch_dim},))  # fmt: skip
            session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
            rows += [_row(name, model, fast, session, batch) for batch in batches]
    return rows
