"""Shared fixtures: the real datasets of ``../shared/data`` (or ``$RESLAB_DATA``)."""

from __future__ import annotations

import http.server
import os
import threading
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("RESLAB_DATA") or REPO.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = shared_data_dir()
    if not (root / "cifar-10-batches-py" / "test_batch").is_file():
        pytest.skip(
            f"real datasets not found at {root} (set RESLAB_DATA to the shared data folder)"
        )
    return root


@pytest.fixture
def tiny_config(data_dir):
    """A 9-iteration ResNet-8 run on the real CIFAR-10 (batch 32, lr drops at 5 and 7, an
    evaluation on val5k every 4 and a checkpoint every 3 iterations); keyword arguments add
    ``key=value`` overrides, e.g. ``tiny_config(**{"train.compile": "true"})``."""
    from reslab.config import load_config

    def make(**extra):
        overrides = [
            "train.iterations=9",
            "train.batch_size=32",
            "optim.milestones=[5, 7]",
            "train.log_every=2",
            "train.eval_every=4",
            "train.checkpoint_every=3",
            "train.eval_batch_size=1000",
            "data.eval_split=val5k",
            "data.split=train45k",
            f"data.data_dir={data_dir}",
            "model.name=resnet8",
            "train.threads=2",  # runs compared bit for bit must not follow the machine's load
        ]
        return load_config("cifar10/resnet20", overrides + [f"{k}={v}" for k, v in extra.items()])

    return make


class _Hooked:
    """A run's step with a test's ``hook(n, model)`` after each call (n counts every step since
    the hook was armed, across runs): the engine's seam for injecting faults into any kind of
    step (eager, graphed, stacked)."""

    def __init__(self, step, model, hook, calls):
        self.step, self.model, self.hook, self.calls = step, model, hook, calls

    def __len__(self):
        return len(self.step)

    def start_epoch(self, epoch, start=0):
        self.step.start_epoch(epoch, start)

    def __call__(self, lr):
        self.step(lr)
        self.calls["n"] += 1
        self.hook(self.calls["n"], self.model)


@pytest.fixture
def after_each_step(monkeypatch):
    """``after_each_step(hook)``: every classification run's step calls ``hook(n, model)`` after
    its n-th step (the task's ``make_step`` wraps the step it chose); ``monkeypatch.undo()`` ends
    it."""
    from reslab.engine.classify import Classification

    def arm(hook):
        real, calls = Classification.make_step, {"n": 0}

        def make_step(self, parts, *args, **kwargs):
            step, kind = real(self, parts, *args, **kwargs)
            return _Hooked(step, parts.model, hook, calls), kind

        monkeypatch.setattr(Classification, "make_step", make_step)

    return arm


@pytest.fixture
def interrupt_after(after_each_step):
    """``interrupt_after(n)``: SIGINT arrives during the engine's training step n (the run
    checkpoints there and stops); ``monkeypatch.undo()`` ends it."""
    import signal

    def arm(steps: int) -> None:
        def hook(n, model):
            if n == steps:
                signal.raise_signal(signal.SIGINT)

        after_each_step(hook)

    return arm


@pytest.fixture
def packed_after_interrupt(tmp_path, interrupt_after, monkeypatch):
    """``packed_after_interrupt(cfgs, mode, resumed)``: run ``resumed`` alone is interrupted at
    step 4, then all are trained packed (``mode``) under ``tmp_path/packed``; checks that each
    finished and that that run resumed; returns (jobs, summaries)."""
    import json

    from reslab.engine import fit
    from reslab.engine.packed import fit_packed

    def run(cfgs, mode: str, resumed: int):
        jobs = [(cfg, tmp_path / "packed" / f"run{i}") for i, cfg in enumerate(cfgs)]
        interrupt_after(4)
        assert fit(cfgs[resumed], jobs[resumed][1], progress=False)["status"] == "interrupted"
        monkeypatch.undo()
        summaries = fit_packed(jobs, len(jobs), mode=mode)
        assert [s["status"] for s in summaries] == ["finished"] * len(jobs)
        lines = (jobs[resumed][1] / "metrics.jsonl").read_text().splitlines()
        assert any(json.loads(x).get("event") == "resume" for x in lines)
        return jobs, summaries

    return run


@pytest.fixture
def table6_args(data_dir, tmp_path):
    """``reslab reproduce table6`` of two ResNet-20 seeds at 1/12800 of the schedule (batch 32,
    no periodic evaluation), ledger in ``tmp_path/results``."""
    return [
        "reproduce", "table6", "--schedule", "1/12800", "--only", "resnet20", "--seeds", "2",
        "--results", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs"),
        "--data-dir", str(data_dir), "--no-progress", "--set", "train.eval_every=0",
        "--set", "data.eval_split=val5k", "--set", "data.split=train45k", "--set", "train.batch_size=32",
    ]  # fmt: skip


class HTTPServer:
    """Serves ``root`` on 127.0.0.1; ``mode`` "truncate" announces the whole file and sends half."""

    def __init__(self, root: Path) -> None:
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, *args):
                pass

            def copyfile(self, source, outputfile):
                if server.mode == "truncate":
                    data = source.read()
                    outputfile.write(data[: len(data) // 2])
                    return
                super().copyfile(source, outputfile)

        self.mode = "whole"
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def http_server():
    """``http_server(root)``: ``root`` served on 127.0.0.1 (``.url``; ``.mode = "truncate"``
    drops each connection halfway), shut down after the test."""
    servers = []

    def start(root):
        servers.append(HTTPServer(Path(root)))
        return servers[-1]

    yield start
    for server in servers:
        server.httpd.shutdown()


def pytest_configure(config):
    """The CPU queue (``reslab queue run``) pauses while the tests run: two jobs of two threads on
    two cores run several times slower each. A detached watcher resumes it when this process
    ends, however it ends."""
    from reslab.experiments import queue

    _SESSION_HOLD.append(queue.pause(os.getpid()))


def pytest_unconfigure(config):
    from reslab.experiments import queue

    while _SESSION_HOLD:
        queue.release(_SESSION_HOLD.pop())


_SESSION_HOLD: list = []  # this session's pause of the queue (a test's own pauses end apart)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is present")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
