"""The benchmarks run end to end on tiny settings and report what their JSON promises."""

from __future__ import annotations

import json

from reslab.bench import train as train_bench
from reslab.cli import main


def test_train_bench_rows():
    rows = train_bench.run(["resnet8"], data_dir="/nonexistent", steps=2, batch=32)
    (row,) = rows
    assert row["data"] == "synthetic"
    for key in (
        "images_per_s",
        "baseline_images_per_s",
        "paper_schedule_s",
        "inference_images_per_s",
    ):
        assert row[key] > 0
    assert row["compile"] == "off"  # the CPU default is eager (compiling measured no gain there)
    assert row["precision"] in ("bf16", "fp32")  # the engine's own choice for this CPU


def test_train_bench_ratios_and_projection_from_known_speeds(monkeypatch):
    """With the measurements replaced by known speeds, the row's ratio and the paper-schedule
    projection (64,000 steps of 128 images) are what they must be."""
    monkeypatch.setattr(train_bench, "reslab_cifar_train", lambda *a, **k: 320.0)
    monkeypatch.setattr(train_bench, "baseline_cifar_train", lambda *a, **k: 80.0)
    monkeypatch.setattr(train_bench, "inference", lambda *a, **k: 1000.0)
    (row,) = train_bench.run(["resnet8"], data_dir="/nonexistent", steps=2, batch=32)
    assert row["speedup"] == 4.0 and row["paper_schedule_s"] == 25_600.0
    assert row["baseline_paper_schedule_s"] == 102_400.0


def test_bench_data_writes_json(data_dir, tmp_path, capsys):
    assert main(["bench", "data", "--data-dir", str(data_dir), "--out", str(tmp_path)]) == 0
    (record,) = [json.loads(p.read_text()) for p in tmp_path.glob("*-cpu-data.json")]
    names = [r["name"] for r in record["results"]]
    assert names == [
        "cifar_augmentation",
        "jpeg_train_scale_aug",
        "jpeg_eval_center_crop",
        "imagenette64_train_views",
    ]
    assert record["command"].startswith("reslab bench data") and record["code_version"]
    assert all(r["images_per_s"] > 0 for r in record["results"])


def test_packing_choice_needs_a_clear_gain():
    """The bench names the packing a measurement supports: the best (mode, N) only when it beats
    one run alone by the records' spread."""
    from reslab.bench.concurrent import choice

    def row(model, mode, n, ratio):
        return {"model": model, "mode": mode, "concurrent": n, "ratio": ratio}

    rows = [row("a", "processes", 1, 1.0), row("a", "processes", 2, 1.23), row("a", "stacked", 4, 1.04),
            row("b", "processes", 1, 1.0), row("b", "processes", 2, 1.04)]  # fmt: skip
    chosen = choice(rows)
    assert chosen["a"] == "processes x2 (1.23x one run alone)"
    assert chosen["b"].startswith("one run at a time (best packing 1.04x")
