"""Run folders and their files under faults (issue 24): links are never written through, damaged
files and unusable --out paths are one line naming them, a full disk or a file size limit leaves no
half-written file, and Ctrl-C outside training is one line. Each test fails on d337bd9."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from reslab.cli import main
from reslab.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def _train_args(data_dir, out, *extra):
    """``reslab train`` of a 6-iteration ResNet-8 (checkpoints at 2 and 4, no evaluation)."""
    sets = [
        "model.name=resnet8",
        "train.iterations=6",
        "optim.milestones=[3]",
        "train.log_every=2",
        "train.eval_every=0",
        "train.batch_size=32",
        "train.checkpoint_every=2",
        "train.tensorboard=false",
        "data.eval_split=val5k",
        "data.split=train45k",
        *extra,
    ]
    args = ["train", "cifar10/resnet20", "--out", str(out), "--data-dir", str(data_dir)]
    return [*args, "--no-progress", *[a for s in sets for a in ("--set", s)]]


def _one_line_error(capsys, *names: str) -> str:
    """The command's error: one line, naming each of ``names``."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reslab "), lines
    assert all(name in lines[0] for name in names), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    """A finished run folder (copy it before damaging it)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(_train_args(data_dir, run)) == 0
    return run


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


# ---- 1. links ------------------------------------------------------------------------------------


def test_links_in_a_run_folder_are_never_written_through(data_dir, tmp_path, capsys):
    run, outside = tmp_path / "run", tmp_path / "outside"
    run.mkdir()
    outside.mkdir()
    (run / "checkpoints").mkdir()
    targets = {}
    for name in (
        ".lock",
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "model.safetensors",
        "checkpoints/ckpt_0000002.pt",
    ):
        targets[name] = outside / name.replace("/", "_")
        targets[name].write_bytes(b"PK\x03\x04 precious " + name.encode())  # a damaged zip
        (run / name).symlink_to(targets[name])

    def unchanged():
        return all(
            p.read_bytes() == b"PK\x03\x04 precious " + n.encode() for n, p in targets.items()
        )

    assert main(_train_args(data_dir, run)) == 2  # the lock: refused
    _one_line_error(capsys, str(run / ".lock"), "symbolic link")
    assert unchanged() and (run / ".lock").is_symlink()

    (run / ".lock").unlink()
    assert main(_train_args(data_dir, run)) == 2  # the log: refused
    _one_line_error(capsys, str(run / "metrics.jsonl"), "symbolic link")
    assert unchanged() and not (run / ".lock").exists()

    (run / "metrics.jsonl").unlink()
    assert main(_train_args(data_dir, run)) == 0  # the others: replaced
    capsys.readouterr()
    assert unchanged()
    for name in ("config.yaml", "summary.json", "model.safetensors", "checkpoints/ckpt_0000002.pt"):
        assert (run / name).is_file() and not (run / name).is_symlink(), name
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


def test_restart_removes_a_linked_checkpoint_folder_not_its_files(tmp_path):
    from reslab.engine.rundir import start_over

    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run.mkdir()
    elsewhere.mkdir()
    (elsewhere / "ckpt_0000002.pt").write_text("kept")
    (run / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
    start_over(run)
    assert not (run / "checkpoints").exists() and (elsewhere / "ckpt_0000002.pt").is_file()


# ---- 2. damaged files ----------------------------------------------------------------------------

JUNK = {"truncated": b'{"status": "finished", "test_err', "binary": bytes(range(256)) * 4}


@pytest.mark.parametrize("junk", ["truncated", "binary", "not an object"])
@pytest.mark.parametrize("name", ["summary.json", "config.yaml"])
def test_a_damaged_summary_or_config_is_named(finished_run, data_dir, tmp_path, capsys, name, junk):
    run = _copy(finished_run, tmp_path / "run")
    if junk == "not an object":
        data = b"[1, 2]\n" if name == "summary.json" else b"- just\n- a list\n"
    elif name == "config.yaml" and junk == "truncated":
        data = (run / name).read_bytes()[:-40] + b"\n  [unclosed: {"
    else:
        data = JUNK[junk]
    (run / name).write_bytes(data)
    assert main(_train_args(data_dir, run)) == 2
    _one_line_error(capsys, str(run / name), "--restart")
    assert (run / name).read_bytes() == data  # left for the user to look at


@pytest.mark.parametrize("junk", ["truncated", "binary", "a number"])
def test_a_damaged_log_is_named_when_a_run_resumes(finished_run, data_dir, tmp_path, capsys, junk):
    run = _copy(finished_run, tmp_path / "run")
    (run / "summary.json").unlink()  # not finished: it resumes from its checkpoint at 4
    log = run / "metrics.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    bad = {"truncated": b'{"iteration": 2, "tra\n', "binary": JUNK["binary"] + b"\n"}
    log.write_bytes(b"".join([lines[0], bad.get(junk, b"17\n"), *lines[1:]]))
    assert main(_train_args(data_dir, run)) == 2
    _one_line_error(capsys, str(log), "line 2", "--restart")


def test_a_torn_last_log_line_is_still_tolerated(finished_run, data_dir, tmp_path, capsys):
    """Kept as it was (so this one passes on d337bd9 too)."""
    from reslab.engine.logging import read_jsonl

    run = _copy(finished_run, tmp_path / "run")
    (run / "summary.json").unlink()
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b'{"iteration": 5, "train_lo')  # a crash while appending
    assert read_jsonl(run / "metrics.jsonl")[-1]["iteration"] == 6
    assert main(_train_args(data_dir, run)) == 0
    records = read_jsonl(run / "metrics.jsonl")  # every line is whole again
    assert (run / "metrics.jsonl").read_bytes().endswith(b"}\n")
    assert any(r.get("event") == "resume" for r in records)


def test_read_jsonl_names_a_damaged_line(tmp_path):
    from reslab.engine.logging import read_jsonl

    log = tmp_path / "metrics.jsonl"
    log.write_bytes(b'{"iteration": 1}\n\xff\xfe junk\n{"iteration": 2}\n{"iter')
    with pytest.raises(DataError, match=rf"{log}, line 2, is not a JSON record"):
        read_jsonl(log)
    log.write_bytes(b'{"iteration": 1}\n{"iteration": 2}\n{"iter')
    assert read_jsonl(log) == [{"iteration": 1}, {"iteration": 2}]


@pytest.mark.parametrize("junk", [b"\x00\x01 junk", b'{"status": "finished", "experi', b"[]"])
def test_report_names_a_damaged_ledger_summary(finished_run, tmp_path, capsys, junk):
    results = tmp_path / "results"
    good = json.loads((finished_run / "summary.json").read_text())
    good.update(experiment="table6", model="resnet8", schedule="1/12800")
    (results / "table6" / "resnet8").mkdir(parents=True)
    (results / "table6" / "resnet8" / "summary.json").write_text(json.dumps(good))
    damaged = results / "table6" / "resnet8-seed1" / "summary.json"
    damaged.parent.mkdir()
    damaged.write_bytes(junk)
    assert main(["report", "--results", str(results)]) == 2
    _one_line_error(capsys, str(damaged), "git restore")
    damaged.write_text(json.dumps({**good, "test_error": "n/a"}))  # valid JSON, a bad value
    assert main(["report", "--results", str(results)]) == 2
    _one_line_error(capsys, str(damaged), "test_error")
    damaged.unlink()
    assert main(["report", "--results", str(results)]) == 0
    assert "resnet8" in (results / "README.md").read_text()


def test_report_names_a_damaged_benchmark_record(tmp_path, capsys):
    record = tmp_path / "results" / "bench" / "train.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"kind": "train", "resu')
    assert main(["report", "--results", str(tmp_path / "results")]) == 2
    _one_line_error(capsys, str(record))


# ---- 3. --out paths that cannot be a folder ------------------------------------------------------


@pytest.mark.parametrize("case", ["a file", "under a file", "a name too long"])
def test_an_unusable_out_is_named(data_dir, tmp_path, capsys, case):
    (tmp_path / "file").write_text("mine")
    out = {
        "a file": tmp_path / "file",
        "under a file": tmp_path / "file" / "run",
        "a name too long": tmp_path / ("r" * 300),
    }[case]
    assert main(_train_args(data_dir, out)) == 2
    _one_line_error(capsys, str(out), "--out")
    assert (tmp_path / "file").read_text() == "mine"


# ---- 4. a full disk, a file size limit -----------------------------------------------------------


@pytest.mark.parametrize(
    "name", [".lock", "config.yaml", "metrics.jsonl", "checkpoints/ckpt_0000002.pt"]
)
def test_a_full_disk_names_the_file_and_leaves_nothing_half_written(
    data_dir, tmp_path, capsys, monkeypatch, name
):
    run = tmp_path / "run"
    real_write, basename = os.write, Path(name).name

    def full_for_that_file(fd, data):
        if basename in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_for_that_file)
    assert main(_train_args(data_dir, run)) == 2
    _one_line_error(capsys, f"cannot write {run / name}: No space left on device")
    assert not (run / name).exists()
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp") or p.name == ".lock"]
    assert all(p.stat().st_size > 0 for p in run.rglob("*") if p.is_file())


def test_a_file_size_limit_names_the_file(data_dir, tmp_path):
    """``ulimit -f``: the kernel's SIGXFSZ would kill reslab without a word; the write that passes
    the limit fails instead (a ResNet-8 checkpoint is ~0.7 MB, config and log a few kB)."""
    run, limit = tmp_path / "run", 200_000
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env["PYTHONPATH"] = str(REPO / "src")
    proc = subprocess.run(
        [sys.executable, "-m", "reslab", *_train_args(data_dir, run)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    errors = [x for x in proc.stderr.splitlines() if x.startswith("reslab train")]
    ckpt = run / "checkpoints" / "ckpt_0000002.pt"
    assert errors == [
        f"reslab train: error: cannot write {ckpt}: File too large; {ckpt} was left "
        "as it was. Raise the file size limit (`ulimit -f unlimited`) and run the "
        "same command again"
    ]
    assert not ckpt.exists() and not list(run.rglob("*.tmp"))
    assert (run / "config.yaml").is_file() and not (run / ".lock").exists()


# ---- 5. Ctrl-C outside training ------------------------------------------------------------------


def test_ctrl_c_during_eval_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    import importlib

    evaluate = importlib.import_module("reslab.engine.evaluate")  # the module, not the function

    def interrupted(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)  # the default handler: KeyboardInterrupt

    monkeypatch.setattr(evaluate, "evaluate_weights", interrupted)
    try:
        code = main(["eval", str(tmp_path / "model.safetensors")])
    except KeyboardInterrupt:
        pytest.fail("the KeyboardInterrupt escaped reslab eval with its traceback")
    assert code == 130
    assert capsys.readouterr().err == "reslab eval: interrupted\n"
