"""What ``reslab train`` and ``reslab demo`` print of a run, and the demo's schedule.

uv run reslab demo --iterations 200
"""

from __future__ import annotations

import json
from typing import Any


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """What ``reslab train`` prints of a run's summary: a sentence, then a JSON line."""
    if summary["status"] == "not started":  # a packed run that a stop came before
        return ["not started (stopped before its turn); run the same command again to train it"]
    if summary["status"] == "died":  # a packed run's process was killed (the OOM killer)
        return [summary["error"]]
    if summary["status"] != "finished":
        return [
            f"interrupted at iteration {summary['iteration']}; checkpoint {summary['checkpoint']}; "
            "run the same command again to resume"
        ]
    s = summary
    keys = ("test_error", "test_top5_error", "train_error", "iterations")
    return [
        f"{s['model']}: {s['iterations']} iterations, training error {s['train_error']:.2f}%, test "
        f"error {s['test_error']:.2f}% (accuracy {100 - s['test_error']:.2f}%), top-5 error "
        f"{s['test_top5_error']:.2f}%, {s['images_per_s']:.0f} images/s on {s['device']}, "
        f"{s['wall_time_s']:.0f} s",
        json.dumps({k: s[k] for k in keys}),
    ]


def demo_overrides(iterations: int) -> list[str]:
    """``reslab demo``: the paper's ResNet-20 recipe on a short schedule, the lr dropping at 50%
    and 75% of the iterations, with no evaluation before the end."""
    n = iterations
    return [
        f"train.iterations={n}",
        f"optim.milestones=[{max(1, n // 2)},{max(1, 3 * n // 4)}]",
        "train.eval_every=0",
        f"train.checkpoint_every={max(n // 4, 1)}",
        f"train.log_every={max(min(100, n // 8), 1)}",
        f"name=demo-resnet20-{n}it",
    ]
