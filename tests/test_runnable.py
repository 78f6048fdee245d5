"""Runs that cannot work are refused before the first step: one line naming the key, exit 2, and
nothing left in the run directory."""

from __future__ import annotations

import shutil

import pytest

from reslab.cli import main
from reslab.config import ConfigError, load_config
from reslab.engine import fit
from reslab.engine import trainer as trainer_module
from reslab.engine.distributed import DistInfo
from reslab.errors import DataError, ModelError


@pytest.fixture
def folder(data_dir, tmp_path):
    """Ten Imagenette photographs in two classes (``data_dir`` of the run: ``tmp_path/data``)."""
    source = data_dir / "imagenette" / "train"
    if not source.is_dir():
        pytest.skip("imagenette/train not found")
    for cls in sorted(p.name for p in source.iterdir())[:2]:
        (tmp_path / "data" / "photos" / cls).mkdir(parents=True)
        for f in sorted((source / cls).iterdir())[:5]:
            shutil.copy(f, tmp_path / "data" / "photos" / cls / f.name)
    return tmp_path / "data"


def _finetune(folder, *extra):
    sets = [f"data.data_dir={folder}", "data.train_dir=photos", "data.eval_dir=photos",
            "train.init=null", "train.tensorboard=false", "train.iterations=2", *extra]  # fmt: skip
    return load_config("finetune/imagefolder", sets)


def _nothing_written(run_dir):
    return not run_dir.exists() or sorted(p.name for p in run_dir.iterdir()) == []


@pytest.mark.parametrize("in_memory", ["true", "false"])
def test_a_batch_of_one_on_1x1_maps_is_refused(folder, tmp_path, in_memory):
    """ResNet-18 at 32x32 crops ends in 1x1 maps: a batch of one image gives batch norm a single
    value per channel (torch's "Expected more than 1 value per channel", deep in the step)."""
    cfg = _finetune(folder, "data.crop=32", "data.scale=[32, 40]", "train.batch_size=1", f"data.in_memory={in_memory}")  # fmt: skip
    with pytest.raises(ConfigError, match=r"train.batch_size=1 .* 1x1 .* \(data.crop\)"):
        fit(cfg, tmp_path / "run", progress=False)
    assert _nothing_written(tmp_path / "run")
    assert fit(_finetune(folder, "data.crop=32", "data.scale=[32, 40]", "train.batch_size=2"), tmp_path / "ok", progress=False)["status"] == "finished"  # fmt: skip


@pytest.mark.parametrize("in_memory", ["true", "false"])
def test_fewer_images_than_one_batch(folder, tmp_path, in_memory):
    cfg = _finetune(folder, "train.batch_size=16", f"data.in_memory={in_memory}")
    with pytest.raises(DataError, match=r"has 10 training images, fewer than one batch \(train.batch_size=16\)"):  # fmt: skip
        fit(cfg, tmp_path / "run", progress=False)
    assert _nothing_written(tmp_path / "run")


def test_a_cifar_batch_larger_than_the_training_set(tiny_config, tmp_path, capsys):
    with pytest.raises(DataError, match=r"train.batch_size=100000 is more than the 45,000"):
        fit(tiny_config(**{"train.batch_size": 100000}), tmp_path / "run", progress=False)
    assert _nothing_written(tmp_path / "run")
    code = main(["train", "cifar10/resnet20", "--set", "train.batch_size=100000", "--out", str(tmp_path / "cli"), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "train.batch_size=100000" in err[0]


def test_a_global_batch_that_does_not_split_over_the_processes(tiny_config, tmp_path, monkeypatch):
    """Under torchrun with 3 processes a batch of 32 cannot be split evenly: refused at once."""
    import torch

    monkeypatch.setattr(
        trainer_module.distributed, "setup", lambda device: (DistInfo(0, 3, 0), torch.device("cpu"))
    )
    with pytest.raises(ConfigError, match=r"train.batch_size=32 .* over 3 processes; make it a multiple of 3"):  # fmt: skip
        fit(tiny_config(), tmp_path / "run", progress=False)
    assert _nothing_written(tmp_path / "run")


def test_too_few_outputs_for_the_classes(tiny_config, tmp_path):
    with pytest.raises(
        ConfigError, match=r"model.options.num_classes=5 but the data has 10 classes"
    ):
        fit(tiny_config(**{"model.options": "{num_classes: 5}"}), tmp_path / "run", progress=False)
    assert _nothing_written(tmp_path / "run")


def test_an_invalid_model_option_leaves_no_config_behind(tiny_config, tmp_path):
    with pytest.raises(ModelError):
        fit(tiny_config(**{"model.options": "{shortcut: D}"}), tmp_path / "run", progress=False)
    assert _nothing_written(tmp_path / "run")
