"""Two reslab trainings at once on this machine's cores, against one alone, with ``train.threads``
fixed at the cores (every run before 2026-11-29) and at ``auto`` (sized to the free cores).

    RESLAB_DATA=../shared/data uv run python benchmarks/bench_core_share.py --iterations 200

Each training is ``reslab train cifar10/resnet20`` in its own process; its speed is its summary's
steady images/s (after its first logging window). Writes ``results/bench/<date>-cpu-core-share.json``
(the command, code version, hardware and date beside the numbers) and prints a table. The queue
(``reslab queue run``) is paused meanwhile.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path


def train(out: Path, iterations: int, threads: str) -> subprocess.Popen:
    sets = [
        f"train.iterations={iterations}",
        "train.eval_every=0",
        "train.log_every=20",
        f"train.checkpoint_every={iterations}",
        "train.tensorboard=false",
        f"train.threads={threads}",
        "data.eval_split=val5k",
        "data.split=train45k",
    ]
    args = [
        sys.executable,
        "-m",
        "reslab",
        "train",
        "cifar10/resnet20",
        "--out",
        str(out),
        "--no-progress",
        *[a for s in sets for a in ("--set", s)],
    ]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def speed(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    changes = [
        r for r in map(json.loads, (out / "metrics.jsonl").open()) if r.get("event") == "threads"
    ]
    return {"images_per_s": summary["session_steady_images_per_s"], "thread_changes": changes}


def measure(root: Path, iterations: int, threads: str) -> dict:
    alone = root / f"alone-{threads}"
    proc = train(alone, iterations, threads)
    if proc.wait() != 0:
        raise SystemExit(proc.stderr.read())
    pair = [root / f"paired-{threads}-{i}" for i in (0, 1)]
    procs = [train(out, iterations, threads) for out in pair]
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(proc.stderr.read())
    a, paired = speed(alone), [speed(out) for out in pair]
    alone_s = a["images_per_s"]
    return {
        "threads": threads,
        "alone_images_per_s": a["images_per_s"],
        "paired_images_per_s": [p["images_per_s"] for p in paired],
        "paired_fraction_of_alone": [round(p["images_per_s"] / alone_s, 3) for p in paired],
        "paired_aggregate_fraction": round(sum(p["images_per_s"] for p in paired) / alone_s, 3),
        "paired_thread_changes": [p["thread_changes"] for p in paired],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args()

    from reslab.engine.runtime import code_version, describe_device
    from reslab.experiments.queue import paused

    cores = str(os.cpu_count())
    with paused(), tempfile.TemporaryDirectory() as tmp:
        rows = [measure(Path(tmp), args.iterations, t) for t in (cores, "auto")]
    before, after = rows
    now = dt.datetime.now(dt.UTC)
    record = {
        "kind": "core-share",
        "device": describe_device("cpu"),
        "command": shlex.join(["python", *sys.argv]),
        "code_version": code_version(),
        "date": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "note": f"reslab train cifar10/resnet20, {args.iterations} iterations each; "
        f"train.threads={cores} is reslab's behaviour before auto",
        "alone_auto_vs_fixed": round(after["alone_images_per_s"] / before["alone_images_per_s"], 3),
        "results": rows,
    }
    out = Path(args.out) / f"{now:%Y-%m-%d}-cpu-core-share.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    for r in rows:
        print(
            f"threads={r['threads']:<5} alone {r['alone_images_per_s']:7.0f} images/s; paired "
            f"{' and '.join(f'{x:.0f}' for x in r['paired_images_per_s'])} "
            f"({', '.join(f'{f:.0%}' for f in r['paired_fraction_of_alone'])} of alone each)"
        )
    print(f"alone, auto against fixed: {record['alone_auto_vs_fixed']:.3f}x\nwrote {out}")


if __name__ == "__main__":
    main()
