"""Detection transfer on the real coco128 images: data, metrics, backbones, training steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from reslab.detection import (
    AnnotationError,
    CocoDetection,
    VOCDetection,
    build_detector,
    coco_map,
    collate,
    freeze_batchnorm,
    voc07_map,
)
from reslab.detection.data import hflip, training_target


@pytest.fixture(scope="module")
def coco128(data_dir):
    root = data_dir / "coco128"
    if not root.is_dir():
        pytest.skip(f"coco128 not found under {data_dir}")
    return CocoDetection(root / "train2017", root / "annotations" / "instances_train2017.json")


def test_coco128_loader_counts_and_box_format(coco128):
    assert len(coco128) == 128 and len(coco128.classes) == 81  # 80 categories + background
    assert sum(len(t["boxes"]) for t in coco128.targets) == 939
    assert sum(int(t["iscrowd"].sum()) for t in coco128.targets) == 10
    assert sum(len(t["boxes"]) == 0 for t in coco128.targets) == 2  # images without boxes kept
    image, target = coco128[0]
    assert (
        image.dtype == torch.float32
        and image.shape[0] == 3
        and 0 <= image.min() <= image.max() <= 1
    )
    h, w = image.shape[1:]
    boxes = target["boxes"]
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert (boxes[:, [0, 2]] <= w).all() and (boxes[:, [1, 3]] <= h).all() and (boxes >= 0).all()
    assert target["labels"].min() >= 1 and target["labels"].max() <= 80
    crowded = next(t for t in coco128.targets if t["iscrowd"].any())
    train = training_target(crowded)
    assert not train["iscrowd"].any()  # crowd regions are not training boxes
    assert len(train["boxes"]) == int((crowded["iscrowd"] == 0).sum())


def test_hflip_mirrors_boxes():
    image = torch.zeros(3, 10, 20)
    image[:, 2:4, 1:5] = 1
    target = {"boxes": torch.tensor([[1.0, 2.0, 5.0, 4.0]])}
    flipped, t = hflip(image, target)
    assert t["boxes"].tolist() == [[15.0, 2.0, 19.0, 4.0]]
    assert flipped[:, 2:4, 15:19].min() == 1 and flipped.sum() == image.sum()
    back, t2 = hflip(flipped, t)
    assert torch.equal(back, image) and torch.equal(t2["boxes"], target["boxes"])


def test_malformed_annotation_is_reported_by_image_id(data_dir, tmp_path):
    root = data_dir / "coco128"
    data = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    data["annotations"][0]["bbox"] = [10, 10, -5, 20]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    image_id = data["annotations"][0]["image_id"]
    with pytest.raises(AnnotationError, match=rf"image id {image_id} .*non-positive width"):
        CocoDetection(root / "train2017", bad)
    with pytest.raises(FileNotFoundError, match="annotation file"):
        CocoDetection(root / "train2017", tmp_path / "missing.json")


def test_ground_truth_scores_map_one_and_shifted_boxes_score_lower(coco128):
    gt = {
        int(t["image_id"]): {
            "boxes": t["boxes"],
            "scores": torch.ones(len(t["boxes"])),
            "labels": t["labels"],
        }
        for t in coco128.targets
    }
    exact = coco_map(coco128, gt)
    assert exact["map"] == pytest.approx(1.0) and exact["map50"] == pytest.approx(1.0)
    assert voc07_map(coco128, gt) == pytest.approx(1.0)
    shifted = {k: {**v, "boxes": v["boxes"] + 15.0} for k, v in gt.items()}
    worse = coco_map(coco128, shifted)  # the README quotes these values
    assert worse["map"] == pytest.approx(0.2136, abs=2e-3)
    assert worse["map50"] == pytest.approx(0.4299, abs=2e-3)
    assert voc07_map(coco128, shifted) == pytest.approx(0.4315, abs=2e-3)
    assert coco_map(coco128, {})["map"] == 0.0


@pytest.mark.parametrize("name", ["resnet50", "resnet101"])
def test_c4_and_fpn_feature_shapes(name):
    x = torch.randn(1, 3, 128, 192)
    c4 = build_detector(name, 21, "c4").backbone
    with torch.no_grad():
        (feat,) = c4(x).values()
    assert c4.out_channels == 1024 and feat.shape == (1, 1024, 8, 12)  # conv4: stride 16
    fpn = build_detector(name, 21, "fpn").backbone
    with torch.no_grad():
        feats = fpn(x)
    assert fpn.out_channels == 256
    assert [tuple(v.shape[-2:]) for v in feats.values()] == [
        (32, 48),
        (16, 24),
        (8, 12),
        (4, 6),
        (2, 3),
    ]


def test_frozen_batchnorm_matches_eval_bn_and_freezes_stages():
    bn = nn.BatchNorm2d(4).eval()
    bn.running_mean.uniform_()
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_()
    x = torch.randn(2, 4, 3, 3)
    frozen = freeze_batchnorm(nn.Sequential(bn))[0]
    torch.testing.assert_close(frozen(x), bn(x))
    model = build_detector("resnet18", 3, "fpn", norm="frozen", frozen_stages=2)
    body = model.backbone.body
    assert not any(p.requires_grad for p in body.conv1.parameters())
    assert not any(p.requires_grad for p in body.layer1.parameters())
    assert all(p.requires_grad for p in body.layer2.parameters())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    with pytest.raises(ValueError, match="design='c5' is invalid"):
        build_detector("resnet18", 3, "c5")
    with pytest.raises(ValueError, match="ImageNet-family"):
        build_detector("resnet20", 3)


@pytest.mark.parametrize("design", ["fpn", "c4"])
def test_training_steps_reduce_the_loss(coco128, design):
    torch.manual_seed(0)
    model = build_detector(
        "resnet18", len(coco128.classes), design, min_size=224, max_size=320,
        rpn_batch_size_per_image=64, box_batch_size_per_image=32,
    )  # fmt: skip
    images, targets = collate([coco128[i] for i in (1, 2)])
    targets = [training_target(t) for t in targets]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    model.train()
    losses = []
    for _ in range(6):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0], losses


def test_voc_xml_is_read_as_coco(tmp_path):
    from torchvision.io import write_jpeg

    root = tmp_path / "VOC2007"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True)
    write_jpeg(torch.zeros(3, 40, 60, dtype=torch.uint8), str(root / "JPEGImages" / "000001.jpg"))
    (root / "ImageSets/Main/trainval.txt").write_text("000001\n")
    (root / "Annotations/000001.xml").write_text(
        "<annotation><size><width>60</width><height>40</height><depth>3</depth></size>"
        "<object><name>dog</name><difficult>0</difficult><bndbox><xmin>11</xmin><ymin>6</ymin>"
        "<xmax>30</xmax><ymax>25</ymax></bndbox></object>"
        "<object><name>cat</name><difficult>1</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>10</xmax><ymax>10</ymax></bndbox></object></annotation>"
    )
    ds = VOCDetection(root, "trainval")
    image, target = ds[0]
    assert image.shape == (3, 40, 60) and len(ds.classes) == 21
    assert target["boxes"].tolist() == [[10.0, 5.0, 30.0, 25.0], [0.0, 0.0, 10.0, 10.0]]
    assert [ds.classes[i] for i in target["labels"]] == ["dog", "cat"]
    assert target["iscrowd"].tolist() == [0, 1]  # difficult: ignored like a crowd region
    perfect = {
        1: {"boxes": target["boxes"][:1], "scores": torch.ones(1), "labels": target["labels"][:1]}
    }
    assert voc07_map(ds, perfect) == pytest.approx(1.0)


def test_detect_train_and_eval_commands(data_dir, tmp_path, capsys):
    """`reslab detect train` runs end to end on coco128 (tiny settings) and writes the run
    directory; `reslab detect eval` re-scores its weights and draws boxes."""
    from reslab.cli import main

    run = tmp_path / "det"
    args = ["detect", "train", "detection/coco128_fpn_resnet50", "--data-dir", str(data_dir),
            "--out", str(run), "--no-progress"]  # fmt: skip
    for item in ("model.backbone=resnet18", "model.min_size=[224]", "model.test_size=224",
                 "model.max_size=320", "train.iterations=3", "train.batch_size=2",
                 "train.eval_every=2", "train.checkpoint_every=2", "train.log_every=1",
                 "data.val_limit=4", "optim.warmup_iterations=0"):  # fmt: skip
        args += ["--set", item]
    assert main(args) == 0
    names = sorted(p.name for p in run.iterdir())
    assert names == [
        "checkpoints",
        "config.yaml",
        "map.png",
        "metrics.jsonl",
        "model.safetensors",
        "summary.json",
    ]
    summary = json.loads((run / "summary.json").read_text())
    assert (
        summary["status"] == "finished"
        and summary["iterations"] == 3
        and 0 <= summary["val_map50"] <= 1
    )
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if "val_map50" in r] == [2, 3]
    logged = [r for r in rows if "loss" in r]
    assert [r["iteration"] for r in logged] == [1, 2, 3] and all(r["loss"] > 0 for r in logged)
    # the window's mean loss is the sum of its terms' means (the engine's loop, meter and clock)
    terms = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
    assert all(r["loss"] == pytest.approx(sum(r[k] for k in terms)) for r in logged)
    assert summary["train_time_s"] > 0 and summary["images_per_s"] > 0
    capsys.readouterr()
    assert main(["detect", "eval", str(run), "--data", str(data_dir), "--limit", "4",
                 "--visualize", str(tmp_path / "vis"), "--draw", "2"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["images"] == 4 and 0 <= result["map50"] <= 1
    assert len(list((tmp_path / "vis").glob("*.png"))) == 2


def test_visualize_draws_the_boxes(tmp_path):
    from torchvision.io import decode_png, read_file

    from reslab.detection.train import visualize

    image = torch.zeros(3, 40, 60)
    pred = {"boxes": torch.tensor([[5.0, 5.0, 30.0, 30.0], [1.0, 1.0, 4.0, 4.0]]),
            "scores": torch.tensor([0.9, 0.1]), "labels": torch.tensor([1, 2])}  # fmt: skip
    png = decode_png(
        read_file(str(visualize(image, pred, ["bg", "dog", "cat"], tmp_path / "a.png")))
    )
    assert png.shape == (3, 40, 60)
    assert png[:, 5, 5:30].sum() > 0  # the confident box's edge is drawn
    assert png[:, 2, 2].sum() == 0  # the low-scoring one is not


def test_interrupted_detection_run_resumes_to_the_same_weights(data_dir, tmp_path, monkeypatch):
    """SIGINT during step 3 saves a checkpoint; the same command finishes with the weights of an
    uninterrupted run (data order, flips and the samplers' random state are restored). The run
    directory follows the engine's rules."""
    import signal

    from reslab.detection import train as det
    from reslab.engine.checkpoint import load_checkpoint
    from reslab.engine.rundir import RunLock
    from reslab.errors import RunError

    cfg = det.load_det_config(
        "detection/coco128_fpn_resnet50",
        [f"data.data_dir={data_dir}", "model.backbone=resnet18", "model.min_size=[192]",
         "model.test_size=192", "model.max_size=256", "train.iterations=4", "train.batch_size=2",
         "train.checkpoint_every=2", "data.val_limit=2", "optim.warmup_iterations=0"],
    )  # fmt: skip
    straight = det.fit_detector(cfg, tmp_path / "straight", progress=False)
    assert straight["status"] == "finished"
    # the engine's run-directory rules: a finished run returns its summary, another config is
    # refused with the key named, a second process is refused
    assert det.fit_detector(cfg, tmp_path / "straight", progress=False) == straight
    other = det.load_det_config("detection/coco128_fpn_resnet50", [f"data.data_dir={data_dir}"])
    with pytest.raises(RunError, match=r"train.iterations: .* -> .*--restart"):
        det.fit_detector(other, tmp_path / "straight", progress=False)
    with RunLock(tmp_path / "straight"), pytest.raises(RunError, match="in use"):
        det.fit_detector(cfg, tmp_path / "straight", progress=False)

    real, calls = det.collate, {"n": 0}

    def collate_then_interrupt(batch):
        calls["n"] += 1
        if calls["n"] == 3:
            signal.raise_signal(signal.SIGINT)
        return real(batch)

    monkeypatch.setattr(det, "collate", collate_then_interrupt)
    first = det.fit_detector(cfg, tmp_path / "resumed", progress=False)
    assert first["status"] == "interrupted" and first["iteration"] == 3
    assert Path(first["checkpoint"]).name == "ckpt_0000003.pt"
    monkeypatch.undo()
    assert det.fit_detector(cfg, tmp_path / "resumed", progress=False)["status"] == "finished"
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "final.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "final.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_backbone_initialised_from_imagenet_weights(tmp_path):
    """A torchvision-layout state dict initialises the backbone; with weights the BN is frozen."""
    from reslab.models import create_model

    torch.manual_seed(1)
    source = create_model("resnet18")
    with torch.no_grad():
        source.bn1.running_mean.uniform_()
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = build_detector("resnet18", 3, "c4", weights=str(path))
    trunk = model.backbone
    assert torch.equal(trunk.conv1.weight, source.conv1.weight)
    assert torch.equal(trunk.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    assert torch.equal(
        model.roi_heads.box_head.layer4[1].conv2.weight, source.layer4[1].conv2.weight
    )
    assert torch.equal(trunk.bn1.running_mean, source.bn1.running_mean)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # norm=auto: frozen


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("model.design=dc5", r"model\.design: 'dc5' is invalid; valid choices: c4, fpn"),
        ("model.norm=group", r"model\.norm: 'group' is invalid; valid choices: auto, frozen"),
        ("data.format=yolo", r"data\.format: 'yolo' is invalid"),
        ("train.batch_size=0", r"train\.batch_size: 0 must be > 0"),
        ("model.min_size=[]", r"model\.min_size: give at least one"),
        ("train.itrations=5", r"itrations"),
    ],
)
def test_detection_config_errors_name_the_key(override, match):
    from reslab.config import ConfigError
    from reslab.detection.train import load_det_config

    with pytest.raises(ConfigError, match=match):
        load_det_config("detection/coco128_fpn_resnet50", [override])
