"""Engine: the paper's optimiser and schedule, configs, checkpoints, bit-identical resume, learning."""

from __future__ import annotations

import json
import os
import pickle
import signal

import pytest
import torch

from reslab.config import ConfigError, load_config
from reslab.engine import PaperSGD, StepSchedule, fit, runtime
from reslab.engine.checkpoint import (
    CheckpointError,
    atomic_save,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from reslab.engine.logging import read_jsonl
from reslab.engine.optim import PlateauSchedule
from reslab.engine.runtime import compile_mode
from reslab.models.factory import load_weights


def test_paper_sgd_update_rule():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = PaperSGD([w], lr=0.1, momentum=0.9, weight_decay=0.01)
    v = torch.zeros(2)
    ref = w.detach().clone()
    for lr, g in (
        (0.1, torch.tensor([0.5, 1.0])),
        (0.1, torch.tensor([-1.0, 2.0])),
        (0.01, torch.tensor([3.0, 0.0])),
    ):
        for group in opt.param_groups:
            group["lr"] = lr
        w.grad = g.clone()
        opt.step()
        v = 0.9 * v + lr * (g + 0.01 * ref)
        ref = ref - v
        torch.testing.assert_close(w.detach(), ref)


def test_step_schedule_and_warmup():
    s = StepSchedule(0.1, [32000, 48000])
    assert [s.lr(i) for i in (0, 31999, 32000, 47999, 48000, 63999)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )
    w = StepSchedule(0.1, [32000, 48000], warmup_lr=0.01, warmup_until_error=80.0)
    assert w.lr(0) == 0.01 and w.lr(40000) == 0.01
    assert not w.observe_train_error(85.0, 100)
    assert w.observe_train_error(79.0, 400)
    assert w.lr(401) == 0.1 and w.lr(40000) == pytest.approx(0.01) and w.warmup_ended_at == 400
    assert not w.observe_train_error(90.0, 500)  # never switches back
    restored = StepSchedule(0.1, [32000, 48000], warmup_lr=0.01)
    restored.load_state_dict(w.state_dict())
    assert restored.lr(401) == 0.1


def test_configs_load_and_compose():
    cfg = load_config("cifar10/resnet110")
    assert cfg.model.name == "resnet110" and cfg.optim.warmup_lr == 0.01
    assert cfg.optim.milestones == [32000, 48000] and cfg.train.iterations == 64000
    assert cfg.train.batch_size == 128 and cfg.data.split == "train" and cfg.optim.lr == 0.1
    cfg = load_config(
        "cifar10/plain20", ["train.iterations=400", "optim.lr=0.05", "data.split=train45k"]
    )
    assert (cfg.train.iterations, cfg.optim.lr, cfg.data.split) == (400, 0.05, "train45k")
    assert cfg.name == "cifar10/plain20"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            ["train.iteratoins=5"],
            "unknown config key 'train.iteratoins'; valid keys under 'train.': iterations",
        ),
        (
            ["data.split=train40k"],
            "data.split: 'train40k' is invalid; valid choices: train, train45k",
        ),
        (["train.batch_size=zero"], "train.batch_size: 'zero' is not a valid int"),
        (["train.batch_size=0"], "train.batch_size: 0 must be > 0"),
        (["model.name=resnet21"], "model.name: unknown model 'resnet21'"),
        (["model.options={dropout: 0.1}"], "model.options: 'dropout' is not an option"),
        (["optim.milestones=[48000, 32000]"], "must be increasing"),
        (["train.precision=fp16"], "valid choices: auto, bf16, fp32"),
        (["iterations"], "expected key=value"),
        (["train.compile=maybe"], "train.compile: 'maybe' is invalid; valid choices: auto"),
        (["train.compile_mode=fast"], "valid choices: auto, default, reduce-overhead"),
    ],
)
def test_config_errors_name_key_value_and_choices(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config("cifar10/resnet20", overrides)


def test_compile_defaults_to_cuda_graphs_on_cuda_only():
    """The engine's default (compile=auto) is eager on CPU and CUDA graphs on CUDA; explicit
    settings win."""
    cfg = load_config("cifar10/resnet20")
    assert (cfg.train.compile, cfg.train.compile_mode) == ("auto", "auto")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compile_mode("auto", "auto", cpu) is None
    assert compile_mode("auto", "auto", cuda) == "reduce-overhead"
    assert compile_mode(False, "auto", cuda) is None
    assert compile_mode(True, "auto", cpu) == "default"
    assert compile_mode(True, "max-autotune", cpu) == "max-autotune"
    assert load_config("cifar10/resnet20", ["train.compile=false"]).train.compile is False


def test_unknown_config_name():
    with pytest.raises(FileNotFoundError, match=r"available: .*cifar10/resnet20"):
        load_config("cifar10/resnet21")


def test_crafted_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "ckpt_0000001.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": Payload()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(path)
    assert not marker.exists()
    torch.save({"model": Payload()}, path)  # the same inside torch's zip format
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_junk_checkpoint_is_skipped_as_damaged(tmp_path):
    """Text or random bytes under a checkpoint's name are damage, not an attack: reported as
    corrupt (and skipped for the previous checkpoint on resume), never as code to refuse."""
    good = tmp_path / "ckpt_0000001.pt"
    atomic_save({"state": {"iteration": 1}}, good)
    for junk in (b"hello world junk text", b"\x00\xff" * 500):
        (tmp_path / "ckpt_0000002.pt").write_bytes(junk)
        with pytest.raises(CheckpointError, match=r"cannot read checkpoint .* corrupt"):
            load_checkpoint(tmp_path / "ckpt_0000002.pt")
        with pytest.warns(UserWarning, match="resuming from the previous checkpoint"):
            found = latest_checkpoint(tmp_path)
        assert found[1] == good


def test_atomic_save_leaves_no_temporary(tmp_path):
    atomic_save({"x": torch.ones(3)}, tmp_path / "a" / "ckpt_0000002.pt")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["ckpt_0000002.pt"]
    assert torch.equal(load_checkpoint(tmp_path / "a" / "ckpt_0000002.pt")["x"], torch.ones(3))


# Runs compared bit for bit pin their threads (train.threads=auto follows the machine's load, and
# a CPU run's sums depend on it) and their precision (auto differs from CPU to CPU).
PINNED = {"train.threads": 1, "train.precision": "fp32"}


def test_interrupted_and_resumed_run_is_bit_identical(
    tiny_config, tmp_path, monkeypatch, interrupt_after
):
    cfg = tiny_config(**PINNED)
    straight = fit(cfg, tmp_path / "straight", progress=False)
    assert straight["status"] == "finished" and straight["iterations"] == 9

    interrupt_after(5)  # SIGINT arrives during step 5: checkpoint at 5 and stop
    first = fit(cfg, tmp_path / "resumed", progress=False)
    assert first["status"] == "interrupted" and first["iteration"] == 5
    assert [p.name for p in list_checkpoints(tmp_path / "resumed" / "checkpoints")] == [
        "ckpt_0000003.pt",
        "ckpt_0000005.pt",
    ]
    monkeypatch.undo()

    resumed = fit(cfg, tmp_path / "resumed", progress=False)
    assert resumed["status"] == "finished"
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "final.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "final.pt")
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    assert resumed["test_error"] == straight["test_error"]
    logs = [r for r in read_jsonl(tmp_path / "resumed" / "metrics.jsonl") if "train_error" in r]
    ref = [r for r in read_jsonl(tmp_path / "straight" / "metrics.jsonl") if "train_error" in r]
    assert [(r["iteration"], r["train_loss"]) for r in logs] == [
        (r["iteration"], r["train_loss"]) for r in ref
    ]


@pytest.mark.parametrize(
    ("native", "device", "expected"),
    [(True, "cpu", "bf16"), (False, "cpu", "fp32"), (False, "cuda", "bf16")],
)
def test_precision_auto_follows_the_cpu(monkeypatch, native, device, expected):
    """auto: bf16 where it is native (CUDA, AVX512-BF16 or AMX CPUs), fp32 on other CPUs."""
    monkeypatch.setattr(runtime, "native_bf16", lambda: native)
    assert load_config("cifar10/resnet20").train.precision == "auto"
    precision, why = runtime.resolve_precision("auto", torch.device(device))
    assert precision == expected and why.startswith("auto: ")
    assert runtime.resolve_precision("fp32", torch.device(device)) == ("fp32", "train.precision")


def test_a_run_keeps_its_precision_on_another_cpu(tiny_config, tmp_path, interrupt_after):
    """The choice is recorded in the checkpoint and the summary; a run started with native bf16
    and resumed on a CPU without it stays bf16 (and the other way round)."""
    for native in (True, False):
        run_dir = tmp_path / f"native-{native}"
        runtime_patch = pytest.MonkeyPatch()
        runtime_patch.setattr(runtime, "native_bf16", lambda n=native: n)
        interrupt_after(4)
        assert fit(tiny_config(), run_dir, progress=False)["status"] == "interrupted"
        runtime_patch.setattr(runtime, "native_bf16", lambda n=native: not n)
        summary = fit(tiny_config(), run_dir, progress=False)
        runtime_patch.undo()
        assert summary["precision"] == ("bf16" if native else "fp32")
        assert "native bf16" in summary["precision_choice"]
        assert (
            load_checkpoint(run_dir / "checkpoints" / "final.pt")["precision"]
            == summary["precision"]
        )


def test_run_directory_contents(tiny_config, tmp_path):
    cfg = tiny_config()
    summary = fit(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "model.safetensors",
        "checkpoints/final.pt",
    ):
        assert (run / name).is_file(), name
    saved = json.loads((run / "summary.json").read_text())
    for key in (
        "model",
        "iterations",
        "train_error",
        "test_error",
        "test_top5_error",
        "wall_time_s",
        "images_per_s",
        "device",
        "code_version",
    ):
        assert key in saved
    assert saved["test_error"] == summary["test_error"]
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == [
        "ckpt_0000003.pt",
        "ckpt_0000006.pt",
    ]
    model, meta = load_weights(run)
    assert meta["model"] == "resnet8" and type(model).__name__ == "ResNet"
    # the complete architecture, and only the keys that belong to a CIFAR run
    assert json.loads(meta["model_options"])["shortcut_pad"] == "after"
    assert not {"eval_dir", "crop", "resize"} & set(meta) and meta["train_split"] == "train45k"
    evals = [r for r in read_jsonl(run / "metrics.jsonl") if "test_error" in r]
    assert [r["iteration"] for r in evals] == [4, 8, 9]
    # running again returns the finished run instead of training twice
    assert fit(cfg, run, progress=False)["date"] == saved["date"]


def test_resnet20_learns_in_400_iterations(data_dir, tmp_path):
    """The issue's acceptance: the paper's recipe for 400 iterations gives >= 40% test accuracy."""
    cfg = load_config(
        "cifar10/resnet20",
        ["train.iterations=400", "train.eval_every=0", f"data.data_dir={data_dir}"],
    )
    summary = fit(cfg, tmp_path / "learn", progress=False)
    assert 100 - summary["test_error"] >= 40.0


def test_plateau_schedule_drops_when_the_error_stalls():
    s = PlateauSchedule(0.1, gamma=0.1, patience=2, threshold=0.5)
    for it, err in enumerate([50.0, 40.0, 39.8, 39.9], start=1):  # two evaluations without progress
        dropped = s.observe_eval_error(err, it)
    assert dropped and s.lr(5) == pytest.approx(0.01) and s.drops == [4]
    assert not s.observe_eval_error(30.0, 5) and s.lr(6) == pytest.approx(0.01)
    restored = PlateauSchedule(0.1)
    restored.load_state_dict(s.state_dict())
    assert restored.lr(7) == pytest.approx(0.01) and restored.best == 30.0


def test_plateau_needs_evaluations():
    with pytest.raises(ConfigError, match=r"needs train\.eval_every"):
        load_config("cifar10/resnet20", ["optim.schedule=plateau", "train.eval_every=0"])


@pytest.mark.slow
def test_compiled_training_matches_eager(tiny_config, tmp_path):
    """train.compile=true (torch.compile) trains like eager: one step from the same initial state
    gives the same weights up to float rounding (Inductor's fused kernels sum in another order;
    over several steps the trajectories would part by more, as any such change makes them)."""
    kw = {
        **PINNED,
        "train.iterations": 1,
        "optim.milestones": "[5]",
        "train.eval_every": 0,
    }
    eager = fit(tiny_config(**kw), tmp_path / "eager", progress=False)
    compiled = fit(
        tiny_config(**kw, **{"train.compile": "true"}),
        tmp_path / "compiled",
        progress=False,
    )
    assert eager["status"] == compiled["status"] == "finished"
    a = load_checkpoint(tmp_path / "eager" / "checkpoints" / "final.pt")["model"]
    b = load_checkpoint(tmp_path / "compiled" / "checkpoints" / "final.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), rtol=1e-4, atol=1e-5, msg=key)


def test_code_version_is_read_once_per_process(monkeypatch):
    """A long ``reslab reproduce`` process records the code it loaded, not the checkout's later
    commits: the version is read at the first call and kept."""
    import subprocess

    first = runtime.code_version()
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("git was asked again"))
    assert runtime.code_version() == first and first


def test_a_paused_stretch_is_left_out_of_the_clock(
    tiny_config, tmp_path, monkeypatch, after_each_step
):
    """A queued run paused for a benchmark (SIGSTOP ... SIGCONT) during step 3: the stretch since
    the clock's last tick (step 3 alone: step 2 logged, step 3 checkpoints) is left out of the
    training time and the throughput; the run is otherwise the same (its weights equal an unpaused
    run's)."""
    import time

    def pause(n, model):
        if n == 3:
            time.sleep(2.0)  # the pause
            os.kill(os.getpid(), signal.SIGCONT)

    after_each_step(pause)
    summary = fit(tiny_config(**PINNED), tmp_path / "paused", progress=False)
    assert summary["train_time_s"] < 2.0 < summary["wall_time_s"]
    final = load_checkpoint(tmp_path / "paused" / "checkpoints" / "final.pt")
    assert final["state"]["untimed_iterations"] == 1
    monkeypatch.undo()
    fit(tiny_config(**PINNED), tmp_path / "plain", progress=False)
    plain = load_checkpoint(tmp_path / "plain" / "checkpoints" / "final.pt")
    assert all(torch.equal(final["model"][k], plain["model"][k]) for k in plain["model"])


def test_threads_follow_the_cores_other_processes_leave(monkeypatch):
    """train.threads=auto: the threads are the cores that other processes left free over the
    last window (rounded, 0.75 of hysteresis), between 1 and the threads the process started
    with; a fixed number is set once and never changed."""
    readings = iter([])
    monkeypatch.setattr(runtime.CoreShare, "_sample", lambda self: next(readings))
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        # (all ticks, busy ticks, own ticks), cumulative; one window is 200 ticks of 2 cores
        windows = [(0, 0, 0), (200, 200, 200), (400, 400, 300), (600, 600, 400), (800, 750, 500),
                   (1000, 870, 600), (1200, 1070, 700)]  # fmt: skip
        readings = iter(windows)
        share = runtime.CoreShare("auto", torch.device("cpu"))
        seen = []
        for _ in windows[1:]:
            change = share.adjust()
            seen.append((torch.get_num_threads(), change and change["other_cores"]))
        # alone: 2; another job takes a core: 1; it stays; it lightens to 0.5 core: still 1 (the
        # 0.75 band); it is gone (0.2): 2 again; 1 core taken again: 1
        assert seen == [(2, None), (1, 1.0), (1, None), (1, None), (2, 0.2), (1, 1.0)]
        assert share.changes == 3
        torch.set_num_threads(1)  # OMP_NUM_THREADS=1: auto never goes above it
        readings = iter([(0, 0, 0), (200, 100, 100)])
        capped = runtime.CoreShare("auto", torch.device("cpu"))
        assert capped.adjust() is None and torch.get_num_threads() == 1
        fixed = runtime.CoreShare(2, torch.device("cpu"))
        assert torch.get_num_threads() == 2 and fixed.adjust() is None
        assert runtime.CoreShare("auto", torch.device("cuda")).adjust() is None
    finally:
        torch.set_num_threads(before)
