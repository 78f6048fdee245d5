"""Packed runs (one process each) under faults, as real ``python -m reslab reproduce`` commands
with the signals sent by the test: a stop while the runs start up, a run killed (the OOM killer's
SIGKILL), the parent killed, a run folder in use. After each, the same command resumes, and the
weights end bit-identical to a pack that no fault touched; each run is recorded once.

Every wait has a timeout: a regression fails here instead of hanging the suite."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="follows processes through /proc"
)

REPO = Path(__file__).resolve().parents[1]
SCHEDULE, TAG = "1/1600", "sched1of1600"  # 40 iterations, a checkpoint every 5, a log line each
RUNS = [f"resnet20-seed{seed}-{TAG}" for seed in (0, 1)]


class Pack:
    """``reslab reproduce table6`` of two ResNet-20 seeds packed as two one-thread processes,
    its runs and ledger under ``root``."""

    def __init__(self, root: Path, data_dir: Path) -> None:
        self.root, self.proc, self.seen = root, None, set()
        self.args = [
            sys.executable, "-m", "reslab", "reproduce", "table6", "--only", "resnet20",
            "--schedule", SCHEDULE, "--seeds", "2", "--concurrent", "2",
            "--runs-dir", str(root / "runs"), "--results", str(root / "results"),
            "--data-dir", str(data_dir), "--no-progress", "--set", "train.batch_size=32",
            "--set", "train.eval_every=0", "--set", "data.split=train45k",
            "--set", "data.eval_split=val5k", "--set", "train.threads=1",
        ]  # fmt: skip
        # a ledger folder that exists: `reproduce` that records nothing into a new one fails
        # writing its README.md (report.build), a bug apart from the packing's
        (root / "results").mkdir(parents=True)

    def run_dir(self, seed: int) -> Path:
        return self.root / "runs" / "table6" / RUNS[seed]

    def entry(self, seed: int) -> Path:
        return self.root / "results" / "table6" / RUNS[seed]

    def start(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(self.args, cwd=REPO, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip

    def finish(self, timeout: float) -> tuple[int, str, str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"reslab reproduce still runs after {timeout} s (a hang)")
        return self.proc.returncode, out, err

    def run(self, timeout: float = 180) -> tuple[int, str, str]:
        self.start()
        return self.finish(timeout)

    def children(self) -> list[int]:
        """The parent's training processes (its multiprocessing children but the resource
        tracker), remembered for the clean-up."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                spawned = b"spawn_main" in (stat.parent / "cmdline").read_bytes()
            except (OSError, IndexError, ValueError):
                continue
            if ppid == self.proc.pid and spawned:
                found.append(int(stat.parent.name))
        self.seen.update(found)
        return found

    def trainer(self, seed: int) -> int:
        """The process training run ``seed`` (its run folder's lock names it)."""
        pid = int((self.run_dir(seed) / ".lock").read_text())
        self.seen.add(pid)
        return pid

    def wait_for(self, what: str, ready, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None:
                pytest.fail(f"reslab reproduce ended (exit {self.proc.returncode}) before {what}: "
                            f"{self.proc.stderr.read()}")  # fmt: skip
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {timeout} s")
            time.sleep(0.05)

    def log(self, seed: int) -> list[dict]:
        try:
            lines = (self.run_dir(seed) / "metrics.jsonl").read_text().splitlines()
        except OSError:
            return []
        return [json.loads(line) for line in lines if line.endswith("}")]

    def progress(self, seed: int) -> tuple[int, int]:
        """(how many times run ``seed`` resumed, the newest iteration it logged since)."""
        log = self.log(seed)
        starts = [i for i, x in enumerate(log) if x.get("event") == "resume"]
        since = log[starts[-1] :] if starts else log
        return len(starts), max((x["iteration"] for x in since if "train_loss" in x), default=0)

    def checkpoint(self, seed: int) -> int:
        """The iteration of run ``seed``'s newest checkpoint."""
        return max(int(p.stem[5:]) for p in (self.run_dir(seed) / "checkpoints").glob("ckpt_*.pt"))

    def kill_all(self) -> None:
        if self.proc is None:
            return
        for pid in [*self.children(), *self.seen, self.proc.pid]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _weights(entry: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(entry / "model.safetensors")


@pytest.fixture
def packs(data_dir, tmp_path):
    made = []

    def make(name: str) -> Pack:
        made.append(Pack(tmp_path / name, data_dir))
        return made[-1]

    yield make
    for pack in made:  # a failed test leaves nothing running
        pack.kill_all()


def test_packed_runs_survive_faults_and_resume_bit_identically(packs):
    """One pack through every fault in turn (each stage resumes what the one before left), then
    compared with a pack that trains untouched meanwhile (beside it: the runs use a thread each,
    however busy the cores, and the start-ups of the commands leave a core idle)."""
    untouched, pack = packs("untouched"), packs("faulted")
    untouched.start()

    # 1. SIGINT to the parent 0.5 s after its children start (before their handlers exist): they
    # stop cleanly, nothing is left running, and the command says so
    pack.start()
    pack.wait_for("children", lambda: len(pack.children()) == 2)
    time.sleep(0.5)
    pack.proc.send_signal(signal.SIGINT)
    code, out, err = pack.finish(timeout=90)
    assert code == 130, err
    assert "Traceback" not in err and out.count("not started") + out.count("interrupted") == 2
    assert _gone(sorted(pack.seen), timeout=5)

    # 2. SIGKILL one run's process (the OOM killer) after its first checkpoint: one line says so,
    # the other run finishes and is recorded, the command ends non-zero
    pack.start()
    pack.wait_for("a checkpoint of seed 1", lambda: pack.progress(1)[1] > 6)
    os.kill(pack.trainer(1), signal.SIGKILL)
    code, out, err = pack.finish(timeout=180)
    died = [line for line in err.splitlines() if "died" in line]
    assert died == [
        f"run table6/{RUNS[1]} died with signal 9 (SIGKILL: out of memory, or kill -9); the other "
        f"runs go on, and the same command resumes it from its checkpoint at iteration "
        f"{pack.checkpoint(1)}"
    ], err
    assert code != 0 and "Traceback" not in err
    assert (pack.entry(0) / "summary.json").is_file() and not pack.entry(1).exists()
    recorded = (pack.entry(0) / "summary.json").read_bytes()

    # 3. SIGKILL the parent while run 1 trains on: the run stops with it (checkpointing) instead
    # of training on as an orphan
    resumes, resumed_at = pack.progress(1)[0], pack.checkpoint(1)
    pack.start()

    def resumed() -> bool:
        times, iteration = pack.progress(1)
        return times > resumes and iteration > resumed_at + 2

    pack.wait_for("seed 1 resumed", resumed)
    trainer = pack.trainer(1)
    pack.proc.kill()
    pack.finish(timeout=10)
    assert _gone([trainer], timeout=30), "the run trained on without its parent"
    assert pack.log(1)[-1]["event"] == "interrupted"  # it checkpointed (SIGTERM), not finished
    assert not pack.entry(1).exists()

    # 4. a run folder that a live process holds: one line, exit 2, no wait
    from reslab.engine.rundir import RunLock

    with RunLock(pack.run_dir(1)):
        code, out, err = pack.run(timeout=90)
    assert code == 2
    assert err.splitlines() == [
        f"reslab reproduce: error: {pack.run_dir(1)} is in use by another reslab process (pid "
        f"{os.getpid()}); wait for it to finish or stop it, or give this run another --out"
    ]

    # 5. the same command again: run 1 resumes and finishes, each run is recorded once
    code, out, err = pack.run()
    assert code == 0, err
    assert (pack.entry(0) / "summary.json").read_bytes() == recorded
    assert sorted(p.name for p in pack.entry(0).parent.iterdir() if p.is_dir()) == RUNS

    code, _, err = untouched.finish(timeout=180)
    assert code == 0, err
    for seed in (0, 1):
        ours, theirs = _weights(pack.entry(seed)), _weights(untouched.entry(seed))
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), f"seed {seed} differs"
