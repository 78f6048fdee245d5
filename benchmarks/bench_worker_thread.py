"""The engine's CIFAR training step run by a worker thread against the same step in the main
thread, in one process (what the ``streams`` and ``stacked`` packing modes do on a CPU).

    RESLAB_DATA=../shared/data uv run python benchmarks/bench_worker_thread.py [resnet20]
    RESLAB_DATA=../shared/data OMP_WAIT_POLICY=PASSIVE uv run python benchmarks/bench_worker_thread.py
    RESLAB_DATA=../shared/data uv run python benchmarks/bench_worker_thread.py resnet20 --worker-only

Prints images/s of each (worker first, then main) and their ratio; ``--worker-only`` measures the
worker thread of a process whose main thread never runs a torch operation.
"""

import sys
import threading
import time

import torch

from reslab.bench.train import _cifar_tensors, engine_step


def images_per_s(name: str, images, labels, steps: int = 25, warmup: int = 5) -> float:
    step = engine_step(name, images, labels, 128, torch.device("cpu"))
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    step.window.tolist()
    return steps * 128 / (time.perf_counter() - start)


def worker_only(name: str) -> None:
    def body() -> None:
        images, labels, source = _cifar_tensors(None, 4096)
        speed = images_per_s(name, images, labels)
        print(f"{name} on {source}: worker thread alone (main thread idle) {speed:.0f} images/s")

    worker = threading.Thread(target=body)
    worker.start()
    worker.join()


if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "resnet20"
    if "--worker-only" in sys.argv:
        sys.exit(worker_only(name))
    images, labels, source = _cifar_tensors(None, 4096)
    result = {}
    worker = threading.Thread(target=lambda: result.update(v=images_per_s(name, images, labels)))
    worker.start()
    worker.join()
    main = images_per_s(name, images, labels)
    print(f"{name} on {source}, {torch.get_num_threads()} threads: worker thread "
          f"{result['v']:.0f} images/s, main thread {main:.0f} images/s, ratio {result['v'] / main:.2f}")  # fmt: skip
