"""Data-parallel training: 2 gloo processes under torchrun end with the weights of a single
process that trains on the same global batches (gradients of the two halves averaged), bit for
bit: each half's gradient comes from the same kernels at the same thread count (one), halving is
exact (a power of two) and a sum of two terms is the same in either order, so the gloo all-reduce
((g0 + g1) / 2) and the single process's accumulation (g0 / 2 + g1 / 2) round alike."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
import torch.nn.functional as F

from reslab.config import load_config
from reslab.data.builders import fit_normalizer
from reslab.data.cifar import load_cifar10
from reslab.data.loaders import TensorLoader
from reslab.engine.checkpoint import load_checkpoint
from reslab.engine.classify import build_model, seed_everything
from reslab.engine.optim import PaperSGD, StepSchedule, set_lr

STEPS = 4
OVERRIDES = [
    "model.name=resnet8",
    f"train.iterations={STEPS}",
    "train.batch_size=32",
    "optim.milestones=[2]",
    "train.log_every=2",
    "train.eval_every=0",
    "train.checkpoint_every=100",
    "train.precision=fp32",
    "train.threads=1",
    "train.channels_last=false",
    "train.tensorboard=false",
    "data.eval_split=val5k",
    "data.split=train45k",
]


def _single_process_reference(cfg) -> dict[str, torch.Tensor]:
    seed_everything(cfg.train.seed)
    model = build_model(cfg, torch.device("cpu"))
    opt = PaperSGD(model.parameters(), cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay)
    schedule = StepSchedule(cfg.optim.lr, cfg.optim.milestones, cfg.optim.gamma)
    images, labels = load_cifar10(cfg.data.data_dir, cfg.data.split)
    normalize = fit_normalizer(cfg, images)
    halves = [
        TensorLoader(
            images,
            labels,
            cfg.train.batch_size,
            normalize,
            train=True,
            seed=cfg.train.seed,
            shard=(r, 2),
        )
        for r in (0, 1)
    ]
    model.train()
    for step, batches in enumerate(zip(halves[0].batches(0), halves[1].batches(0), strict=False)):
        if step == STEPS:
            break
        set_lr(opt, schedule.lr(step))
        opt.zero_grad()
        for x, y in batches:
            (F.cross_entropy(model(x), y) / 2).backward()
        opt.step()
    return {k: v.detach() for k, v in model.named_parameters()}


def test_two_gloo_processes_match_single_process(data_dir, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "reslab",
        "train",
        "cifar10/resnet20",
        "--out",
        str(out),
        "--data-dir",
        str(data_dir),
        "--no-progress",
    ]
    for o in OVERRIDES:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert (
        proc.stdout.count("run directory:") == 1 and proc.stdout.count("test error") == 1
    )  # rank 0 prints
    ddp = load_checkpoint(out / "checkpoints" / "final.pt")["model"]
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints",
        "config.yaml",
        "metrics.jsonl",
        "model.safetensors",
        "summary.json",
    ]

    cfg = load_config("cifar10/resnet20", [*OVERRIDES, f"data.data_dir={data_dir}"])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(cfg.train.threads)  # each rank's count: the same kernels' sums
        reference = _single_process_reference(cfg)
    finally:
        torch.set_num_threads(threads)
    changed = 0
    for name, weight in reference.items():
        assert torch.equal(ddp[name], weight), name
        changed += not torch.equal(weight, _initial(cfg)[name])
    assert changed > 0.9 * len(reference)  # the weights did move


def _initial(cfg) -> dict[str, torch.Tensor]:
    seed_everything(cfg.train.seed)
    return dict(build_model(cfg, torch.device("cpu")).named_parameters())
