"""Failures end as a clear, safe stop: a user's mistake is one line with exit code 2 and nothing
lost; a bug of reslab's keeps its traceback. One test per finding of the reliability review."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from reslab.cli import main
from reslab.config import load_config
from reslab.engine import fit
from reslab.engine.checkpoint import atomic_save, atomic_write, list_checkpoints, load_checkpoint
from reslab.errors import ConfigError, DivergedError, RunError


def _tiny_args(data_dir, out, *extra):
    sets = [
        "model.name=resnet8", "train.iterations=6", "optim.milestones=[3]", "train.log_every=2",
        "train.eval_every=0", "train.batch_size=32", "train.checkpoint_every=2",
        "data.eval_split=val5k", "data.split=train45k", *extra,
    ]  # fmt: skip
    args = ["train", "cifar10/resnet20", "--out", str(out), "--data-dir", str(data_dir)]
    return [*args, "--no-progress", *[a for s in sets for a in ("--set", s)]]


# ---- errors: one line for the user's, a traceback for ours --------------------------------------


def test_an_internal_error_keeps_its_traceback(monkeypatch, capsys):
    import importlib

    complexity = importlib.import_module("reslab.models.complexity")

    def broken(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(complexity, "format_table", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["info", "resnet20"])
    assert main(["train", "cifar10/resnet20", "--set", "optim.lr=.nan"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "optim.lr: nan is not a finite number" in err


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("optim.lr=.nan", "optim.lr: nan is not a finite number"),
        ("optim.lr=.inf", "optim.lr: inf is not a finite number"),
        ("optim.weight_decay=.nan", "optim.weight_decay: nan is not a finite number"),
        ("optim.warmup_lr=-.inf", "optim.warmup_lr: -inf is not a finite number"),
        ("optim.momentum=5", r"optim.momentum: 5.0 must be >= 0 and < 1"),
        ("optim.gamma=-1", r"optim.gamma: -1.0 must be > 0 and <= 1"),
        ("train.seed=-1", r"train.seed: -1 must be >= 0"),
        ("data.pad=-2", r"data.pad: -2 must be >= 0"),
        ("train.compile=on", "train.compile: 'on' is invalid; valid choices: auto, true, false"),
    ],
)
def test_non_finite_and_out_of_range_values_are_refused(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("cifar10/resnet20", [override])


def test_scientific_notation_parses():
    cfg = load_config("cifar10/resnet20", ["optim.lr=1e-3", "optim.weight_decay=5E-4"])
    assert cfg.optim.lr == 0.001 and cfg.optim.weight_decay == 0.0005


def test_bad_config_files_are_named(tmp_path):
    duplicate = tmp_path / "dup.yaml"
    duplicate.write_text("model:\n  name: resnet20\noptim:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml.*duplicate key 'lr'"):
        load_config(duplicate)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [resnet20\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML.*line"):
        load_config(broken)
    binary = tmp_path / "weights.yaml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match=r"weights\.yaml is not a text file"):
        load_config(binary)


def test_negative_limits_and_topk_are_refused(capsys, tmp_path):
    from reslab.engine.evaluate import evaluate_weights

    for argv in (["eval", str(tmp_path), "--limit", "-5"], ["predict", "x", "y", "--topk", "0"]):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
        assert "must be >=" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--limit -5 must be >= 0"):
        evaluate_weights(tmp_path, limit=-5)


# ---- runs: divergence, locks, resume rules, damaged checkpoints ---------------------------------


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(
    tiny_config, tmp_path, after_each_step
):
    """NaN weights from iteration 7 on: the run stops at the next check (the log at 8), names the
    iteration and the lr, leaves the checkpoint of iteration 6 as it was and writes no final
    weights."""
    cfg = tiny_config(**{"train.checkpoint_every": 3, "train.eval_every": 0})

    def poison(n, model):
        if n >= 7:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))

    after_each_step(poison)
    run = tmp_path / "run"
    with pytest.raises(DivergedError, match=r"diverged by iteration 8 \(lr 0.001\).*ckpt_0000006"):
        fit(cfg, run, progress=False)
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == [
        "ckpt_0000003.pt",
        "ckpt_0000006.pt",
    ]
    good = load_checkpoint(run / "checkpoints" / "ckpt_0000006.pt")
    assert all(torch.isfinite(t).all() for t in good["model"].values())
    for name in ("model.safetensors", "summary.json", "checkpoints/final.pt", ".lock"):
        assert not (run / name).exists(), name
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "diverged" and events[-1]["iteration"] == 8


def test_a_huge_learning_rate_exits_2_without_weights(data_dir, tmp_path, capsys):
    out = tmp_path / "lr"
    assert main(_tiny_args(data_dir, out, "optim.lr=1e6")) == 2
    err = capsys.readouterr().err
    assert re.match(
        r"reslab train: error: training diverged by iteration \d+ \(lr (1e\+06|100000)\)", err
    )
    assert err.count("\n") == 1 and "start over with --restart" in err
    assert not (out / "model.safetensors").exists() and not (out / "summary.json").exists()


def test_a_second_process_on_the_same_run_is_refused(tiny_config, tmp_path):
    from reslab.engine.rundir import RunLock

    run = tmp_path / "run"
    with RunLock(run), pytest.raises(RunError, match=rf"in use by another reslab process \(pid {os.getpid()}\)"):  # fmt: skip
        fit(tiny_config(), run, progress=False)
    assert not list_checkpoints(run / "checkpoints")  # nothing was written


def test_a_killed_process_does_not_leave_the_lock_stuck(tmp_path):
    from reslab.engine.rundir import RunLock

    code = (
        "import sys, time; from reslab.engine.rundir import RunLock; "
        "lock = RunLock(sys.argv[1]).__enter__(); print('locked', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"locked"
    with pytest.raises(RunError, match="in use"), RunLock(tmp_path):
        pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with RunLock(tmp_path):  # the kernel dropped the dead process's lock
        assert (tmp_path / ".lock").read_text() == str(os.getpid())
    assert not (tmp_path / ".lock").exists()


def test_a_run_of_another_config_is_refused_naming_the_keys(
    tiny_config, tmp_path, monkeypatch, interrupt_after
):
    run = tmp_path / "run"
    interrupt_after(4)
    assert fit(tiny_config(), run, progress=False)["status"] == "interrupted"
    monkeypatch.undo()
    changed = tiny_config(**{"train.batch_size": 16, "optim.lr": 0.05})
    with pytest.raises(RunError, match=r"optim.lr: 0.1 -> 0.05; train.batch_size: 32 -> 16"):
        fit(changed, run, progress=False)
    # without config.yaml the checkpoint's own config decides
    (run / "config.yaml").unlink()
    with pytest.raises(RunError, match="different config"):
        fit(changed, run, progress=False)
    restarted = fit(changed, run, restart=True, progress=False)
    assert restarted["status"] == "finished" and restarted["batch_size"] == 16
    # a finished run is returned only for its own config
    assert fit(changed, run, progress=False)["date"] == restarted["date"]
    with pytest.raises(RunError, match=r"train\.batch_size: 16 -> 32"):
        fit(tiny_config(**{"optim.lr": 0.05}), run, progress=False)


def test_reproduce_refuses_a_changed_set_and_restarts_on_request(data_dir, tmp_path, capsys):
    base = [
        "reproduce", "table6", "--schedule", "1/12800", "--only", "resnet20",
        "--results", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs"),
        "--data-dir", str(data_dir), "--no-progress", "--set", "train.eval_every=0",
        "--set", "data.eval_split=val5k", "--set", "data.split=train45k",
    ]  # fmt: skip
    run = tmp_path / "runs" / "table6" / "resnet20-seed0-sched1of12800"
    run.mkdir(parents=True)
    cfg = load_config(
        "cifar10/resnet20",
        ["train.iterations=5", "optim.milestones=[2,4]", "train.eval_every=0",
         "data.eval_split=val5k", "data.split=train45k", "name=table6/resnet20-seed0-sched1of12800",
         "train.checkpoint_every=1", "train.log_every=1", f"data.data_dir={data_dir}",
         "train.batch_size=64"],
    )  # fmt: skip
    atomic_save({"config": cfg.to_dict()}, run / "checkpoints" / "ckpt_0000002.pt")
    assert main(base) == 2
    assert "train.batch_size: 64 -> 128" in capsys.readouterr().err
    assert main([*base, "--restart"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["batch_size"] == 128 and summary["iterations"] == 5


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous(
    tiny_config, tmp_path, monkeypatch, interrupt_after
):
    cfg = tiny_config(**{"train.keep_checkpoints": 3})
    straight = fit(cfg, tmp_path / "straight", progress=False)
    run = tmp_path / "run"
    interrupt_after(7)
    fit(cfg, run, progress=False)
    monkeypatch.undo()
    newest = run / "checkpoints" / "ckpt_0000007.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # a crash outside reslab truncated it
    (run / "checkpoints" / ".ckpt_0000008.pt.abc.tmp").write_bytes(b"half")  # a killed writer
    with pytest.warns(UserWarning, match=r"ckpt_0000007\.pt \(truncated or corrupt.*previous"):
        resumed = fit(cfg, run, progress=False)
    assert resumed["test_error"] == straight["test_error"]
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "final.pt")["model"]
    b = load_checkpoint(run / "checkpoints" / "final.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((run / "checkpoints").glob("*.tmp"))


def test_a_full_disk_is_named_and_the_old_file_kept(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    target.write_text("old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(RunError, match=rf"cannot write {target}: No space left on device"):
        atomic_write(target, b"new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_summaries_are_strict_json():
    from reslab.engine.logging import json_bytes

    text = json_bytes({"train_loss": float("nan"), "runs": [float("inf"), 1.5]}).decode()
    assert json.loads(text) == {"train_loss": None, "runs": [None, 1.5]} and "NaN" not in text


@pytest.mark.slow
def test_sigterm_under_the_cli_checkpoints_and_resumes(data_dir, tmp_path):
    """A real signal to a real process: exit 130 with a checkpoint, then the same command ends."""
    cmd = [sys.executable, "-m", "reslab", *_tiny_args(data_dir, tmp_path / "r", "train.iterations=400")]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = tmp_path / "r" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.is_file() and '"train_loss"' in metrics.read_text()):  # training has begun
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 130
    assert subprocess.run(cmd, capture_output=True).returncode == 0
