"""Packed-run throughput: N runs training at once on one device against one run alone.

    RESLAB_DATA=../shared/data uv run reslab bench train --models resnet20 --concurrent 1 2

Each run is the engine's CIFAR step (:func:`reslab.bench.train.engine_step`: the loader, the step,
the metric window, as ``fit`` runs it). ``processes``: N processes with the device's CPU threads
split between them (``threads`` each); ``streams``: N threads of one process, each on its own CUDA
stream; ``stacked``: N threads of one process whose steps run as one grouped net
(:mod:`reslab.engine.stacked`). All N start their timed steps together (a barrier) and the aggregate is N x steps x batch
over the slowest one's time; the baseline, measured in the same call, is one run alone with every
thread (``concurrent=1``). The ratio says whether packing pays on this machine.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import threading
import time
from pathlib import Path
from typing import Any

import torch


def _timed_run(
    name, images, labels, batch, steps, warmup, device, threads, barrier, results, seat=None, seed=0
):
    """One packed run: warm up, wait for the others, time ``steps`` steps; report the seconds."""
    from reslab.bench.train import engine_step

    if threads is not None:
        torch.set_num_threads(threads)
    device = torch.device(device)
    stream = torch.cuda.Stream() if device.type == "cuda" and seat is None else None
    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
        graph = stream is not None
        one_step = engine_step(
            name, images, labels, batch, device, cuda_graph=graph, seat=seat, seed=seed
        )
        for _ in range(warmup):
            one_step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the warm-up (and the captures) end before the clock
        barrier.wait()
        start = time.perf_counter()
        for _ in range(steps):
            one_step()
        one_step.window.tolist()  # waits for this run's work
        results.put(time.perf_counter() - start)
    if seat is not None:
        seat.leave()


def packed_images_per_s(
    name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    concurrent: int,
    *,
    mode: str = "processes",
    steps: int = 40,
    warmup: int | None = None,
    batch: int = 128,
    device: str = "cpu",
) -> dict[str, Any]:
    """Aggregate images/s of ``concurrent`` runs of ``name`` trained at once (see the module doc).
    ``warmup`` untimed steps first (default 10 on CUDA, as the single-run bench: the CUDA graphs
    are captured after 3 of them, outside the timing; 3 elsewhere)."""
    if warmup is None:
        warmup = 10 if torch.device(device).type == "cuda" else 3
    total_threads = torch.get_num_threads()
    threads = max(1, total_threads // concurrent) if mode == "processes" else None
    if mode == "processes":
        ctx = mp.get_context("spawn")
        barrier, results, worker = ctx.Barrier(concurrent), ctx.Queue(), ctx.Process
    else:
        import queue

        barrier, results, worker = threading.Barrier(concurrent), queue.Queue(), threading.Thread
    args = (name, images, labels, batch, steps, warmup, device, threads, barrier, results)
    group = None
    if mode == "stacked":
        from reslab.engine.stacked import StackGroup

        group = StackGroup(capture=torch.device(device).type == "cuda")
    seats = [group.join() if group else None for _ in range(concurrent)]
    workers = [worker(target=_timed_run, args=(*args, seat, i)) for i, seat in enumerate(seats)]
    for w in workers:
        w.start()
    seconds = [results.get() for _ in workers]
    for w in workers:
        w.join()
    return {
        "model": name,
        "mode": mode,
        "concurrent": concurrent,
        "threads_per_run": threads if threads is not None else total_threads,
        "aggregate_images_per_s": concurrent * steps * batch / max(seconds),
        "per_run_images_per_s": [round(steps * batch / s, 1) for s in seconds],
    }


def run(
    models: list[str],
    concurrent: list[int],
    data_dir: str | Path | None = None,
    device: str = "cpu",
    steps: int = 40,
    pack: list[str] = ("auto",),
) -> list[dict[str, Any]]:
    """One row per model, packing mode and N: the aggregate against one run alone (N = 1, all
    threads, no packing), in the same call. ``pack`` "auto" is processes on CPU and streams on
    CUDA."""
    from reslab.bench.train import _cifar_tensors

    cuda = torch.device(device).type == "cuda"
    modes = [("streams" if cuda else "processes") if m == "auto" else m for m in pack]
    images, labels, source = _cifar_tensors(data_dir, 10_240)
    rows = []
    for name in models:
        baseline = "streams" if cuda else "processes"
        alone = packed_images_per_s(name, images, labels, 1, mode=baseline, steps=steps, device=device)  # fmt: skip
        for mode in dict.fromkeys(modes):
            for n in concurrent:
                row = alone if n == 1 and mode == baseline else packed_images_per_s(
                    name, images, labels, n, mode=mode, steps=steps, device=device
                )  # fmt: skip
                ratio = row["aggregate_images_per_s"] / alone["aggregate_images_per_s"]
                rows.append({**row, "data": source, "alone_images_per_s": alone["aggregate_images_per_s"], "ratio": ratio})  # fmt: skip
    return rows


# a packing is chosen only when it beats one run alone by more than the records' spread (repeated
# CPU measurements of one configuration differed by up to about 10%: 0.95-1.16x)
PAYS = 1.10


def choice(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Per model, what the measurement supports: the best packing (mode and N) when its aggregate
    is at least :data:`PAYS` times one run alone, else one run at a time."""
    chosen = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        best = max((r for r in rows if r["model"] == model), key=lambda r: r["ratio"])
        pays = best["concurrent"] > 1 and best["ratio"] >= PAYS
        chosen[model] = (
            f"{best['mode']} x{best['concurrent']} ({best['ratio']:.2f}x one run alone)"
            if pays
            else f"one run at a time (best packing {best['ratio']:.2f}x, below {PAYS:.2f}x)"
        )
    return chosen
