"""Benchmarks behind ``reslab bench``: throughput measured side by side, reported as tables and JSON.

    RESLAB_DATA=../shared/data uv run reslab bench train --models resnet20 --steps 20

:func:`run_and_record` runs one kind (``data``: input pipelines; ``train``: training and inference
steps) and writes ``<out>/<date>-<device>-<kind>.json`` with the command, code version, hardware
and date beside the numbers; :func:`table` formats its rows for the terminal.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any


def run_and_record(
    kind: str, out: str | Path, command: str, note: str = "", options: dict[str, Any] | None = None
) -> tuple[list[dict[str, Any]], Path, str]:
    """Run the ``kind`` benchmark and record it under ``out``; returns (rows, record path, the
    kind recorded: ``train`` with ``concurrent`` N values is ``train-concurrent``).
    ``options`` may hold more than the keyword arguments of :func:`reslab.bench.data.run` or
    :func:`reslab.bench.train.run`: those are passed (unless None), the rest ignored."""
    import inspect

    import torch

    from reslab.engine.runtime import code_version, describe_device

    options = options or {}
    device = options.get("device") or "cpu"
    if kind == "data":
        from reslab.bench.data import run

        device = "cpu"
    elif kind == "infer":
        from reslab.bench.infer import run
    elif options.get("concurrent"):  # packed runs against one alone
        from reslab.bench.concurrent import run

        kind = "train-concurrent"
    else:
        from reslab.bench.train import run
    accepted = inspect.signature(run).parameters
    rows = run(**{k: v for k, v in options.items() if k in accepted and v is not None})
    now = dt.datetime.now(dt.UTC)
    record = {
        "kind": kind,
        "device": describe_device(device),
        "command": command,
        "code_version": code_version(),
        "torch_version": torch.__version__,
        "date": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "note": note,
        "results": rows,
    }
    path = Path(out) / f"{now:%Y-%m-%d}-{device}-{kind}.json"
    for n in range(2, 1000):  # a record of the same day is kept: this one gets the next number
        if not path.exists():
            break
        path = path.with_name(f"{now:%Y-%m-%d}-{device}-{kind}-{n}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return rows, path, kind


def table(kind: str, rows: list[dict[str, Any]]) -> str:
    """The rows of a ``kind`` benchmark as a text table, each against its baseline."""
    if kind == "infer":
        lines = [f"{'model':<10} {'batch':>5} {'torch fp32':>11} {'torch bf16':>11} {'onnxruntime':>12}  (images/s; ratios to torch fp32)"]  # fmt: skip
        for r in rows:
            lines.append(
                f"{r['model']:<10} {r['batch_size']:>5} {r['torch_eager_fp32_images_per_s']:>11.0f} "
                f"{r['torch_bf16_channels_last_images_per_s']:>11.0f} {r['onnxruntime_fp32_images_per_s']:>12.0f}"
                f"  (bf16 {r['bf16_ratio']:.2f}x, onnxruntime {r['onnxruntime_ratio']:.2f}x)"
            )
        return "\n".join(lines)
    if kind == "train-concurrent":
        lines = [f"{'model':<10} {'mode':<10} {'N':>3} {'threads/run':>11} {'aggregate img/s':>16} {'alone':>8} {'ratio':>6}"]  # fmt: skip
        for r in rows:
            lines.append(
                f"{r['model']:<10} {r['mode']:<10} {r['concurrent']:>3} {r['threads_per_run']:>11} "
                f"{r['aggregate_images_per_s']:>16.0f} {r['alone_images_per_s']:>8.0f} {r['ratio']:>5.2f}x"
            )
        return "\n".join(lines)
    if kind == "data":
        lines = [f"{'benchmark':<24} {'images/s':>10} {'baseline':>10} {'ratio':>6}"]
        for r in rows:
            base = r.get("baseline_images_per_s")
            ratio = f"{r['images_per_s'] / base:.2f}x" if base else "-"
            lines.append(
                f"{r['name']:<24} {r['images_per_s']:>10.0f} {base or 0:>10.0f} {ratio:>6}"
            )
        return "\n".join(lines)
    lines = [
        f"{'model':<10} {'train img/s':>11} {'baseline':>9} {'ratio':>6} {'paper schedule':>15} "
        f"{'infer img/s':>12} {'baseline':>9}"
    ]
    for r in rows:
        sched = f"{r['paper_schedule_s'] / 3600:.2f} h" if "paper_schedule_s" in r else "-"
        lines.append(
            f"{r['model']:<10} {r['images_per_s']:>11.0f} {r['baseline_images_per_s']:>9.0f} "
            f"{r['speedup']:>5.2f}x {sched:>15} {r['inference_images_per_s']:>12.0f} "
            f"{r['baseline_inference_images_per_s']:>9.0f}"
        )
    return "\n".join(lines)
