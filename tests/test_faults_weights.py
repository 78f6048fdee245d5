"""Faults of issue 24 in weights loading, frozen layers, evaluation and export, each kept fixed:
frozen stages that trained, state dicts torch accepts that reslab refused, torchvision files loaded
silently into the paper's layout, tests on training images, and tracebacks where a user's mistake
should end in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from reslab import hub
from reslab.cli import main
from reslab.errors import ConfigError, WeightsError
from reslab.models import create_model
from reslab.models.factory import load_model, load_weights, save_weights, source_state
from reslab.weights.checks import initialise_from
from reslab.weights.files import read_metadata

REPO = Path(__file__).resolve().parents[1]
LEDGER_R20 = REPO / "results" / "table6" / "resnet20-seed0"
CIFAR_META = {
    "dataset": "cifar10",
    "normalization": "pixel",
    "normalize_mean": [0.5] * 3,
    "normalize_std": [1.0],
    "normalize_shape": [1, 3, 1, 1],
    "classes": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    "input_size": [3, 32, 32],
}  # fmt: skip


def _one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    return err


# ---- 1. frozen stages stay frozen ---------------------------------------------------------------


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("stages", [0, 1, 2, 3, 4])
def test_freeze_leaves_trainable_only_what_the_options_leave(stages, bn):
    model = create_model("resnet20", num_classes=2).freeze(stages, bn)
    frozen = [("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",)][:stages]
    frozen_prefixes = tuple(f"{m}." for part in frozen for m in part)
    expected = [n for n, _ in model.named_parameters() if not n.startswith(frozen_prefixes)]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == expected
    if stages == 4:
        assert expected == ["fc.weight", "fc.bias"]
    # a second call never unfreezes what the first froze
    if stages:
        again = create_model("resnet20").freeze(stages).freeze(0, True)
        assert not again.conv1.weight.requires_grad and not again.bn1.weight.requires_grad


def test_a_frozen_stage_does_not_change_in_training(tiny_config, tmp_path):
    """Nine real steps with the stem and layer1 frozen and BN statistics fixed: every parameter
    and buffer of conv1, bn1 and layer1, and every BN's running statistics, are the initial ones
    bit for bit; layer2's convolutions and BN scales train."""
    from reslab.engine import fit

    torch.manual_seed(1)
    start = create_model("resnet8")
    with torch.no_grad():  # statistics and affine parameters that are not BN's defaults
        for name, tensor in start.state_dict().items():
            if "bn" in name and tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5)
    init = tmp_path / "start.safetensors"
    save_weights(start, init, "resnet8", **CIFAR_META)
    cfg = tiny_config(**{"train.init": str(init), "train.freeze_stages": 2,
                         "train.freeze_bn": "true", "train.eval_every": 0})  # fmt: skip
    assert fit(cfg, tmp_path / "run", progress=False)["status"] == "finished"
    end, _ = load_weights(tmp_path / "run")
    before, after = start.state_dict(), end.state_dict()
    for name, tensor in before.items():
        frozen = name.startswith(("conv1.", "bn1.", "layer1."))
        statistic = name.endswith(("running_mean", "running_var", "num_batches_tracked"))
        if frozen or statistic:
            assert torch.equal(after[name], tensor), name
    assert not torch.equal(after["layer2.0.conv1.weight"], before["layer2.0.conv1.weight"])
    assert not torch.equal(after["layer2.0.bn1.weight"], before["layer2.0.bn1.weight"])


# ---- 2. what torch's strict loading accepts, reslab accepts -------------------------------------


def _variants(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """State dicts that differ from ``model.state_dict()`` as torch's strict loading tolerates (or,
    for DataParallel's prefix, as reslab has always removed)."""
    return {
        "without num_batches_tracked": {
            k: v for k, v in state.items() if not k.endswith("num_batches_tracked")
        },
        "torch 0.3's one-element counters": {
            k: v.view(1) if v.dim() == 0 else v for k, v in state.items()
        },
        "fp16": {k: v.half() if v.is_floating_point() else v for k, v in state.items()},
        "bf16": {k: v.bfloat16() if v.is_floating_point() else v for k, v in state.items()},
        "DataParallel's module. prefix": {f"module.{k}": v for k, v in state.items()},
    }


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_state_dicts_that_torch_loads_strictly_load(tmp_path, suffix):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = create_model("resnet20")
    for what, state in _variants(source.state_dict()).items():
        path = tmp_path / f"{what.replace(' ', '_')}{suffix}"
        if suffix == ".pt":
            torch.save(state, path)
        else:
            save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        if "module." not in what:  # torch's own verdict on the same tensors
            reference = create_model("resnet20")
            reference.load_state_dict(dict(state), strict=True)
        else:
            reference = source
        loaded = load_model("resnet20", path)
        for (name, a), b in zip(
            loaded.state_dict().items(), reference.state_dict().values(), strict=True
        ):
            assert a.dtype == b.dtype and torch.equal(a, b), (what, name)
        # fine-tuning's start (`--init`): every tensor but the new classifier is taken
        _, new = initialise_from(
            create_model("resnet20", num_classes=2), source_state(path)[0], str(path), None
        )
        assert new == ["fc.weight", "fc.bias"], what


def test_a_saved_state_dict_keeps_loading_with_its_metadata(tmp_path):
    """``torch.save(model.state_dict())`` keeps torch's ``_metadata`` (module versions)."""
    source = create_model("resnet20")
    state = source.state_dict()
    assert hasattr(state, "_metadata")
    torch.save(state, tmp_path / "with_metadata.pt")
    loaded = load_model("resnet20", tmp_path / "with_metadata.pt")
    for (name, a), b in zip(loaded.state_dict().items(), state.values(), strict=True):
        assert torch.equal(a, b), name


def test_what_torch_refuses_is_still_refused(tmp_path):
    state = create_model("resnet20").state_dict()
    del state["layer1.0.bn1.running_var"]
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(WeightsError, match=r"missing keys layer1.0.bn1.running_var"):
        load_model("resnet20", tmp_path / "missing.pt")


# ---- 3. a plain bottleneck state dict loads only into the layout its source declares ------------


@pytest.fixture
def tv50(tmp_path, monkeypatch):
    """torchvision's ResNet-50 (v1.5, random weights) as a plain state dict, also named by
    ``$RESLAB_TORCHVISION_WEIGHTS`` (what ``resnet50.imagenet`` loads offline)."""
    import torchvision

    torch.manual_seed(0)
    source = torchvision.models.resnet50().eval()
    path = tmp_path / "tv50.pth"
    torch.save(source.state_dict(), path)
    monkeypatch.setenv("RESLAB_TORCHVISION_WEIGHTS", str(path))
    return source, path


LAYOUTS = ("stride_in=", '"1x1"', "paper's v1", '"3x3"', "torchvision's v1.5")


def test_a_plain_bottleneck_state_dict_needs_a_declared_layout(tv50, tmp_path):
    source, path = tv50
    for load in (
        lambda: load_model("resnet50", path),
        lambda: create_model("resnet50", weights=str(path)),
    ):
        with pytest.raises(WeightsError) as refused:
            load()
        assert all(word in str(refused.value) for word in (str(path), *LAYOUTS))
        assert "resnet50.imagenet" in str(refused.value)
    x = torch.randn(1, 3, 64, 64)
    for model in (
        load_model("resnet50", path, stride_in="3x3"),
        create_model("resnet50", weights=str(path), stride_in="3x3"),
        load_model("resnet50", "resnet50.imagenet"),  # a weights name declares it too
    ):
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(x), source(x))
    assert load_model("resnet50", path, stride_in="1x1").arch["stride_in"] == "1x1"  # declared
    # train.init: a plain file is refused, the weights name loads into its own layout only
    state, arch, label = source_state(str(path))
    with pytest.raises(WeightsError, match="plain state dict of a bottleneck network"):
        initialise_from(create_model("resnet50", num_classes=10), state, label, arch)
    state, arch, label = source_state("resnet50.imagenet")
    with pytest.raises(WeightsError, match=r"holds another network \(.*stride_in=3x3.*stride_in=1x1"):  # fmt: skip
        initialise_from(create_model("resnet50", num_classes=10), state, label, arch)
    loaded, new = initialise_from(
        create_model("resnet50", num_classes=10, stride_in="3x3"), state, label, arch
    )
    assert new == ["fc.weight", "fc.bias"] and len(loaded) == len(source.state_dict()) - 2
    # a reslab checkpoint declares the layout in its config
    from reslab.models.factory import read_weights_file

    ckpt = tmp_path / "final.pt"
    config = {"model": {"name": "resnet50", "options": {"stride_in": "3x3"}}}
    torch.save({"model": source.state_dict(), "config": config}, ckpt)
    assert read_weights_file(ckpt)[1]["stride_in"] == "3x3"
    assert load_model("resnet50", ckpt, stride_in="3x3").arch["stride_in"] == "3x3"
    with pytest.raises(WeightsError, match=r"final.pt holds another network"):
        load_model("resnet50", ckpt)
    # basic blocks have one layout: torchvision's ResNet-18 loads as before
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "tv18.pth")
    assert load_model("resnet18", tmp_path / "tv18.pth").arch["stride_in"] is None


def test_every_command_taking_a_file_refuses_an_undeclared_bottleneck_file(
    tv50, tmp_path, data_dir, capsys
):
    from reslab.detection import build_detector

    _, path = tv50
    with pytest.raises(WeightsError, match="plain state dict of a bottleneck network"):
        build_detector("resnet50", 91, "fpn", weights=path)
    detector = build_detector("resnet50", 91, "c4", weights="resnet50.imagenet")
    assert detector.backbone.layer2[0].conv2.stride == (2, 2)  # v1.5: the stride on the 3x3
    sets = ["train.iterations=1", "train.batch_size=1", "model.min_size=[64]", "model.max_size=64",
            "model.test_size=64", "data.val_limit=1", "data.workers=0", f"model.weights={path}"]  # fmt: skip
    args = ["detect", "train", "detection/coco128_fpn_resnet50", "--data-dir", str(data_dir),
            "--out", str(tmp_path / "det"), "--no-progress"]  # fmt: skip
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 2
    _one_line_error(capsys, str(path), *LAYOUTS)
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(image)
    for argv in (
        ["eval", str(path)],
        ["predict", str(path), str(image)],
        ["export", str(path), "--out", str(tmp_path / "m.onnx")],
    ):
        assert main(argv) == 2
        _one_line_error(capsys, str(path), "not a reslab weights file")


# ---- 4. no test on training images --------------------------------------------------------------


def test_eval_refuses_the_images_the_weights_trained_on(data_dir, tmp_path, capsys):
    assert read_metadata(LEDGER_R20 / "model.safetensors")["train_split"] == "train"
    assert main(["eval", "resnet20.cifar10", "--split", "val5k", "--data-dir", str(data_dir)]) == 2
    _one_line_error(capsys, "--split val5k is no test", "'train'", "--split test")
    no_record = tmp_path / "unknown.safetensors"
    save_weights(create_model("resnet8"), no_record, "resnet8", **CIFAR_META)
    assert main(["eval", str(no_record), "--split", "val5k", "--data-dir", str(data_dir)]) == 2
    _one_line_error(capsys, "does not say which images", "train_split")
    held_out = tmp_path / "train45k.safetensors"
    save_weights(create_model("resnet8"), held_out, "resnet8", train_split="train45k", **CIFAR_META)
    argv = ["eval", str(held_out), "--split", "val5k", "--limit", "100", "--device", "cpu"]
    assert main([*argv, "--data-dir", str(data_dir)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["images"] == 100
    # image folders: the training folder (or one inside it) is no test either
    from reslab.engine.evaluate import evaluate_weights

    folder = tmp_path / "folder.safetensors"
    meta = {**CIFAR_META, "dataset": "imagefolder", "normalization": "channel",
            "normalize_std": [0.25] * 3, "train_dir": "imagenette/val", "eval_dir": "imagenette/val",
            "resize": "40", "crop": "32"}  # fmt: skip
    save_weights(create_model("resnet8"), folder, "resnet8", **meta)
    for given in (None, "imagenette/val/", "imagenette/val/n01440764"):
        with pytest.raises(ConfigError, match=r"is no test of these weights: they were trained on imagenette/val"):  # fmt: skip
            evaluate_weights(folder, data_dir=data_dir, eval_dir=given)


# ---- 5. one line, naming the file or value ------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("classes", "5"),
        ("classes", '{"cat": 1}'),
        ("classes", "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"),
        ("model_options", "[1]"),
        ("model_options", '{"depth": "eight"}'),
        ("normalize_mean", '"grey"'),
        ("normalize_shape", "[1, 3, 1]"),
        ("normalize_std", "[1, 2]"),
    ],
)
def test_metadata_of_the_wrong_type_is_one_line_naming_the_file(tmp_path, capsys, key, value):
    from safetensors.torch import load_file, save_file

    good = tmp_path / "good.safetensors"
    save_weights(create_model("resnet8"), good, "resnet8", **CIFAR_META)
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(good)), str(bad), metadata={**read_metadata(good), key: value})
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(image)
    for argv in (
        ["predict", str(bad), str(image)],
        ["export", str(bad), "--format", "torchscript", "--out", str(tmp_path / "m.pt")],
    ):
        assert main(argv) == 2
        _one_line_error(capsys, str(bad))


def test_a_tampered_weights_file_is_named_with_its_checksum(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RESLAB_WEIGHTS_URL", raising=False)
    monkeypatch.setenv("RESLAB_CACHE", str(tmp_path / "cache"))
    entry = hub.resolve("resnet20.cifar10")
    tampered = b"x" + (LEDGER_R20 / "model.safetensors").read_bytes()[1:]
    # an installed reslab: the file in the cache was changed
    monkeypatch.setattr(hub, "CHECKOUT_RESULTS", tmp_path / "no-checkout")
    cached = tmp_path / "cache" / "weights" / f"{entry['sha256'][:16]}-{entry['name']}.safetensors"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(tampered)
    assert main(["eval", "resnet20.cifar10"]) == 2
    _one_line_error(capsys, str(cached), "does not have the recorded sha256", "delete it", "RESLAB_WEIGHTS_URL")  # fmt: skip
    # a checkout: the ledger's own file was changed
    cached.unlink()
    ledger = tmp_path / "checkout" / "results"
    (ledger / entry["file"]).parent.mkdir(parents=True)
    (ledger / entry["file"]).write_bytes(tampered)
    monkeypatch.setattr(hub, "CHECKOUT_RESULTS", ledger)
    with pytest.raises(WeightsError, match=r"does not have the recorded sha256 .*git checkout"):
        hub.weights_file(entry)
    # nothing here at all is still "not here"
    (ledger / entry["file"]).unlink()
    with pytest.raises(FileNotFoundError, match="is not here"):
        hub.weights_file(entry)


def test_export_to_a_directory_is_one_line(tmp_path, capsys):
    weights = tmp_path / "r8.safetensors"
    save_weights(create_model("resnet8"), weights, "resnet8", **CIFAR_META)
    for fmt in ("torchscript", "onnx"):
        assert main(["export", str(weights), "--format", fmt, "--out", str(tmp_path)]) == 2
        _one_line_error(capsys, f"--out {tmp_path} is a directory")


def test_onnx_export_leaves_only_the_file(tmp_path):
    onnx = pytest.importorskip("onnx")
    weights = tmp_path / "r8.safetensors"
    save_weights(create_model("resnet8"), weights, "resnet8", **CIFAR_META)
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.onnx.data").write_bytes(b"stale")  # an earlier export's
    assert main(["export", str(weights), "--format", "onnx", "--out", str(out / "m.onnx")]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["m.onnx"]
    graph = onnx.load(str(out / "m.onnx"), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer)
    assert {p.key for p in graph.metadata_props} >= {"classes", "model", "input"}


def test_detect_eval_of_what_is_no_detector_is_one_line(tmp_path, capsys):
    state = tmp_path / "weights.pt"
    torch.save(create_model("resnet8").state_dict(), state)
    assert main(["detect", "eval", str(state)]) == 2
    _one_line_error(capsys, str(state), "not a detector's weights file")
    assert main(["detect", "eval", str(LEDGER_R20)]) == 2
    _one_line_error(capsys, "holds a classification model (resnet20", "reslab eval")
