"""The ImageNet recipe's machinery on real photographs: train, 10-crop test, eval and predict."""

from __future__ import annotations

import json

import pytest

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
        "data.in_memory=false",  # decodes 4 batches of files, not the 9,469 photographs
    ]
    cfg = load_config("imagenette/resnet18", overrides)
    summary = fit(cfg, tmp_path / "run", progress=False)
    assert summary["status"] == "finished" and summary["test_views"] == "tencrop"
    final = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r.get("test_views")]
    assert final and final[-1]["test_error"] == summary["test_error"]

    def evaluate(*flags: str) -> dict:
        run_eval = ["eval", str(tmp_path / "run"), "--data-dir", str(data_dir), *flags]
        assert main(run_eval) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    evaluated = evaluate("--tencrop", "--limit", "10")
    assert evaluated["images"] == 10 and abs(evaluated["test_error"] - summary["test_error"]) < 0.05
    assert evaluate("--multiscale", "--limit", "3")["images"] == 3

    folder = data_dir / "imagenette" / "val" / "n03888257"
    assert (
        main(["predict", str(tmp_path / "run"), str(sorted(folder.iterdir())[0]), "--topk", "3"])
        == 0
    )
    line = capsys.readouterr().out.strip()
    assert line.count("%") == 3 and "n0" in line  # synset names of the training folders


@pytest.mark.parametrize("in_memory", ["true", "false"])
def test_training_skips_corrupt_images_when_asked(data_dir, tmp_path, in_memory):
    """``data.skip_corrupt=true`` leaves an undecodable image out of training and lists it; the
    default stops with the file's name (held in memory, or read by DataLoader workers)."""
    import shutil

    import pytest

    source = data_dir / "imagenette" / "val"
    if not source.is_dir():
        pytest.skip("imagenette not found")
    root = tmp_path / "data"
    for cls in sorted(p.name for p in source.iterdir())[:2]:
        (root / "folder" / cls).mkdir(parents=True)
        for f in sorted((source / cls).iterdir())[:4]:
            shutil.copy(f, root / "folder" / cls / f.name)
    victim = sorted((root / "folder").rglob("*.JPEG"))[1]
    victim.write_bytes(b"")
    overrides = [
        f"data.data_dir={root}", "data.train_dir=folder", "data.eval_dir=folder",
        "train.iterations=2", "train.batch_size=4", "train.log_every=1", "train.eval_every=0",
        f"data.in_memory={in_memory}",
        "data.normalization=channel", "data.scale=[64, 64]", "data.crop=64",
        "data.test_views=center", "optim.milestones=[1]", "model.options={num_classes: 2}",
        "data.workers=0", "train.tensorboard=false",
    ]  # fmt: skip
    from reslab.errors import DataError

    with pytest.raises(DataError, match=victim.name):
        fit(load_config("imagenette/resnet18", overrides), tmp_path / "strict", progress=False)
    cfg = load_config("imagenette/resnet18", [*overrides, "data.skip_corrupt=true"])
    summary = fit(cfg, tmp_path / "lenient", progress=False)
    assert summary["status"] == "finished" and str(victim) in summary["skipped_images"]
