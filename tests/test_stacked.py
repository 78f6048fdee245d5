"""Stacked runs: N nets trained as one grouped net compute what each net computes alone."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from reslab.engine import fit
from reslab.engine.checkpoint import load_checkpoint
from reslab.engine.optim import PaperSGD
from reslab.engine.stacked import StackedNets, stacked_train_step
from reslab.errors import ConfigError
from reslab.models import create_model


def _nets(name: str, n: int = 3, **options):
    nets = []
    for seed in range(n):
        torch.manual_seed(seed)
        net = create_model(name, **options)
        for m in net.modules():  # BN scales and shifts away from 1 and 0, so that they matter
            if isinstance(m, torch.nn.BatchNorm2d):
                torch.nn.init.uniform_(m.weight, 0.5, 1.5)
                torch.nn.init.uniform_(m.bias, -0.2, 0.2)
        nets.append(net)
    return nets


VARIANTS = [
    ("resnet8", {}),  # option A: zero-padding shortcuts
    ("plain8", {}),
    ("resnet8", {"shortcut": "B"}),
    ("resnet8", {"shortcut": "C"}),
    ("preact_resnet8", {}),
    ("resnet8", {"shortcut": "A", "shortcut_pad": "both"}),
    ("resnet11", {"block": "bottleneck", "shortcut": "B"}),
]


@pytest.mark.parametrize(("name", "options"), VARIANTS)
def test_the_stacked_net_computes_each_net(name, options):
    """Logits, gradients and BN running statistics of every net equal the net's alone."""
    torch.manual_seed(10)
    images = [torch.randn(8, 3, 16, 16) for _ in range(3)]
    labels = [torch.randint(0, 10, (8,)) for _ in range(3)]
    alone, stacked = _nets(name, **options), _nets(name, **options)
    expected = []
    for net, x, y in zip(alone, images, labels, strict=True):
        logits = net(x)
        F.cross_entropy(logits, y).backward()
        expected.append(logits.detach())
    with StackedNets(stacked) as stack:
        logits = stack(torch.cat(images, 1)).chunk(3, 1)
        sum(F.cross_entropy(z, y) for z, y in zip(logits, labels, strict=True)).backward()
        stack.share_grads()
        grads = [[p.grad.clone() for p in net.parameters()] for net in stacked]
    for i, (a, s) in enumerate(zip(alone, stacked, strict=True)):
        torch.testing.assert_close(logits[i], expected[i], rtol=1e-5, atol=1e-5)
        for (key, pa), grad in zip(a.named_parameters(), grads[i], strict=True):
            torch.testing.assert_close(grad, pa.grad, rtol=1e-4, atol=1e-5, msg=key)
        for key, buf in a.state_dict().items():
            torch.testing.assert_close(s.state_dict()[key], buf, msg=key)
        for t in s.state_dict().values():  # unbound: each net's tensors are its own again
            assert t.untyped_storage().nbytes() == t.numel() * t.element_size()


def test_each_net_steps_with_its_own_learning_rate():
    """One stacked step with lr 0.1 for one net and 0.01 for the other (ResNet-110's warm-up is
    per net) moves each net as its own step alone would."""
    torch.manual_seed(3)
    alone, stacked = _nets("resnet8", 2), _nets("resnet8", 2)
    batches = [(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))) for _ in range(2)]
    lrs = [0.1, 0.01]
    runs = []
    for net, lr in zip(stacked, lrs, strict=True):
        opt = PaperSGD(net.parameters(), lr, 0.9, 1e-4)
        window = torch.zeros(3, dtype=torch.float64)
        runs.append(SimpleNamespace(optimizer=opt, lr=lr, window=window, precision="fp32"))
    with StackedNets(stacked) as stack:
        stacked_train_step(stack, runs, batches)
    for net, (x, y), lr, run in zip(alone, batches, lrs, runs, strict=True):
        opt = PaperSGD(net.parameters(), lr, 0.9, 1e-4)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        assert run.window[2] == 8
        torch.testing.assert_close(run.window[0] / 8, loss.detach().double(), rtol=1e-5, atol=0)
    for a, s in zip(alone, stacked, strict=True):
        for key, value in a.state_dict().items():
            torch.testing.assert_close(s.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_nets_of_different_architectures_are_refused():
    with pytest.raises(ConfigError, match="one architecture"):
        StackedNets([create_model("resnet8"), create_model("resnet14")])


def _weights(run_dir, name="final.pt"):
    return load_checkpoint(run_dir / "checkpoints" / name)["model"]


def _one_step_alone(cfg, stacked_dir, k, out, interrupt_after, monkeypatch):
    """The run alone for one step from the stacked run's state at iteration ``k`` (its checkpoint,
    or the run's start for 0): the weights it reaches and its summary (None before the end)."""
    (out / "checkpoints").mkdir(parents=True)
    if k:
        shutil.copy(stacked_dir / "checkpoints" / f"ckpt_{k:07d}.pt", out / "checkpoints")
    last = k + 1 == cfg.train.iterations
    if not last:
        interrupt_after(1)
    summary = fit(cfg, out, progress=False)
    monkeypatch.undo()
    name = "final.pt" if last else f"ckpt_{k + 1:07d}.pt"
    assert summary["status"] == ("finished" if last else "interrupted")
    return _weights(out, name), summary if last else None


def test_stacked_runs_train_like_the_runs_alone(
    tiny_config, tmp_path, packed_after_interrupt, interrupt_after, monkeypatch
):
    """Two seeds of ResNet-8 stacked (one resuming from its own interrupted checkpoint, one with
    the warm-up learning rate), beside a plain-8 in a stack of its own: each stacked step is the
    run's own step alone, to float rounding, and each run ends with its own metrics.

    Checked one step at a time from the same state (the stacked run's checkpoint), not as whole
    trajectories: a step is the same in exact arithmetic, but the stacked kernels sum in another
    order, and over several steps any such change (a thread count's too) lets the trajectories
    part by far more than rounding (results/logs/2026-11-26-stacked-drift.txt). The steps checked
    are each run's first stacked step (run 0's is the one after its resume) and its last (after
    both learning-rate drops), which ends the run: its test error is the run's alone to the
    images that one step's rounding may flip."""
    warm = {"optim.warmup_lr": 0.01, "optim.warmup_until_error": 85.0}
    pinned = {
        "train.precision": "fp32",
        "train.threads": 1,
        "train.checkpoint_every": 1,  # a state to start a step alone from, at every iteration
        "train.keep_checkpoints": 9,
    }
    cfgs = [
        tiny_config(**{"train.seed": 0, **pinned}),
        tiny_config(**{"train.seed": 1, **pinned, **warm}),
        tiny_config(**{"train.seed": 0, **pinned, "model.name": "plain8"}),
    ]
    jobs, summaries = packed_after_interrupt(cfgs, "stacked", resumed=0)
    assert [s["packing"] for s in summaries] == ["stacked"] * 3
    for i, cfg in enumerate(cfgs):
        stacked_dir = jobs[i][1]
        for k in (4 if i == 0 else 0, cfg.train.iterations - 1):
            out = tmp_path / "alone" / f"run{i}-from{k}"
            alone, summary = _one_step_alone(cfg, stacked_dir, k, out, interrupt_after, monkeypatch)
            name = f"ckpt_{k + 1:07d}.pt" if summary is None else "final.pt"
            stacked = _weights(stacked_dir, name)
            for key in alone:
                where = f"run{i} step {k + 1} {key}"
                torch.testing.assert_close(
                    stacked[key], alone[key], rtol=1e-4, atol=1e-5, msg=where
                )
        assert abs(summary["test_error"] - summaries[i]["test_error"]) <= 0.1, i  # 5 images
        sizes = [(d / "checkpoints" / "final.pt").stat().st_size for d in (stacked_dir, out)]
        assert sizes[0] < 1.05 * sizes[1]  # its own tensors only, not the whole stack's
    first_lr = [_logged(run_dir)[0]["lr"] for _, run_dir in jobs[:2]]
    assert first_lr == [0.1, 0.01]  # the warm-up's learning rate is that run's alone


def _logged(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if "train_loss" in e]


def test_reproduce_and_bench_take_the_stacked_pack(data_dir, tmp_path, table6_args):
    """``reslab reproduce ... --concurrent 2 --pack stacked`` records both seeds (trained as one
    grouped net); ``reslab bench train --pack stacked`` measures the stacked step against one run
    alone; the CLI's modes are the engine's."""
    from reslab import cli
    from reslab.engine import packed

    assert cli.PACK_MODES == packed.MODES
    results = tmp_path / "results"
    args = [*table6_args, "--concurrent", "2", "--pack", "stacked"]
    assert cli.main(args) == 0
    for seed in (0, 1):
        path = results / "table6" / f"resnet20-seed{seed}-sched1of12800" / "summary.json"
        summary = json.loads(path.read_text())
        assert (summary["seed"], summary["packing"]) == (seed, "stacked")
    bench = ["bench", "train", "--models", "resnet8", "--steps", "2", "--concurrent", "1", "2",
             "--pack", "stacked", "--data-dir", str(data_dir), "--out", str(tmp_path / "bench")]  # fmt: skip
    assert cli.main(bench) == 0
    record = json.loads(next((tmp_path / "bench").glob("*.json")).read_text())
    modes = [(r["mode"], r["concurrent"]) for r in record["results"]]
    assert modes == [("stacked", 1), ("stacked", 2)]
    assert set(record["choice"]) == {"resnet8"}  # what the measurement supports, per model
    assert all(r["aggregate_images_per_s"] > 0 and r["alone_images_per_s"] > 0 for r in record["results"])  # fmt: skip


def test_layers_without_a_stacked_form_are_refused():
    nets = [torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GELU()) for _ in range(2)]
    with pytest.raises(ConfigError, match=r"cannot stack layer '1' \(GELU\).*--pack processes"):
        StackedNets(nets)
    nets = [torch.nn.Sequential(torch.nn.BatchNorm2d(3, momentum=None)) for _ in range(2)]
    with pytest.raises(ConfigError, match=r"cannot stack layer '0' \(BatchNorm2d\)"):
        StackedNets(nets)


def test_stacked_runs_refuse_compiled_steps(tiny_config, tmp_path):
    from reslab.engine.packed import fit_packed

    jobs = [(tiny_config(**{"train.seed": s, "train.compile": "true"}), tmp_path / f"r{s}") for s in (0, 1)]  # fmt: skip
    with pytest.raises(ConfigError, match=r"uncompiled: set train\.compile to auto"):
        fit_packed(jobs, 2, mode="stacked")


def test_on_a_cpu_stacks_of_another_architecture_wait(tiny_config, tmp_path):
    """Two stacks at once would be two OpenMP teams on the same cores: on a CPU a run of another
    stack key starts only when the running stack has ended (seeds of one model stack at once)."""
    from reslab.engine.packed import _Threads

    r8 = [(tiny_config(**{"train.seed": s, "train.device": "cpu"}), tmp_path / f"r{s}") for s in (0, 1)]  # fmt: skip
    plain = (tiny_config(**{"model.name": "plain8", "train.device": "cpu"}), tmp_path / "p")
    stacked, streams = _Threads(stacked=True), _Threads(stacked=False)
    assert stacked.can_start(r8[1], [r8[0]]) and stacked.can_start(plain, [])
    assert not stacked.can_start(plain, [r8[0]])
    assert streams.can_start(plain, [r8[0]])
