"""Fine-tuning: a run starts from trained weights (``--init``), with a new classifier where the
classes differ; and export: the trained net runs in onnxruntime as it runs in PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from reslab.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cifar_folder(data_dir, tmp_path_factory):
    """Two CIFAR-10 classes (cat, dog: the hardest pair) as an image folder of real test images:
    300 training and 200 validation images each."""
    from reslab.data.cifar import CLASSES, load_cifar10

    images, labels = load_cifar10(data_dir, "test")
    root = tmp_path_factory.mktemp("folder")
    for c in (3, 5):
        chosen = images[labels == c]
        for split, part in (("train", chosen[:300]), ("val", chosen[300:500])):
            (root / split / CLASSES[c]).mkdir(parents=True)
            for i, image in enumerate(part):
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / split / CLASSES[c] / f"{i}.png")  # fmt: skip
    return root


def _finetune(root, out, *extra):
    sets = ["train.iterations=40", "train.eval_every=0", "train.log_every=10", "data.workers=0",
            "train.checkpoint_every=40", "optim.milestones=[30]", "train.tensorboard=false", *extra]  # fmt: skip
    args = ["train", "finetune/cifar_folder", "--data-dir", str(root), "--out", str(out), "--no-progress"]  # fmt: skip
    return main([*args, *[a for s in sets for a in ("--set", s)]])


def test_fine_tuning_from_the_ledger_learns_faster_than_from_scratch(
    cifar_folder, tmp_path, capsys
):
    """The same 40 iterations on cat vs dog: from the ledger's ResNet-20 (via its name) against
    from scratch (He initialisation)."""
    assert _finetune(cifar_folder, tmp_path / "ft") == 0
    printed = capsys.readouterr().out
    assert "initialised from resnet20.cifar10_seed0: 114 tensors loaded, 2 new (fc.weight, fc.bias)" in printed  # fmt: skip
    assert _finetune(cifar_folder, tmp_path / "scratch", "train.init=null", "optim.lr=0.1") == 0
    ft = json.loads((tmp_path / "ft" / "summary.json").read_text())
    scratch = json.loads((tmp_path / "scratch" / "summary.json").read_text())
    assert ft["test_error"] < scratch["test_error"] - 10, (ft["test_error"], scratch["test_error"])
    events = [json.loads(x) for x in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "init" and events[0]["new"] == ["fc.weight", "fc.bias"]
    (tmp_path / "results.txt").write_text(f"{ft['test_error']} {scratch['test_error']}\n")


def test_freezing_keeps_the_frozen_tensors(cifar_folder, tmp_path):
    from reslab.engine.checkpoint import load_checkpoint
    from reslab.models.factory import load_weights

    sets = ["train.freeze_stages=2", "train.freeze_bn=true", "train.iterations=4",
            "train.checkpoint_every=4", "train.log_every=2"]  # fmt: skip
    assert _finetune(cifar_folder, tmp_path / "frozen", *sets) == 0
    start, _ = load_weights(REPO / "results" / "table6" / "resnet20-seed0")
    end = load_checkpoint(tmp_path / "frozen" / "checkpoints" / "final.pt")["model"]
    begin = start.state_dict()
    assert torch.equal(end["conv1.weight"], begin["conv1.weight"])  # the stem: frozen
    assert torch.equal(end["layer1.0.conv1.weight"], begin["layer1.0.conv1.weight"])  # layer1 too
    assert not torch.equal(end["layer2.0.conv1.weight"], begin["layer2.0.conv1.weight"])
    assert torch.equal(end["layer3.2.bn2.running_mean"], begin["layer3.2.bn2.running_mean"])


def test_a_mismatched_init_is_one_clear_line(cifar_folder, tmp_path, capsys):
    from reslab.models import create_model
    from reslab.models.factory import save_weights

    r20 = REPO / "results" / "table6" / "resnet20-seed0"
    assert _finetune(cifar_folder, tmp_path / "a", "model.name=resnet32", f"train.init={r20}") == 2
    err = capsys.readouterr().err  # the file records its layout: both are named
    assert "holds another network (" in err and "depth=20" in err and "depth=32" in err
    both = tmp_path / "both.safetensors"  # shapes agree, the recorded layout does not
    save_weights(create_model("resnet20", shortcut_pad="both"), both, "resnet20")
    assert _finetune(cifar_folder, tmp_path / "c", f"train.init={both}") == 2
    err = capsys.readouterr().err
    assert "holds another network (" in err and "shortcut_pad=both" in err and "shortcut_pad=after" in err  # fmt: skip
    assert _finetune(cifar_folder, tmp_path / "b", "train.init=nowhere/weights.pt") == 2
    assert "train.init: nowhere/weights.pt is neither" in capsys.readouterr().err


def test_resnet18_fine_tunes_from_a_torchvision_layout_file(data_dir, tmp_path, capsys):
    import torchvision

    if not (data_dir / "imagenette" / "val").is_dir():
        pytest.skip("imagenette not found")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "tv18.pth")
    sets = ["data.train_dir=imagenette/val", "data.eval_dir=imagenette/val", "data.eval_limit=20",
            "train.iterations=2", "train.batch_size=4", "train.log_every=1", "train.eval_every=0",
            "data.scale=[96, 112]", "data.crop=96", "train.checkpoint_every=2", "data.workers=0",
            f"train.init={tmp_path / 'tv18.pth'}", "train.tensorboard=false"]  # fmt: skip
    args = ["train", "finetune/imagefolder", "--data-dir", str(data_dir), "--out", str(tmp_path / "run"), "--no-progress"]  # fmt: skip
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    out = capsys.readouterr().out
    assert "tv18.pth: 120 tensors loaded, 2 new (fc.weight, fc.bias)" in out  # 10 classes, not 1000
