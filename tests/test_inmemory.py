"""Image folders held in memory and augmented a batch at a time (the imagenette64 protocol's path)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from reslab.config import load_config
from reslab.data.builders import build_data
from reslab.data.decode import decode
from reslab.data.imagefolder import scan_folder
from reslab.data.inmemory import (
    DecodedFolder,
    FolderTensorLoader,
    decode_folder,
    holdout_split,
    memory_plan,
    scale_crop_flip,
)
from reslab.data.transforms import Normalize
from reslab.data.views import resize_shorter
from reslab.engine import fit
from reslab.engine.checkpoint import load_checkpoint
from reslab.engine.logging import read_jsonl


@pytest.fixture
def photos(data_dir):
    """Twelve real Imagenette photographs (96x96) of three classes, decoded."""
    root = data_dir / "imagenette" / "train"
    if not root.is_dir():
        pytest.skip("imagenette/train not found")
    _, samples = scan_folder(root)
    chosen = samples[::800][:12]
    images = torch.stack([decode(p) for p, _ in chosen])
    return DecodedFolder(images, torch.tensor([label for _, label in chosen]), ["a", "b", "c"])


def _loader(folder, seed=0, batch=12, **kwargs):
    identity = Normalize(torch.zeros(1, 3, 1, 1), torch.ones(1, 1, 1, 1) / 255, "channel")
    options = {"train": True, "scale": (73, 137), "crop": 64, "lighting": 0.0, "seed": seed}
    return FolderTensorLoader(folder, batch, identity, **{**options, **kwargs})


def test_training_views_match_a_per_image_reference(photos):
    """Each view is the photograph resized (shorter side s, torchvision's antialiased bilinear),
    cropped at the drawn corner and mirrored where drawn, exactly; and close to PIL's resize."""
    from PIL import Image

    loader = _loader(photos)
    p = loader.view_params(epoch=0, batch=0)
    views = scale_crop_flip(photos.images, p["sizes"], p["tops"], p["lefts"], p["mirror"], 64)
    assert p["mirror"].any() and not p["mirror"].all()
    for i, image in enumerate(photos.images):
        s, top, left = int(p["sizes"][i]), int(p["tops"][i]), int(p["lefts"][i])
        resized = resize_shorter(image, s)
        assert resized.shape[-2:] == (s, s) and 0 <= top <= s - 64 and 0 <= left <= s - 64
        reference = resized[:, top : top + 64, left : left + 64]
        if p["mirror"][i]:
            reference = reference.flip(-1)
        assert torch.equal(views[i], reference), i
        pil = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((s, s), Image.BILINEAR)
        pil = torch.from_numpy(np.array(pil)).permute(2, 0, 1)[:, top : top + 64, left : left + 64]
        pil = pil.flip(-1) if p["mirror"][i] else pil
        assert (pil.float() - views[i].float()).abs().mean() < 2.5  # of 255 levels


def test_scale_range_and_flips_over_many_batches(photos):
    """The shorter side is uniform over [73, 137] (both ends reached), crops stay inside the
    resized image, half the views are mirrored."""
    loader = _loader(photos)
    drawn = [loader.view_params(0, b) for b in range(200)]
    sizes = torch.cat([d["sizes"] for d in drawn])
    assert sizes.min() == 73 and sizes.max() == 137 and len(sizes.unique()) == 65
    assert all(
        ((d["tops"] <= d["sizes"] - 64) & (d["lefts"] <= d["sizes"] - 64)).all() for d in drawn
    )
    assert abs(torch.cat([d["mirror"] for d in drawn]).float().mean() - 0.5) < 0.05


def test_the_same_seed_gives_the_same_batches(photos):
    folder = DecodedFolder(
        photos.images.repeat(4, 1, 1, 1), photos.labels.repeat(4), photos.classes
    )
    a = list(_loader(folder, batch=8, lighting=0.1).batches(epoch=3))
    b = list(_loader(folder, batch=8, lighting=0.1).batches(epoch=3))
    assert len(a) == 6 and all(
        torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(a, b, strict=True)
    )
    later = list(_loader(folder, batch=8, lighting=0.1).batches(epoch=3, start=4))
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(later, a[4:], strict=True))
    other = next(_loader(folder, seed=1, batch=8).batches(epoch=3))[0]
    assert not torch.equal(other, a[0][0])
    # two processes of a data-parallel run each get their half of every global batch
    halves = [next(_loader(folder, batch=8, lighting=0.1, shard=(r, 2)).batches(3)) for r in (0, 1)]
    assert torch.equal(torch.cat([h[0] for h in halves]), a[0][0])


def test_test_views_are_the_centre_and_ten_crops(photos):
    center = _loader(photos, train=False, views="center", batch=5)
    x, _ = next(center.batches())
    resized = resize_shorter(photos.images[:5], 73)
    assert torch.equal(x.round().to(torch.uint8), TF.center_crop(resized, [64, 64]))
    ten = _loader(photos, train=False, views="tencrop", batch=5)
    x, _ = next(ten.batches())
    assert x.shape == (5, 10, 3, 64, 64)
    assert torch.equal(x[:, 4].round().to(torch.uint8), TF.center_crop(resized, [64, 64]))
    assert len(center) == 3 and sum(len(b[1]) for b in center.batches()) == 12


def test_holdout_split_is_a_class_balanced_partition(data_dir):
    _, samples = scan_folder(data_dir / "imagenette" / "train")
    train, held = holdout_split(samples, 10, "train"), holdout_split(samples, 10, "holdout")
    assert len(train) + len(held) == len(samples) and not set(train) & set(held)
    counts = np.bincount([label for _, label in held], minlength=10)
    totals = np.bincount([label for _, label in samples], minlength=10)
    assert (abs(counts - totals / 10) <= 1).all()
    assert (
        holdout_split(samples, 0, "train") == samples and holdout_split(samples, 0, "holdout") == []
    )


def _small_folder(data_dir, tmp_path, per_class=12, odd_size=False):
    source = data_dir / "imagenette" / "train"
    root = tmp_path / "data"
    for cls in sorted(p.name for p in source.iterdir())[:2]:
        (root / "folder" / cls).mkdir(parents=True)
        for f in sorted((source / cls).iterdir())[:per_class]:
            shutil.copy(f, root / "folder" / cls / f.name)
    if odd_size:
        from PIL import Image

        victim = sorted((root / "folder").rglob("*.JPEG"))[0]
        Image.open(victim).resize((90, 96)).save(victim, "JPEG")
    return root


def _tiny(root, **extra):
    overrides = {
        "data.data_dir": root, "data.train_dir": "folder", "data.eval_dir": "folder",
        "data.holdout": 4, "train.iterations": 8, "train.batch_size": 8, "train.log_every": 2,
        "train.eval_every": 4, "train.checkpoint_every": 3, "optim.milestones": "[5, 7]",
        "model.name": "resnet18", "train.tensorboard": "false", "data.eval_limit": 0,
        "train.eval_batch_size": 20, "train.threads": 2, **extra,
    }  # fmt: skip
    return load_config("imagenette64/resnet18", [f"{k}={v}" for k, v in overrides.items()])


def test_a_resumed_in_memory_run_is_bit_identical(data_dir, tmp_path, interrupt_after, monkeypatch):
    root = _small_folder(data_dir, tmp_path)
    cfg = _tiny(root)
    straight = fit(cfg, tmp_path / "straight", progress=False)
    assert straight["status"] == "finished"
    events = [
        r for r in read_jsonl(tmp_path / "straight" / "metrics.jsonl") if r.get("event") == "data"
    ]
    assert (
        "in memory: 24 images of 96x96" in events[0]["how"]
        and "every 4th held out" in events[0]["how"]
    )
    assert straight["test_images"] == 6  # the held-out quarter, 10-crop tested
    interrupt_after(5)
    assert fit(cfg, tmp_path / "resumed", progress=False)["status"] == "interrupted"
    monkeypatch.undo()
    resumed = fit(cfg, tmp_path / "resumed", progress=False)
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "final.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "final.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["test_error"] == straight["test_error"]


def test_memory_plan_and_the_fallback_to_files(data_dir, tmp_path):
    root = _small_folder(data_dir, tmp_path, per_class=6, odd_size=True)
    _, samples = scan_folder(root / "folder")
    fits, why = memory_plan(samples, 4096)
    assert not fits and "2 different sizes" in why
    bundle = build_data(_tiny(root, **{"train.batch_size": 4}), "cpu")
    assert "read by 2 DataLoader workers (its 12 images have 2 different sizes)" in bundle.note
    _, samples = scan_folder(data_dir / "imagenette" / "val")
    assert memory_plan(samples, 10) == (
        False,
        "3,925 images of 96x96 need 103 MB, over the 10 MB budget",
    )
    with pytest.raises(Exception, match="an in-memory folder holds images of one size"):
        decode_folder(root / "folder")
