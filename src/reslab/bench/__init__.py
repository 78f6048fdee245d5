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
    kind: str, out: str | Path, command: str, note: str = "", **options: Any
) -> tuple[list[dict[str, Any]], Path, str]:
    """Run the ``kind`` benchmark and record it under ``out``; returns (rows, record path, the
    kind recorded: ``train`` with ``concurrent`` N values is ``train-concurrent``).
    ``options`` are the keyword arguments of that kind's ``run``: :func:`reslab.bench.data.run`,
    :func:`reslab.bench.infer.run`, :func:`reslab.bench.concurrent.run` (``train`` with
    ``concurrent``) or :func:`reslab.bench.train.run`; the record names their ``device`` (the CPU
    without one)."""
    import torch

    from reslab.engine.runtime import code_version, describe_device

    device = options.get("device", "cpu")
    if kind == "data":
        from reslab.bench.data import run
    elif kind == "infer":
        from reslab.bench.infer import run
    elif options.get("concurrent"):  # packed runs against one alone
        from reslab.bench.concurrent import run

        kind = "train-concurrent"
    else:
        from reslab.bench.train import run
    rows = run(**options)
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
    if kind == "train-concurrent":
        from reslab.bench.concurrent import choice

        record["choice"] = choice(rows)
    path = Path(out) / f"{now:%Y-%m-%d}-{device}-{kind}.json"
    for n in range(2, 1000):  # a record of the same day is kept: this one gets the next number
        if not path.exists():
            break
        path = path.with_name(f"{now:%Y-%m-%d}-{device}-{kind}-{n}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return rows, path, kind


def _ratio(r: dict[str, Any], key: str, base: str) -> str:
    return f"{r[key] / r[base]:.2f}x" if r.get(base) else "-"


# kind -> columns: (header, width, the cell of a row)
COLUMNS: dict[str, list[tuple[str, int, Any]]] = {
    "data": [
        ("benchmark", -24, lambda r: r["name"]),
        ("images/s", 10, lambda r: f"{r['images_per_s']:.0f}"),
        ("baseline", 10, lambda r: f"{r.get('baseline_images_per_s') or 0:.0f}"),
        ("ratio", 6, lambda r: _ratio(r, "images_per_s", "baseline_images_per_s")),
    ],
    "train": [
        ("model", -10, lambda r: r["model"]),
        ("train img/s", 11, lambda r: f"{r['images_per_s']:.0f}"),
        ("baseline", 9, lambda r: f"{r['baseline_images_per_s']:.0f}"),
        ("ratio", 6, lambda r: f"{r['speedup']:.2f}x"),
        (
            "paper schedule",
            15,
            lambda r: f"{r['paper_schedule_s'] / 3600:.2f} h" if "paper_schedule_s" in r else "-",
        ),
        ("infer img/s", 12, lambda r: f"{r['inference_images_per_s']:.0f}"),
        ("baseline", 9, lambda r: f"{r['baseline_inference_images_per_s']:.0f}"),
    ],
    "train-concurrent": [
        ("model", -10, lambda r: r["model"]),
        ("mode", -10, lambda r: r["mode"]),
        ("N", 3, lambda r: str(r["concurrent"])),
        ("threads/run", 11, lambda r: str(r["threads_per_run"])),
        ("aggregate img/s", 16, lambda r: f"{r['aggregate_images_per_s']:.0f}"),
        ("alone", 8, lambda r: f"{r['alone_images_per_s']:.0f}"),
        ("ratio", 6, lambda r: f"{r['ratio']:.2f}x"),
    ],
    "infer": [
        ("model", -10, lambda r: r["model"]),
        ("batch", 5, lambda r: str(r["batch_size"])),
        ("torch fp32", 11, lambda r: f"{r['torch_eager_fp32_images_per_s']:.0f}"),
        ("torch bf16", 11, lambda r: f"{r['torch_bf16_channels_last_images_per_s']:.0f}"),
        ("ratio", 6, lambda r: f"{r['bf16_ratio']:.2f}x"),
        ("onnxruntime", 12, lambda r: f"{r['onnxruntime_fp32_images_per_s']:.0f}"),
        ("ratio", 6, lambda r: f"{r['onnxruntime_ratio']:.2f}x"),
    ],
}


def table(kind: str, rows: list[dict[str, Any]]) -> str:
    """The rows of a ``kind`` benchmark as a text table (images/s; ratios to the baseline)."""
    columns = COLUMNS[kind]

    def line(cells: list[str]) -> str:
        return " ".join(f"{c:<{-w}}" if w < 0 else f"{c:>{w}}" for c, (_, w, _) in zip(cells, columns, strict=True))  # fmt: skip

    lines = [line([h for h, _, _ in columns]), *(line([cell(r) for _, _, cell in columns]) for r in rows)]  # fmt: skip
    if kind == "train-concurrent":
        from reslab.bench.concurrent import choice

        lines += [f"choice for {model}: {what}" for model, what in choice(rows).items()]
    return "\n".join(lines)
