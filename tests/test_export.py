"""Export: the trained ResNet-20 runs in onnxruntime as in PyTorch on real test images; TorchScript
and ExportedProgram files load and agree; ``reslab bench infer`` compares the runtimes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reslab.cli import main


@pytest.fixture(scope="module")
def test_images(data_dir):
    from reslab.data.cifar import load_cifar10

    images, labels = load_cifar10(data_dir, "test")
    return images[:2000], labels[:2000]


def _torch_logits(images):
    from reslab.engine.export import Deployed
    from reslab.hub import weights_path
    from reslab.models.factory import load_weights
    from reslab.weights.trained import normalizer_from_metadata

    path = weights_path("resnet20.cifar10")
    model, meta = load_weights(path)
    net = Deployed(model, normalizer_from_metadata(meta, path)).eval()
    with torch.no_grad():
        return torch.cat([net(images[i : i + 500]) for i in range(0, len(images), 500)])


def test_onnx_export_matches_pytorch_on_real_images(test_images, tmp_path, capsys):
    import onnx
    import onnxruntime as ort

    out = tmp_path / "resnet20.onnx"
    assert main(["export", "resnet20.cifar10", "--format", "onnx", "--out", str(out)]) == 0
    assert "raw pixels uint8 0-255" in capsys.readouterr().out
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["classes"])[3] == "cat" and meta["input"].startswith("raw pixels uint8")
    images, labels = test_images
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ours = np.concatenate([session.run(None, {"pixels": images[i : i + 500].numpy()})[0] for i in range(0, 2000, 500)])  # fmt: skip
    reference = _torch_logits(images).numpy()
    # one forward pass by other kernels (onnxruntime's, summing in another order): equal to
    # float32 rounding, which scales with the logits (4e-7 of the largest on an Intel Xeon); a wrong
    # export (normalisation, channel order, a layer) moves them by whole units
    assert np.abs(ours - reference).max() <= 1e-5 * np.abs(reference).max()
    agree = (ours.argmax(1) == reference.argmax(1)).mean()
    assert agree >= 0.999, agree
    error = 100 * (ours.argmax(1) != labels.numpy()).mean()
    assert error < 12  # the 8.44% net, on the first 2,000 test images


def test_torchscript_and_exported_program_agree(test_images, tmp_path):
    from reslab.engine.export import export

    images, _ = test_images
    x = images[:64]
    reference = _torch_logits(x)
    info = export("resnet20.cifar10", "torchscript", tmp_path / "r20.pt")
    scripted = torch.jit.load(info["file"])
    # one forward pass through the same ATen ops, at other batch sizes (5 below) where the CPU's
    # kernels may block the sums otherwise: equal to rounding (bit-identical on an Intel Xeon)
    torch.testing.assert_close(scripted(x), reference, rtol=1e-4, atol=1e-4)
    export("resnet20.cifar10", "exported-program", tmp_path / "r20.pt2")
    program = torch.export.load(str(tmp_path / "r20.pt2"))
    torch.testing.assert_close(program.module()(x[:5]), reference[:5], rtol=1e-4, atol=1e-4)
    bare = export("resnet20.cifar10", "onnx", tmp_path / "bare.onnx", bare=True)
    assert bare["input"].startswith("normalised float32")


def test_bench_infer_compares_the_runtimes(tmp_path, capsys):
    assert main(["bench", "infer", "--models", "resnet8", "--out", str(tmp_path)]) == 0
    (record,) = tmp_path.glob("*-cpu-infer.json")
    rows = json.loads(record.read_text())["results"]
    assert [r["batch_size"] for r in rows] == [1, 256]
    assert all(r["onnxruntime_fp32_images_per_s"] > 0 and r["bf16_ratio"] > 0 for r in rows)
    assert "onnxruntime" in capsys.readouterr().out
