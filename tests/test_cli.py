"""The ``reslab`` command line: info/list output, errors with exit code 2, eval's JSON line; bench's
keyword arguments; parsing without torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from reslab.cli import main


def test_info_prints_the_table(capsys):
    assert main(["info", "resnet34", "--shortcut", "A"]) == 0
    out = capsys.readouterr().out
    assert "21,623,848" in out and "3,644,493,824" in out
    assert "layer4   512x7x7" in out and "3 x [3x3, 512; 3x3, 512]" in out


def test_list_filters(capsys):
    assert main(["list", "plain*"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == [
        "plain18",
        "plain34",
        "plain50",
        "plain101",
        "plain152",
        "plain20",
        "plain32",
        "plain44",
        "plain56",
        "plain110",
    ]


def test_errors_exit_2_with_a_message(capsys, tmp_path):
    assert main(["info", "resnet21"]) == 2
    assert "unknown model 'resnet21'" in capsys.readouterr().err
    assert main(["train", "cifar10/resnet20", "--set", "train.iteratoins=5"]) == 2
    assert "unknown config key 'train.iteratoins'" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2
    assert "no weights at" in capsys.readouterr().err
    missing = [
        "train",
        "cifar10/resnet20",
        "--data-dir",
        str(tmp_path / "nodata"),
        "--out",
        str(tmp_path / "r"),
    ]
    assert main([*missing, "--set", "train.iterations=1"]) == 2
    err = capsys.readouterr().err
    assert (
        "CIFAR-10 not found" in err and "nodata/cifar-10-batches-py" in err and "RESLAB_DATA" in err
    )


def test_train_then_eval_agree(data_dir, tmp_path, capsys):
    args = [
        "train",
        "cifar10/resnet20",
        "--out",
        str(tmp_path / "run"),
        "--data-dir",
        str(data_dir),
        "--no-progress",
    ]
    args += [
        "--set",
        "model.name=resnet8",
        "--set",
        "train.iterations=6",
        "--set",
        "optim.milestones=[3]",
    ]
    args += [
        "--set",
        "train.log_every=3",
        "--set",
        "train.eval_every=0",
        "--set",
        "train.batch_size=32",
    ]
    assert main(args) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["eval", str(tmp_path / "run"), "--data-dir", str(data_dir)]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert abs(evaluated["test_error"] - trained["test_error"]) < 0.05
    # predict: a real CIFAR test image saved as PNG gets CIFAR class names
    from PIL import Image

    from reslab.data.cifar import CLASSES, load_cifar10

    images, _ = load_cifar10(data_dir, "test")
    Image.fromarray(images[0].permute(1, 2, 0).numpy()).save(tmp_path / "cat.png")
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "cat.png"), "--topk", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(tmp_path / "cat.png")) and sum(c in line for c in CLASSES) >= 2
    # the same directory with another config is refused instead of silently mixed
    assert main([*args[:-2], "--set", "train.batch_size=64"]) == 2
    assert "different config" in capsys.readouterr().err


def test_demo_trains_and_reports_its_accuracy(data_dir, tmp_path, capsys):
    """``make demo``'s command on a short schedule: the last line states the test accuracy."""
    out = tmp_path / "demo"
    assert main(["demo", "--iterations", "8", "--data-dir", str(data_dir), "--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("reslab demo: CIFAR-10 test accuracy of ResNet-20 after 8 iterations: ")
    assert (out / "model.safetensors").is_file()


def test_the_cli_copies_of_library_names_are_the_librarys():
    """``reslab.cli`` copies names so that parsing imports neither torch nor the library."""
    from reslab import cli
    from reslab.engine import packed
    from reslab.experiments import reproduce

    assert cli.PACK_MODES == packed.MODES
    assert set(cli.EXPERIMENTS) == {*reproduce.EXPERIMENTS, *reproduce.SECTIONS, "fig7"}


def test_parsing_imports_no_torch():
    code = "import sys, reslab.cli; reslab.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("argv", "run", "options"),
    [
        (["data", "--data-dir", "d"], "data", {"data_dir": "d"}),
        (["data", "--workers", "0"], "data", {"workers": 0}),
        (["infer", "--models", "resnet8", "--device", "cuda"], "infer", {"models": ["resnet8"]}),
        (
            ["train", "--models", "resnet8", "--steps", "2", "--workers", "1"],
            "train",
            {
                "models": ["resnet8"],
                "device": "cpu",
                "steps": 2,
                "compile": "auto",
                "workers": 1,
                "cuda_graph": "auto",
            },
        ),
        (
            ["train", "--models", "resnet8", "--concurrent", "1", "2", "--pack", "stacked"],
            "concurrent",
            {
                "models": ["resnet8"],
                "concurrent": [1, 2],
                "device": "cpu",
                "steps": 20,
                "pack": ["stacked"],
            },
        ),
    ],
)
def test_bench_passes_each_kind_the_keyword_arguments_of_its_run(
    monkeypatch, tmp_path, capsys, argv, run, options
):
    """``reslab bench KIND`` calls the ``run`` of KIND's module with its own keyword arguments
    (the options not given are left to its defaults), and records where it measured."""
    import importlib

    calls = []
    for name in ("data", "infer", "train", "concurrent"):
        module = importlib.import_module(f"reslab.bench.{name}")
        monkeypatch.setattr(module, "run", lambda name=name, **kw: calls.append((name, kw)) or [])
    monkeypatch.setattr("reslab.bench.concurrent.choice", lambda rows: {})
    assert main(["bench", *argv, "--out", str(tmp_path)]) == 0
    assert calls == [(run, options)]
    kind = "train-concurrent" if run == "concurrent" else argv[0]
    assert [p.name.split("-", 3)[3] for p in tmp_path.glob("*.json")] == [f"cpu-{kind}.json"]
