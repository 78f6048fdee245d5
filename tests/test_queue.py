"""The CPU queue: its file, its status, pausing it for other jobs, and resuming it from a clone."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reslab.config import ConfigError
from reslab.experiments import queue

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def state(tmp_path, monkeypatch):
    """A registry of running queues and pauses of this test's own (the real queue is untouched)."""
    folder = tmp_path / "queue-state"
    monkeypatch.setenv("RESLAB_QUEUE_STATE", str(folder))
    return folder


def _state_of(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _wait_for(condition, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


STAND_IN = """
import subprocess, sys, time
from reslab.experiments import queue
with queue._registered():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(child.pid, flush=True)
    time.sleep(600)
"""


@pytest.fixture
def stand_in(state):
    """A process registered as a running queue, with a child (a packed run), as the real queue is."""
    proc = subprocess.Popen([sys.executable, "-c", STAND_IN], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    yield proc.pid, child
    for pid in (child, proc.pid):
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGKILL)
    proc.wait()


def test_a_pause_lasts_while_its_holder_lives_and_overlapping_pauses_nest(stand_in):
    runner, child = stand_in
    first = subprocess.Popen(["sleep", "600"])
    second = subprocess.Popen(["sleep", "600"])
    assert queue.pause(first.pid).queues == 1
    assert _state_of(runner) == "T" and _state_of(child) == "T"
    queue.pause(second.pid)
    first.kill()  # killed, as the OOM killer would: the watcher notices all the same
    first.wait()
    time.sleep(1.0)
    assert _state_of(runner) == "T", "the second pause still holds"
    second.kill()
    second.wait()
    assert _wait_for(lambda: _state_of(runner) != "T" and _state_of(child) != "T")


def test_release_resumes_at_once(stand_in):
    runner, _ = stand_in
    with queue.paused() as hold:
        assert hold.queues == 1 and _state_of(runner) == "T"
    assert _state_of(runner) != "T"
    # a benchmark inside the test session, both held by this process: the benchmark's pause
    # ends alone, the session's stays
    session = queue.pause(os.getpid())
    with queue.paused():
        pass
    time.sleep(0.5)
    assert _state_of(runner) == "T"
    queue.release(session)
    assert _state_of(runner) != "T"


def test_the_test_suite_pauses_a_running_queue(stand_in, tmp_path):
    """What `make test` does beside a running queue: pytest's own conftest pauses it for the
    whole session, and it runs again afterwards."""
    runner, child = stand_in
    probe = tmp_path / "probe" / "test_probe.py"
    probe.parent.mkdir()
    probe.write_text(
        textwrap.dedent(f"""
        from pathlib import Path

        def test_queue_is_stopped():
            for pid in ({runner}, {child}):
                assert Path(f"/proc/{{pid}}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
        """)
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
         str(probe), "--rootdir", str(probe.parent)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert _wait_for(lambda: _state_of(runner) != "T" and _state_of(child) != "T")


def test_queue_file_errors_name_the_entry(tmp_path):
    path = tmp_path / "queue.yaml"
    cases = [
        ("{experiment: table6}", "expected a list"),
        ("- {experiment: table6}", "entry 1: needs 'experiment' and a one-line 'why'"),
        ("- {experiment: table7, why: x}", "entry 1: unknown experiment 'table7'"),
        ("- {experiment: table6, why: x, only: [resnet21]}", "has no model 'resnet21'"),
        ("- {experiment: table6, why: x, seeds: 0}", "seeds: 0 must be a number >= 1"),
        ("- {experiment: table6, why: x, when: now}", "unknown key 'when'"),
    ]
    for text, match in cases:
        path.write_text(text)
        with pytest.raises(ConfigError, match=match):
            queue.load_queue(path)


def test_the_repository_queue_loads_and_reads_as_commands():
    entries = queue.load_queue(REPO / "results" / "queue.yaml")
    assert entries and all(e.why and e.command.startswith("reslab reproduce ") for e in entries)


def _tiny_queue(root: Path, data_dir: Path) -> None:
    (root / "results").mkdir(parents=True)
    sets = ["train.batch_size=32", "train.eval_every=0", "data.eval_split=val5k", "data.split=train45k", "train.threads=2",
            f"data.data_dir={data_dir.resolve()}", "train.log_every=4"]  # fmt: skip
    entry = {"experiment": "table6", "only": ["resnet20"], "schedule": "1/400", "set": sets,
             "why": "a tiny stand-in for a paper run"}  # fmt: skip
    (root / "results" / "queue.yaml").write_text(json.dumps([entry]))  # JSON is YAML


def _queue(root: Path, *verb: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen(
        [sys.executable, "-m", "reslab", "queue", *verb], cwd=root, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs,
    )  # fmt: skip


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def test_a_fresh_clone_resumes_the_queue_bit_identically(tmp_path, data_dir, state):
    """An interrupted queue run is committed as it stands (its in-flight folder), cloned, and
    resumed in the clone: the ledger's weights equal those of an uninterrupted queue run."""
    straight, origin = tmp_path / "straight", tmp_path / "origin"
    for root in (straight, origin):
        _tiny_queue(root, data_dir)
    proc = _queue(straight, "run")
    assert proc.wait(timeout=600) == 0, proc.stdout.read()

    _git(origin, "init", "-q")
    shutil.copy(REPO / ".gitignore", origin / ".gitignore")
    proc = _queue(origin, "run")
    inflight = origin / "results" / "inflight" / "table6" / "resnet20-seed0-sched1of400"
    assert _wait_for(lambda: any((inflight / "checkpoints").glob("ckpt_*.pt")), 300)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, proc.stdout.read()
    [checkpoint] = (inflight / "checkpoints").glob("ckpt_*.pt")
    assert int(checkpoint.stem.split("_")[1]) < 160, "the run finished before the interruption"
    assert sorted(p.name for p in inflight.iterdir()) == [
        "checkpoints",
        "config.yaml",
        "metrics.jsonl",
    ]

    _git(origin, "add", "-A")  # what `git add` sees: lock and temporaries are not there to add
    _git(origin, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "in flight")
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(origin), str(clone))
    status = _queue(clone, "status").communicate(timeout=120)[0]
    assert f"in flight at {int(checkpoint.stem.split('_')[1])} of 160" in status
    proc = _queue(clone, "run")
    assert proc.wait(timeout=600) == 0, proc.stdout.read()
    assert not (clone / "results" / "inflight" / "table6").exists() or not any(
        (clone / "results" / "inflight" / "table6").iterdir()
    ), "a finished run leaves the in-flight folder"
    entry = Path("results/table6/resnet20-seed0-sched1of400")
    a = load_file(straight / entry / "model.safetensors")
    b = load_file(clone / entry / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "done (in the ledger)" in _queue(clone, "status").communicate(timeout=120)[0]
    # a second queue on the same folders is one line, exit 2
    shutil.rmtree(clone / "results" / "table6")
    first = _queue(clone, "run")
    try:
        assert first.stdout.readline().startswith("queue: reslab reproduce table6")  # holds it
        second = _queue(clone, "run")
        out = second.communicate(timeout=120)[0]
        assert second.returncode == 2 and "worked by another `reslab queue run`" in out, out
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
