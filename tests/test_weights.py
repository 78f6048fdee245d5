"""The one weights loader: complete architectures recorded, other layouts refused by name, damaged
files and metadata named; ``reslab predict`` over a folder with bad files in it."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from reslab.cli import main
from reslab.errors import WeightsError
from reslab.models import create_model
from reslab.models.factory import load_model, load_weights, save_weights
from reslab.weights.files import read_metadata

CIFAR_META = {
    "dataset": "cifar10",
    "normalization": "pixel",
    "normalize_mean": [0.5] * 3,
    "normalize_std": [1.0],
    "normalize_shape": [1, 3, 1, 1],
    "classes": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    "input_size": [3, 32, 32],
}  # fmt: skip


def _save(tmp_path, name="resnet8", **options):
    path = tmp_path / f"{name}.safetensors"
    save_weights(create_model(name, **options), path, name, **CIFAR_META)
    return path


def test_weights_record_the_complete_architecture(tmp_path):
    meta = read_metadata(_save(tmp_path))
    assert json.loads(meta["model_options"]) == {
        "block": "basic", "shortcut": "A", "shortcut_pad": "after", "zero_init_residual": False,
        "num_classes": 10, "in_chans": 3,
    }  # fmt: skip
    arch = json.loads(meta["architecture"])
    assert arch["depth"] == 8 and arch["residual"] and arch["family"] == "cifar"
    model, _ = load_weights(tmp_path / "resnet8.safetensors")
    assert model.arch == create_model("resnet8").arch


@pytest.mark.parametrize(
    ("saved", "asked", "words"),
    [
        (("resnet50", {"stride_in": "3x3"}), ("resnet50", {}), ("stride_in=3x3", "stride_in=1x1")),
        (("resnet8", {"shortcut_pad": "both"}), ("resnet8", {}), ("pad=both", "pad=after")),
        (
            ("resnet8", {"shortcut": "B"}),
            ("resnet8", {"shortcut": "A"}),
            ("shortcut=B", "shortcut=A"),
        ),
        (("resnet8", {}), ("plain8", {}), ("residual=True", "residual=False")),
    ],
)
def test_another_layout_is_refused_naming_both(tmp_path, saved, asked, words):
    """The shapes agree in every case: only the recorded layout tells them apart."""
    name, options = saved
    path = tmp_path / "w.safetensors"
    save_weights(create_model(name, **options), path, name, **CIFAR_META)
    with pytest.raises(WeightsError, match=rf"holds {name} \(.*{words[0]}.*not the {asked[0]} asked for \(.*{words[1]}"):  # fmt: skip
        load_model(asked[0], path, **asked[1])
    assert load_model(name, path, **options).arch == create_model(name, **options).arch


def test_damaged_files_and_metadata_are_named(tmp_path, capsys):
    path = _save(tmp_path)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:5000])
    not_weights = tmp_path / "notes.safetensors"
    not_weights.write_text("hello, this is not a weights file")
    for bad in (truncated, not_weights):
        assert main(["eval", str(bad)]) == 2
        err = capsys.readouterr().err
        assert f"{bad} is not a readable safetensors file" in err and err.count("\n") == 1
    from safetensors.torch import load_file, save_file

    meta = read_metadata(path)
    broken = tmp_path / "broken.safetensors"
    save_file(load_file(str(path)), str(broken), metadata={**meta, "model_options": "{shortcut"})
    with pytest.raises(WeightsError, match=r"broken.safetensors: metadata 'model_options' is not valid JSON"):  # fmt: skip
        load_weights(broken)
    short = tmp_path / "short.safetensors"
    save_file(load_file(str(path)), str(short), metadata={**meta, "classes": '["cat", "dog"]'})
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(image)
    assert main(["predict", str(short), str(image)]) == 2
    assert "names 2 classes but the model has 10 outputs" in capsys.readouterr().err


def test_wrong_keys_and_shapes_are_listed(tmp_path):
    torch.save(create_model("resnet20").state_dict(), tmp_path / "r20.pt")
    with pytest.raises(WeightsError, match=r"r20.pt does not hold resnet8 weights: unexpected keys layer1.1"):  # fmt: skip
        load_model("resnet8", tmp_path / "r20.pt")
    state = create_model("resnet8").state_dict()
    state["fc.weight"] = torch.zeros(5, 64)
    del state["fc.bias"]
    torch.save(state, tmp_path / "r8.pt")
    with pytest.raises(WeightsError, match=r"missing keys fc.bias; wrong shapes: fc.weight \(file \(5, 64\), model \(10, 64\)\)"):  # fmt: skip
        load_model("resnet8", tmp_path / "r8.pt")


def test_predict_on_a_mixed_folder_predicts_the_good_images(tmp_path, capsys):
    weights = _save(tmp_path)
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (40, 30), colour).save(folder / f"good{i}.png")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "sub" / "text.jpeg").write_text("not an image")
    assert main(["predict", str(weights), str(folder), "--topk", "2"]) == 0
    out, err = capsys.readouterr()
    assert [line.split(":")[0] for line in out.splitlines()] == [
        str(folder / f"good{i}.png") for i in range(3)
    ]
    assert all(line.count("%") == 2 for line in out.splitlines())
    assert f"skipped {folder / 'empty.jpg'}: cannot read image" in err
    assert f"skipped {folder / 'sub' / 'text.jpeg'}: cannot read image" in err
    # a single file that is no image is an error of one line
    assert main(["predict", str(weights), str(folder / "empty.jpg")]) == 2
    assert "cannot read image" in capsys.readouterr().err
