"""The ImageNet recipe's machinery on real photographs: train, 10-crop test, eval and predict."""

from __future__ import annotations

import json

from reslab.cli import main
from reslab.config import load_config
from reslab.engine import fit
from reslab.engine.logging import read_jsonl


def test_imagefolder_run_eval_and_predict(data_dir, tmp_path, capsys):
    if not (data_dir / "imagenette" / "val").is_dir():
        import pytest

        pytest.skip("imagenette not found")
    overrides = [
        f"data.data_dir={data_dir}",
        "train.iterations=2",
        "train.batch_size=4",
        "train.log_every=1",
        "train.eval_every=0",
        "train.tensorboard=false",
        "data.eval_limit=10",
        "data.normalization=channel",
        "data.scale=[96, 128]",
        "data.crop=96",
        "optim.milestones=[1]",
    ]
    cfg = load_config("imagenette/resnet18", overrides)
    summary = fit(cfg, tmp_path / "run", progress=False)
    assert summary["status"] == "finished" and summary["test_views"] == "tencrop"
    final = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r.get("test_views")]
    assert final and final[-1]["test_error"] == summary["test_error"]

    assert (
        main(
            [
                "eval",
                str(tmp_path / "run"),
                "--data-dir",
                str(data_dir),
                "--tencrop",
                "--limit",
                "10",
            ]
        )
        == 0
    )
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["images"] == 10 and abs(evaluated["test_error"] - summary["test_error"]) < 0.05
    assert (
        main(
            [
                "eval",
                str(tmp_path / "run"),
                "--data-dir",
                str(data_dir),
                "--multiscale",
                "--limit",
                "3",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["images"] == 3

    folder = data_dir / "imagenette" / "val" / "n03888257"
    assert (
        main(["predict", str(tmp_path / "run"), str(sorted(folder.iterdir())[0]), "--topk", "3"])
        == 0
    )
    line = capsys.readouterr().out.strip()
    assert line.count("%") == 3 and "n0" in line  # synset names of the training folders
