"""Weights by name: the index generated from the ledger, loading by name, downloads verified by
checksum (against a local HTTP server), torchvision's weights in their own layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reslab import hub
from reslab.cli import main
from reslab.errors import MissingFileError, WeightsError
from reslab.models import create_model
from reslab.models.factory import load_weights, save_weights

REPO = Path(__file__).resolve().parents[1]
LEDGER_R20 = REPO / "results" / "table6" / "resnet20-seed0" / "model.safetensors"
# what the ledger says of that run (read, not typed in: a new run of it must not break the tests)
LEDGER_R20_ERROR = json.loads((LEDGER_R20.parent / "summary.json").read_text())["test_error"]


def test_a_name_loads_the_ledger_weights_it_names():
    entry = hub.resolve("resnet20", "cifar10")
    assert entry["name"] == "resnet20.cifar10_seed0" and entry["ledger"] == "table6/resnet20-seed0"
    assert entry["sha256"] == hub.sha256(LEDGER_R20) and entry["test_error"] == LEDGER_R20_ERROR
    model = create_model("resnet20", weights="cifar10")
    reference, _ = load_weights(LEDGER_R20)
    for (k, a), b in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    with pytest.raises(WeightsError, match=r"resnet20.cifar10_seed0 holds the layout \{.*'shortcut': 'A'.*\}; \{'shortcut': 'B'\} was asked for"):  # fmt: skip
        create_model("resnet20", weights="cifar10", shortcut="B")
    with pytest.raises(WeightsError, match=r"no weights named 'resnet20.imagenet22k'; available: .*resnet20.cifar10"):  # fmt: skip
        create_model("resnet20", weights="imagenet22k")


def test_the_index_holds_only_runs_that_re_evaluate_to_their_claim(data_dir, tmp_path):
    from reslab.engine.evaluate import evaluate_weights
    from reslab.experiments.index import build_index

    results = tmp_path / "results"
    for run, claim_offset in (("good-seed0", 0.0), ("bad-seed1", 3.0)):
        folder = results / "table6" / f"resnet8-{run}"
        folder.mkdir(parents=True)
        torch.manual_seed(len(run))
        meta = {"classes": [str(i) for i in range(10)], "normalize_mean": [0.5] * 3,
                "normalize_std": [0.25], "normalize_shape": [1, 3, 1, 1], "dataset": "cifar10"}  # fmt: skip
        save_weights(create_model("resnet8"), folder / "model.safetensors", "resnet8", **meta)
        measured = evaluate_weights(folder, data_dir=data_dir)["test_error"]
        summary = {"status": "finished", "experiment": "table6", "model": "resnet8", "seed": int(run[-1]),
                   "schedule": "paper", "device": "CPU test", "test_error": measured + claim_offset,
                   "train_error": 50.0, "wall_time_s": 1, "precision": "bf16", "dataset": "cifar10"}  # fmt: skip
        (folder / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "index.json"
    first = build_index(results, out=out)
    assert first["entries"] == {} and "not re-evaluated yet" in first["skipped"]["table6/resnet8-good-seed0"]  # fmt: skip
    index = build_index(results, verify=True, data_dir=str(data_dir), out=out)
    assert list(index["entries"]) == ["resnet8.cifar10_seed0"]
    assert index["aliases"] == {"resnet8.cifar10": "resnet8.cifar10_seed0"}
    assert "re-evaluates to" in index["skipped"]["table6/resnet8-bad-seed1"]
    assert json.loads((results / "table6" / "resnet8-good-seed0" / "reeval.json").read_text())["images"] == 10000  # fmt: skip
    hub.index.cache_clear()


def test_downloads_are_verified_and_never_left_half_written(tmp_path, monkeypatch, http_server):
    served = tmp_path / "served"
    (served / "table6" / "resnet20-seed0").mkdir(parents=True)
    (served / "table6" / "resnet20-seed0" / "model.safetensors").write_bytes(
        LEDGER_R20.read_bytes()
    )
    server = http_server(served)
    monkeypatch.setattr(hub, "CHECKOUT_RESULTS", tmp_path / "no-checkout")  # as an installed wheel
    monkeypatch.setenv("RESLAB_CACHE", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / "weights"
    entry = hub.resolve("resnet20.cifar10")

    monkeypatch.setenv("RESLAB_WEIGHTS_URL", "http://127.0.0.1:9")  # nothing listens: offline
    with pytest.raises(MissingFileError, match=r"cannot download http://127.0.0.1:9/table6/resnet20-seed0/model.safetensors"):  # fmt: skip
        hub.weights_file(entry)
    assert not any(cache.iterdir())

    monkeypatch.setenv("RESLAB_WEIGHTS_URL", server.url)
    server.mode = "truncate"  # the connection ends halfway
    with pytest.raises(MissingFileError, match="the connection ended after"):
        hub.weights_file(entry)
    assert not any(cache.iterdir())

    server.mode = "whole"
    (served / "table6" / "resnet20-seed0" / "model.safetensors").write_bytes(b"x" + LEDGER_R20.read_bytes()[1:])  # fmt: skip
    with pytest.raises(WeightsError, match="does not have the recorded sha256"):
        hub.weights_file(entry)
    assert not any(cache.iterdir())

    (served / "table6" / "resnet20-seed0" / "model.safetensors").write_bytes(
        LEDGER_R20.read_bytes()
    )
    path = hub.weights_file(entry)
    assert path.parent == cache and hub.sha256(path) == entry["sha256"]
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temporary left
    server.httpd.shutdown()
    assert hub.weights_file(entry) == path  # from the cache now, no server needed


def test_torchvision_weights_load_offline_in_their_own_layout(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("RESLAB_TORCHVISION_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    torch.manual_seed(0)
    source = torchvision.models.resnet50().eval()
    torch.save(source.state_dict(), tmp_path / "resnet50-0676ba61.pth")  # torchvision's file name
    model = create_model("resnet50", weights="imagenet").eval()
    assert model.arch["stride_in"] == "3x3"
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x))
    with pytest.raises(WeightsError, match=r"resnet50.imagenet holds the layout \{'stride_in': '3x3'\}"):  # fmt: skip
        create_model("resnet50", weights="imagenet", stride_in="1x1")
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(MissingFileError, match=r"cannot download https://download.pytorch.org/models/resnet18-f37072fd\.pth .*offline, put resnet18-f37072fd\.pth in"):  # fmt: skip
        create_model("resnet18", weights="imagenet")


def test_weights_list_and_predict_by_name(data_dir, tmp_path, capsys):
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "resnet20.cifar10_seed0" in out and f"{LEDGER_R20_ERROR:.2f}%" in out
    assert "resnet50.imagenet" in out
    from PIL import Image

    from reslab.data.cifar import CLASSES, load_cifar10

    images, _ = load_cifar10(data_dir, "test")
    Image.fromarray(images[3].permute(1, 2, 0).numpy()).save(tmp_path / "test3.png")
    assert main(["predict", "resnet20.cifar10", str(tmp_path / "test3.png"), "--topk", "1"]) == 0
    line = capsys.readouterr().out
    assert line.split(": ")[1].split()[0] in CLASSES
