"""The CPU queue: ``reslab reproduce`` commands trained one after another in the background, their
in-flight state kept in the repository so that a fresh clone on another machine resumes them.

    nohup uv run reslab queue run > /dev/null 2>&1 &     # work down results/queue.yaml
    uv run reslab queue status                            # done / in flight at i of n / waiting
    uv run reslab queue pause --while $$                  # until this shell exits (tests, benchmarks)

``results/queue.yaml`` is an ordered list of entries, each a ``reslab reproduce`` command written as
data (``experiment``, ``only``, ``seeds``, ``schedule``, ``set``, ``concurrent``) with a one-line
``why``. ``reslab queue run`` takes the entries in order: the runs the ledger holds are skipped, the
first unfinished one is resumed from its newest checkpoint, and each run that finishes is recorded
in the ledger, re-evaluated from its weights (``reslab report --verify``), and its in-flight folder
deleted. Runs train in ``results/inflight/<experiment>/<run>/`` (``config.yaml``, ``metrics.jsonl``
and the newest complete checkpoint, written by temporary file and rename), which is tracked by git:
whoever commits work commits it as it stands, and a new machine resumes from there bit for bit.

Two jobs of two threads each on two cores run 5-6x slower each (measured 2026-11-29), so whatever
needs the cores for a while pauses the queue: ``pause`` stops every process of every running queue
(SIGSTOP; the engine leaves the paused stretch out of a run's clock) until the process it names
exits, and a detached watcher resumes them then, however that process ends. The test suite
(``tests/conftest.py``) and ``reslab bench`` do so themselves. Several pauses may overlap: the
queue resumes when the last one ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reslab.errors import ConfigError, MissingFileError, RunError
from reslab.experiments.ledger import recorded
from reslab.experiments.reproduce import Run, parse_schedule, plan
from reslab.processes import process_tree
from reslab.strict_yaml import parse_yaml

QUEUE_FILE = "results/queue.yaml"
INFLIGHT = "results/inflight"
# What the queue adds to every run's config: one checkpoint kept (the newest; it is what a commit
# carries) and no TensorBoard files in the repository. Neither changes what a run computes.
QUEUE_OVERRIDES = ("train.keep_checkpoints=1", "train.tensorboard=false")
ENTRY_KEYS = ("experiment", "only", "seeds", "schedule", "set", "concurrent", "why")


@dataclass(frozen=True)
class Entry:
    """One ``reslab reproduce`` command of the queue."""

    experiment: str
    why: str
    only: tuple[str, ...] = ()
    seeds: int = 1
    schedule: str = "1"
    set: tuple[str, ...] = ()  # extra config overrides (--set), recorded in each run's config
    concurrent: str = "1"

    @property
    def command(self) -> str:
        """The entry as the command a user would type."""
        words = ["reslab", "reproduce", self.experiment]
        if self.only:
            words += ["--only", *self.only]
        if self.seeds != 1:
            words += ["--seeds", str(self.seeds)]
        if self.schedule != "1":
            words += ["--schedule", self.schedule]
        if self.concurrent != "1":
            words += ["--concurrent", self.concurrent]
        for item in self.set:
            words += ["--set", item]
        return shlex.join(words)

    def runs(self) -> list[Run]:
        return plan(self.experiment, parse_schedule(self.schedule), self.seeds, list(self.only))


def load_queue(path: str | Path = QUEUE_FILE) -> list[Entry]:
    """The entries of a queue file, each checked (its experiment and models planned)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no queue file {path} (an ordered YAML list of reproduce entries)")
    data = parse_yaml(path.read_text(), str(path))
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a list of entries (- experiment: ..., why: ...)")
    entries = []
    for i, item in enumerate(data, 1):
        where = f"{path} entry {i}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a mapping with experiment and why")
        unknown = sorted(set(item) - set(ENTRY_KEYS))
        if unknown:
            raise ConfigError(
                f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(ENTRY_KEYS)}"
            )
        if not item.get("experiment") or not item.get("why"):
            raise ConfigError(f"{where}: needs 'experiment' and a one-line 'why'")
        only, sets = item.get("only") or [], item.get("set") or []
        if not isinstance(only, list) or not isinstance(sets, list):
            raise ConfigError(f"{where}: 'only' and 'set' are lists")
        seeds = item.get("seeds", 1)
        if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
            raise ConfigError(f"{where}: seeds: {seeds!r} must be a number >= 1")
        entry = Entry(
            experiment=str(item["experiment"]),
            why=str(item["why"]),
            only=tuple(map(str, only)),
            seeds=seeds,
            schedule=str(item.get("schedule", "1")),
            set=tuple(map(str, sets)),
            concurrent=str(item.get("concurrent", "1")),
        )
        try:
            entry.runs()
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        entries.append(entry)
    return entries


# ---- working down the queue ------------------------------------------------------------------


def run_queue(
    path: str | Path = QUEUE_FILE,
    *,
    results_dir: str | Path = "results",
    runs_dir: str | Path = INFLIGHT,
    data_dir: str | None = None,
) -> int:
    """Train the queue's unfinished runs in order (see the module doc); returns 0 when every entry
    is done, 130 when a stop (SIGINT/SIGTERM) interrupted it (the same command resumes)."""
    from reslab.experiments.report import build
    from reslab.experiments.run import reproduce_and_report

    entries = load_queue(path)
    results, runs_dir = Path(results_dir), Path(runs_dir)
    with (
        _exclusive(runs_dir / ".queue.lock", f"{runs_dir} is worked by another `reslab queue run`"),
        _registered(),
    ):
        for entry in entries:
            _wait_while_paused()
            todo = [run for run in entry.runs() if recorded(run, results) is None]
            _clear_finished(entry, results, runs_dir)
            if not todo:
                continue
            print(f"queue: {entry.command}  ({entry.why})", flush=True)
            summaries, _ = reproduce_and_report(
                entry.experiment,
                parse_schedule(entry.schedule),
                seeds=entry.seeds,
                only=list(entry.only),
                data_dir=data_dir,
                runs_dir=runs_dir,
                results_dir=results,
                argv=shlex.split(entry.command)[1:],
                progress=False,
                overrides=[*entry.set, *QUEUE_OVERRIDES],
                concurrent=entry.concurrent,
                skip_recorded=True,
            )
            if any(s["status"] != "finished" for s in summaries):
                return 130
            build(results, verify=True, data_dir=data_dir)  # re-evaluates the new runs
            _clear_finished(entry, results, runs_dir)
    return 0


def _clear_finished(entry: Entry, results: Path, runs_dir: Path) -> None:
    """Delete the in-flight folders of the entry's runs that the ledger holds."""
    for run in entry.runs():
        folder = runs_dir / run.experiment / run.name
        if folder.is_dir() and recorded(run, results) is not None:
            shutil.rmtree(folder)


# ---- where the queue stands ------------------------------------------------------------------


@dataclass
class RunStatus:
    entry: int  # 1-based position in the queue
    run: str  # experiment/run name
    state: str  # "done", "in flight", "waiting"
    iteration: int
    iterations: int
    images_per_s: float | None = None
    speed_from: str = ""  # where the speed comes from
    hours_left: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def queue_status(
    path: str | Path = QUEUE_FILE,
    *,
    results_dir: str | Path = "results",
    runs_dir: str | Path = INFLIGHT,
    bench_dir: str | Path = "results/bench",
) -> tuple[list[Entry], list[RunStatus]]:
    """Each run of each entry: done (in the ledger), in flight (its checkpoint's iteration) or
    waiting, with the CPU-hours its remaining iterations project to: from the run's own speed
    (its ``metrics.jsonl``) when it has trained, else from the newest ``reslab bench train`` CPU
    record (a model it lacks scaled from the nearest measured one by multiply-adds)."""
    from reslab.engine.checkpoint import latest_checkpoint
    from reslab.engine.logging import read_jsonl

    entries, rows = load_queue(path), []
    results, runs_dir = Path(results_dir), Path(runs_dir)
    bench = _newest_cpu_bench(Path(bench_dir))
    seen: set[str] = set()
    for number, entry in enumerate(entries, 1):
        overrides = [*entry.set, *QUEUE_OVERRIDES]
        for run in entry.runs():
            key = f"{run.experiment}/{run.name}"
            if key in seen:
                continue
            seen.add(key)
            cfg = run.config(None, None, overrides)
            total = cfg.train.iterations
            row = RunStatus(number, key, "waiting", 0, total)
            if recorded(run, results) is not None:
                row.state, row.iteration = "done", total
                rows.append(row)
                continue
            folder = runs_dir / run.experiment / run.name
            found = latest_checkpoint(folder / "checkpoints") if folder.is_dir() else None
            if found is not None:
                row.state, row.iteration = "in flight", found[0]["state"]["iteration"]
            log = folder / "metrics.jsonl"
            speeds = [
                r["images_per_s"]
                for r in (read_jsonl(log) if log.is_file() else [])
                if isinstance(r.get("images_per_s"), int | float) and r["images_per_s"] > 0
            ]
            if speeds:
                row.images_per_s, row.speed_from = speeds[-1], "its own metrics.jsonl"
            elif bench is not None:
                row.images_per_s, row.speed_from = _bench_speed(cfg, bench)
            if row.images_per_s:
                left = (total - row.iteration) * cfg.train.batch_size / row.images_per_s
                row.hours_left = left / 3600
            rows.append(row)
    return entries, rows


def format_status(entries: list[Entry], rows: list[RunStatus]) -> str:
    """The queue as a table: entry by entry, run by run, with the projected CPU-hours left."""
    lines = []
    for number, entry in enumerate(entries, 1):
        lines.append(f"{number}. {entry.command}\n   why: {entry.why}")
        for r in (r for r in rows if r.entry == number):
            if r.state == "done":
                state = "done (in the ledger)"
            elif r.state == "in flight":
                state = f"in flight at {r.iteration:,} of {r.iterations:,}"
            else:
                state = f"waiting ({r.iterations:,} iterations)"
            left = (
                f"{r.hours_left:.1f} CPU-h left at {r.images_per_s:,.0f} images/s ({r.speed_from})"
                if r.hours_left is not None and r.state != "done"
                else ""
            )
            lines.append(f"   {r.run:<40} {state:<32} {left}".rstrip())
    pending = [r.hours_left for r in rows if r.state != "done" and r.hours_left is not None]
    unknown = sum(1 for r in rows if r.state != "done" and r.hours_left is None)
    lines.append(
        f"left: {sum(pending):.1f} CPU-hours over {len(pending)} runs"
        + (f" (and {unknown} without a speed to project from)" if unknown else "")
    )
    return "\n".join(lines)


def _newest_cpu_bench(bench_dir: Path) -> tuple[Path, dict[str, float]] | None:
    """(record, images/s per model) of the newest one-run CPU ``reslab bench train`` record."""
    for path in sorted(bench_dir.glob("*-cpu-train*.json"), reverse=True):
        try:
            record = json.loads(path.read_text())
            speeds = {
                r["model"]: float(r["images_per_s"])
                for r in record["results"]
                if "concurrent" not in r
            }
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if speeds:
            return path, speeds
    return None


def _bench_speed(cfg: Any, bench: tuple[Path, dict[str, float]]) -> tuple[float, str]:
    from reslab.experiments.reproduce import scaled_speed

    path, speeds = bench
    size = cfg.data.crop if cfg.data.dataset == "imagefolder" else None
    speed, how = scaled_speed(cfg.model.name, cfg.model.options, speeds, size)
    return speed, f"{how} in {path.name}"


# ---- sharing the cores: pausing the queue ----------------------------------------------------


def state_dir() -> Path:
    """Where running queues and pauses register (``$RESLAB_QUEUE_STATE``, else the user's cache)."""
    default = Path.home() / ".cache" / "reslab" / "queue"
    return Path(os.environ.get("RESLAB_QUEUE_STATE") or default)


@contextlib.contextmanager
def _exclusive(path: Path, busy: str) -> Iterator[None]:
    """Hold an ``flock`` on ``path`` (created) for the context; :class:`RunError` when held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"{busy}; stop it first or wait for it") from None
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def _live(folder: Path) -> list[int]:
    """The pids registered in ``folder`` whose registration is still held (an ``flock`` that the
    kernel drops when the process ends, however it ends); stale files are removed."""
    pids = []
    for path in sorted(p for p in folder.glob("[0-9]*") if p.name.isdigit()):
        try:
            with open(path) as file:
                fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pids.append(int(path.name))
            continue
        except OSError:
            continue
        path.unlink(missing_ok=True)
    return pids


@contextlib.contextmanager
def _registered() -> Iterator[None]:
    """This process as a running queue, for :func:`pause` to find."""
    folder = state_dir() / "runners"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / str(os.getpid())
    with open(path, "w") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)


def _wait_while_paused() -> None:
    """Between runs: wait while a pause holds (one that began before this queue registered)."""
    while _live(state_dir() / "holds"):
        time.sleep(1.0)


def _signal_queues(sig: int) -> int:
    """Send ``sig`` to every process of every running queue; returns how many queues."""
    runners = _live(state_dir() / "runners")
    for runner in runners:
        for pid in process_tree(runner):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
    return len(runners)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def hold(holder: int, poll_s: float = 0.25) -> None:
    """The watcher that :func:`pause` starts (detached): registers a hold, keeps every running
    queue stopped (a queue started meanwhile too) while ``holder`` lives and the hold is not
    released, then resumes the queues unless another hold remains."""
    folder = state_dir() / "holds"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / str(os.getpid())
    with open(path, "w") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        file.write(str(holder))
        file.flush()
        ready = folder / f"{os.getpid()}.ready"
        while _alive(holder) and path.is_file():
            _signal_queues(signal.SIGSTOP)
            ready.touch()
            time.sleep(poll_s)
        ready.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
    with _exclusive_wait(state_dir() / "resume.lock"):  # two holds ending at once: one resumes
        if not _live(folder):
            _signal_queues(signal.SIGCONT)


@contextlib.contextmanager
def _exclusive_wait(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Hold:
    """A pause: its watcher process, and how many queues were running when it took hold."""

    watcher: int
    queues: int


def pause(holder: int, timeout_s: float = 30.0) -> Hold:
    """Pause every running queue until process ``holder`` exits (or :func:`release` of the
    returned hold); a queue started meanwhile waits too. Overlapping pauses nest: each has its
    own watcher, and the queues resume when the last one ends."""
    folder = state_dir() / "holds"
    folder.mkdir(parents=True, exist_ok=True)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "reslab.experiments.queue", "hold", str(holder)],
        start_new_session=True,  # outlives the holder: it resumes the queue when the holder ends
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "RESLAB_QUEUE_STATE": str(state_dir())},
    )
    ready, deadline = folder / f"{watcher.pid}.ready", time.monotonic() + timeout_s
    while not ready.exists():
        if watcher.poll() is not None and not _alive(holder):
            return Hold(watcher.pid, 0)  # the holder ended before the pause took hold
        if watcher.poll() is not None or time.monotonic() > deadline:
            raise RunError(f"the queue's pause watcher (pid {watcher.pid}) did not start")
        time.sleep(0.02)
    return Hold(watcher.pid, len(_live(state_dir() / "runners")))


def release(hold: Hold | None = None, timeout_s: float = 30.0) -> None:
    """End ``hold`` (every pause when None: ``reslab queue resume``) and wait until its watcher
    has resumed the queues (unless another pause remains)."""
    folder = state_dir() / "holds"
    watchers = [p for p in _live(folder) if hold is None or p == hold.watcher]
    for pid in watchers:
        (folder / str(pid)).unlink(missing_ok=True)
    deadline = time.monotonic() + timeout_s
    while any(_alive(pid) for pid in watchers) and time.monotonic() < deadline:
        time.sleep(0.02)


@contextlib.contextmanager
def paused() -> Iterator[Hold]:
    """Every running queue paused for the context (benchmarks); yields the hold (``.queues``:
    how many run). Only this pause ends with the context: one the caller's process holds
    besides (the test session's) stays."""
    hold = pause(os.getpid())
    try:
        yield hold
    finally:
        release(hold)


if __name__ == "__main__" and sys.argv[1:2] == ["hold"]:
    hold(int(sys.argv[2]))
