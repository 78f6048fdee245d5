"""The package as users get it: a wheel holding the recipes (and the weights index), installed into
a fresh virtual environment, trains a config by name."""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _uv() -> list[str]:
    """uv as the README's commands find it (installed from PyPI when it was missing)."""
    found = shutil.which("uv")
    return [found] if found else ["python3", "-m", "uv"]


def test_the_wheel_installs_and_trains_a_config_by_name(data_dir, tmp_path, http_server):
    built = subprocess.run([*_uv(), "build", "--wheel", "-o", str(tmp_path / "dist"), str(REPO)], capture_output=True, text=True)  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("reslab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "reslab/configs/cifar10/resnet20.yaml" in names
    assert "reslab/configs/base/cifar10.yaml" in names and "reslab/hub/index.json" in names
    # a fresh environment; the heavy dependencies (torch, ...) come from this one, not the network
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    target = next((venv / "lib").glob("python3.*/site-packages"))
    with zipfile.ZipFile(wheel) as z:
        z.extractall(target)  # a wheel is a zip of the package: its plain install
    (target / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    code = (
        "import sys, reslab.config as c; from reslab.cli import main; "
        "assert 'site-packages' in c.__file__, c.__file__; sys.exit(main(sys.argv[1:]))"
    )
    out = tmp_path / "run"
    args = ["train", "cifar10/resnet20", "--set", "train.iterations=2", "--set", "train.log_every=1",
            "--set", "train.eval_every=0", "--set", "train.tensorboard=false",
            "--set", "data.eval_split=val5k", "--set", "data.split=train45k", "--data-dir", str(data_dir), "--out", str(out), "--no-progress"]  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no PYTHONPATH: only the wheel's reslab
    result = subprocess.run([str(venv / "bin" / "python"), "-c", code, *args], capture_output=True, text=True, env=env, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and '"iterations": 2' in result.stdout
    # the ledger's weights by name: listed with their errors, fetched from where they are served
    listed = subprocess.run([str(venv / "bin" / "python"), "-c", code, "weights", "list"], capture_output=True, text=True, env=env)  # fmt: skip
    summary = REPO / "results" / "table6" / "resnet20-seed0" / "summary.json"
    error = json.loads(summary.read_text())["test_error"]  # the ledger's, not typed in
    assert "resnet20.cifar10_seed0" in listed.stdout, listed.stderr[-2000:]
    assert f"{error:.2f}%" in listed.stdout
    from PIL import Image

    from reslab.data.cifar import CLASSES, load_cifar10

    images, labels = load_cifar10(data_dir, "test")
    Image.fromarray(images[0].permute(1, 2, 0).numpy()).save(tmp_path / "test0.png")
    server = http_server(REPO / "results")
    env = {**env, "RESLAB_WEIGHTS_URL": server.url}
    predicted = subprocess.run([str(venv / "bin" / "python"), "-c", code, "predict", "resnet20.cifar10", str(tmp_path / "test0.png"), "--topk", "1"], capture_output=True, text=True, env=env)  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert predicted.stdout.split(": ")[1].split()[0] == CLASSES[int(labels[0])]  # cat
    assert list((tmp_path / ".cache" / "reslab" / "weights").glob("*.safetensors"))  # cached
