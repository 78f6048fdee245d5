"""How far a stacked run drifts from the same run alone, against the drift that a change of thread
count alone causes (both are changes of floating-point summation order).

    RESLAB_DATA=../shared/data uv run python benchmarks/drift_stacked.py 2 5 10

For each number of steps: ResNet-8, batch 32, lr 0.1, fp32, seed 0 (the tests' tiny run without
its lr drops), trained (a) stacked with seed 1 against alone, both with 2 threads, and (b) alone
with 1 thread against alone with 2 threads; prints the largest relative difference of a weight
tensor (max |a - b| / max |a|) for each.
"""

import sys
import tempfile
from pathlib import Path

from reslab.config import load_config
from reslab.engine import fit
from reslab.engine.checkpoint import load_checkpoint
from reslab.engine.packed import fit_packed


def config(steps: int, seed: int = 0, threads: int = 2):
    return load_config("cifar10/resnet20", [
        f"train.iterations={steps}", "train.batch_size=32", "optim.milestones=[100, 150]",
        "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=1000",
        "data.eval_split=val5k", "data.split=train45k", "model.name=resnet8",
        "train.precision=fp32", f"train.seed={seed}", f"train.threads={threads}",
    ])  # fmt: skip


def drift(a_dir: Path, b_dir: Path) -> float:
    a, b = (load_checkpoint(d / "checkpoints" / "final.pt")["model"] for d in (a_dir, b_dir))
    return max(
        ((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12)).item()
        for k in a
        if a[k].is_floating_point()
    )


if __name__ == "__main__":
    root = Path(tempfile.mkdtemp())
    for steps in map(int, sys.argv[1:] or ["2", "5", "10"]):
        d = root / str(steps)
        fit(config(steps), d / "alone2", progress=False)
        jobs = [(config(steps, s), d / f"stacked{s}") for s in (0, 1)]
        fit_packed(jobs, 2, mode="stacked")
        fit(config(steps, threads=1), d / "alone1", progress=False)
        print(f"{steps} steps: stacked vs alone {drift(d / 'alone2', d / 'stacked0'):.1e}, "
              f"1 vs 2 threads alone {drift(d / 'alone2', d / 'alone1'):.1e}")  # fmt: skip
