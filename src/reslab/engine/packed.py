"""Packed runs: several independent training runs at the same time on one device.

    uv run reslab reproduce table6 --only resnet20 --seeds 3 --concurrent 3

Each run is an ordinary :func:`~reslab.engine.trainer.fit` in its own run directory (its seed,
data order, checkpoints, resume and summary are its own); packing only decides what runs beside
what. Three ways:

- ``"processes"``: one process per run, the CPU's threads split between the runs training at the
  same time (``threads`` each when given; a run that starts when fewer remain gets a larger share).
  A CPU run's arithmetic depends on its thread count (reductions are split per thread), so a
  packed run is bit-identical to the same run alone *with the same thread count*, which its
  summary's ``device`` states ("... (1 threads)"). Under ``train.threads=auto`` a packed run never
  goes above its share (the share is the most ``auto`` may use); a fixed ``train.threads`` in
  its config takes the place of the share.
- ``"streams"``: one thread per run in this process, each on its own CUDA stream, so that the
  runs' whole-step CUDA graphs overlap on the GPU (a small net's steps leave most of it idle).
- ``"stacked"``: one thread per run in this process; runs of one architecture (and batch size,
  precision, layout) train as one N-times wider net, grouped convolutions with per-net BN, heads
  and SGD steps (:mod:`reslab.engine.stacked`). Each step is the run's own in exact arithmetic;
  in floating point it differs in the last bits (other kernels), and like any change of summation
  order (a change of thread count too) the trajectories then drift apart. On a CPU one stack
  trains at a time (runs of another architecture wait for it).

At most ``concurrent`` runs train at once; the next starts when one ends. SIGINT/SIGTERM stop them
all (each checkpoints, and the same command resumes them). A run's error stops the others and is
raised once they have checkpointed.

A run's process may die without a word (the out-of-memory killer's SIGKILL): the parent watches
every child's exit, says so in one line, gives the run the status ``"died"`` (with the iteration
of its last checkpoint, where the same command resumes it) and lets the others finish. A child
starts with SIGINT/SIGTERM blocked and lets them in once its handlers exist, so that a stop that
comes while it still starts up ends it cleanly ("not started"), and it dies with its parent
(SIGTERM: it checkpoints), so that a parent killed leaves no orphans training on.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from reslab.config import Config
from reslab.errors import ReslabError

Job = tuple[Config, Path]
MODES = ("processes", "streams", "stacked")


def fit_packed(
    jobs: list[Job],
    concurrent: int,
    *,
    mode: str = "processes",
    threads: int | None = None,
    restart: bool = False,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Train every ``(config, run_dir)`` of ``jobs``, ``concurrent`` at a time; returns their
    summaries in order (``{"status": "not started"}`` for runs a stop left untouched, ``"died"``
    for a run whose process was killed). With ``progress``, a bar per running run follows its
    metrics log."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; valid: {', '.join(MODES)}")
    pack = _Processes(threads) if mode == "processes" else _Threads(stacked=mode == "stacked")
    return pack.run(jobs, max(1, concurrent), restart, _Bars(progress))


def _fit_one(job: Job, restart: bool, threads: int | None = None, seat=None) -> tuple[str, Any]:
    """One run: ("summary", its summary) or ("error", what stopped it). A run with a ``seat``
    trains stacked with its group; a streams-mode run on a GPU trains on its own CUDA stream."""
    from reslab.engine.trainer import fit

    if threads is not None:
        torch.set_num_threads(threads)
    cfg, run_dir = job
    own_stream = seat is None and torch.cuda.is_available() and cfg.train.device != "cpu"
    try:
        with torch.cuda.stream(torch.cuda.Stream()) if own_stream else contextlib.nullcontext():
            return "summary", fit(cfg, run_dir, restart=restart, progress=False, stack=seat)
    except ReslabError as err:
        return "error", err
    except BaseException:  # a bug: its traceback travels as text (it may not pickle)
        return "error", RuntimeError(f"run {run_dir} failed:\n{traceback.format_exc()}")
    finally:
        if seat is not None:
            seat.leave()  # the group's other runs go on without this one


def _fit_in_thread(job: Job, restart: bool, index: int, results: queue.Queue, seat=None) -> None:
    results.put((index, *_fit_one(job, restart, seat=seat)))


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _fit_in_process(job: Job, restart: bool, threads: int, parent: int, report) -> None:
    """A run in a process of its own: ``(kind, value)`` of :func:`_fit_one` goes to ``report``
    (a connection). It starts with the stop signals blocked (its parent's mask): they come in once
    the handlers exist, and a stop that came before training is "not started"."""
    if hasattr(signal, "sigpending") and STOP_SIGNALS & signal.sigpending():
        _tell(report, ("summary", {"status": "not started"}))  # stopped while it started up
        return
    from reslab.engine.loop import StopRequest

    _die_with(parent)
    with StopRequest() as stop:  # outermost: the training loop's own reads the same flag
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # a pending stop sets it now
        if stop.requested:
            _tell(report, ("summary", {"status": "not started"}))
        else:  # told under the handlers: a stop that comes late cannot cut the report short
            _tell(report, _fit_one(job, restart, threads))


def _tell(report, result: tuple[str, Any]) -> None:
    with contextlib.suppress(OSError):  # a parent gone hears nothing (the run has checkpointed)
        report.send(result)


def _die_with(parent: int) -> None:
    """SIGTERM this process (it checkpoints and ends) when its ``parent`` ends, however it ends:
    Linux's ``PR_SET_PDEATHSIG``, elsewhere a thread that watches ``getppid()``."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        watch = libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0
    else:
        watch = True
    if watch:

        def orphaned() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=orphaned, name="parent-watch", daemon=True).start()
    if os.getppid() != parent:  # it died before the line above: nothing else would tell us
        os.kill(os.getpid(), signal.SIGTERM)


def _died(job: Job, exitcode: int | None) -> dict[str, Any]:
    """The summary of a run whose process ended without reporting (a signal, most often the
    out-of-memory killer's SIGKILL): what happened, and where the same command resumes it."""
    from reslab.engine.checkpoint import CHECKPOINT_RE, list_checkpoints

    cfg, run_dir = job
    if exitcode is not None and exitcode < 0:
        number = -exitcode
        name = signal.Signals(number).name if number in set(signal.Signals) else "?"
        how = f"died with signal {number} ({name}"
        how += ": out of memory, or kill -9)" if number == getattr(signal, "SIGKILL", 9) else ")"
    else:
        how = f"ended without a result (exit code {exitcode})"
    saved = list_checkpoints(run_dir / "checkpoints")
    iteration = int(CHECKPOINT_RE.search(saved[-1].name)[1]) if saved else 0
    where = f"its checkpoint at iteration {iteration}" if saved else "its start"
    return {
        "status": "died",
        "error": f"run {cfg.name or run_dir} {how}; the other runs go on, and the same command "
        f"resumes it from {where}",
        "iteration": iteration,
        "checkpoint": str(saved[-1]) if saved else None,
    }


class _Pack:
    """Starts runs as slots free up and collects what they report."""

    def start(self, job: Job, index: int, restart: bool, sharing: int) -> None:
        """Start ``job``; ``sharing`` runs (it included) will train at the same time."""
        raise NotImplementedError

    def stop_all(self) -> None:
        raise NotImplementedError

    def wait(self) -> None:
        raise NotImplementedError

    def collect(self, timeout: float) -> list[tuple[int, str, Any]]:
        """What runs reported (or how they died) within ``timeout`` seconds: (index, "summary",
        "died" or "error", value) each."""
        raise NotImplementedError

    def can_start(self, job: Job, running: list[Job]) -> bool:
        """Whether ``job`` may start beside the ``running`` ones (a free slot given)."""
        return True

    def run(
        self, jobs: list[Job], concurrent: int, restart: bool, bars: _Bars
    ) -> list[dict[str, Any]]:
        from reslab.engine.loop import StopRequest

        summaries: list[dict[str, Any]] = [{"status": "not started"} for _ in jobs]
        pending, running, error, stopping = list(range(len(jobs))), set(), None, False
        try:
            with StopRequest() as stop:
                while pending or running:
                    while (
                        pending
                        and len(running) < concurrent
                        and self.can_start(jobs[pending[0]], [jobs[i] for i in running])
                        and not (stop.requested or error)
                    ):
                        index = pending.pop(0)
                        sharing = min(concurrent, len(running) + 1 + len(pending))
                        self.start(jobs[index], index, restart, sharing)
                        running.add(index)
                        bars.open(index, jobs[index])
                    if (stop.requested or error) and not stopping:
                        stopping = True
                        self.stop_all()  # each running fit checkpoints and returns
                    if not running:
                        break
                    bars.update()
                    for index, kind, value in self.collect(timeout=0.5):
                        running.discard(index)
                        bars.close(index)
                        if kind == "error":
                            error = error or value
                            continue
                        summaries[index] = value
                        if kind == "died":  # the others go on
                            bars.note(value["error"])
        except BaseException:
            self.stop_all()  # a bug of ours here: the runs checkpoint rather than train on
            raise
        finally:
            self.wait()
            bars.close_all()
        if error is not None:
            raise error
        return summaries


class _Bars:
    """A progress bar per running run, following the newest iteration in its ``metrics.jsonl``
    (written every ``train.log_every`` steps by whichever process or thread trains it)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.bars, self._last = enabled, {}, 0.0

    def open(self, index: int, job: Job) -> None:
        if self.enabled:
            from tqdm import tqdm

            cfg, run_dir = job
            taken = {bar.pos for bar, _ in self.bars.values()}
            row = next(r for r in range(len(taken) + 1) if r not in taken)
            bar = tqdm(total=cfg.train.iterations, desc=cfg.name or run_dir.name, unit="it",
                       position=row, dynamic_ncols=True)  # fmt: skip
            self.bars[index] = (bar, run_dir / "metrics.jsonl")

    def update(self, every_s: float = 2.0) -> None:
        if not self.bars or time.monotonic() - self._last < every_s:
            return
        self._last = time.monotonic()
        for bar, log in self.bars.values():
            iteration = _last_iteration(log)
            if iteration is not None and iteration != bar.n:
                bar.update(iteration - bar.n)

    def close(self, index: int) -> None:
        if index in self.bars:
            bar, log = self.bars.pop(index)
            bar.update((_last_iteration(log) or bar.n) - bar.n)
            bar.close()

    def close_all(self) -> None:
        for index in list(self.bars):
            self.close(index)

    def note(self, line: str) -> None:
        """``line`` on stderr, above the bars."""
        if self.enabled:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)


def _last_iteration(log: Path) -> int | None:
    """The iteration of the newest complete line of a metrics log (None before the first)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return int(json.loads(line)["iteration"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


class _Processes(_Pack):
    def __init__(self, threads: int | None) -> None:
        self.context, self.threads = mp.get_context("spawn"), threads
        self.children: dict[int, tuple[Any, Any, Job]] = {}  # index -> (process, its report, job)
        self.started: list[Any] = []

    def threads_for(self, sharing: int) -> int:
        """CPU threads of a run started beside ``sharing - 1`` others (the fixed ``threads`` when
        given): the last run of a pack does not keep a partner's share idle."""
        return self.threads or max(1, torch.get_num_threads() // max(1, sharing))

    def start(self, job: Job, index: int, restart: bool, sharing: int) -> None:
        from multiprocessing import resource_tracker

        report, send = self.context.Pipe(duplex=False)
        args = (job, restart, self.threads_for(sharing), os.getpid(), send)
        child = self.context.Process(target=_fit_in_process, args=args, daemon=False)
        resource_tracker.ensure_running()  # starting, it would unblock the signals blocked below
        with _blocked(STOP_SIGNALS):  # the child inherits the mask (see _fit_in_process)
            child.start()
        send.close()  # the child's end: once it ends, its report reads EOF if it said nothing
        self.children[index] = (child, report, job)
        self.started.append(child)

    def collect(self, timeout: float) -> list[tuple[int, str, Any]]:
        from multiprocessing.connection import wait

        pairs = [(report, child.sentinel) for child, report, _ in self.children.values()]
        watched = [x for pair in pairs for x in pair]
        ready = set(wait(watched, timeout)) if watched else set()
        events = []
        for index, (child, report, job) in list(self.children.items()):
            if report not in ready and child.sentinel not in ready:
                continue
            try:  # what it sent before it ended (a child that ended has closed its end)
                kind, value = report.recv()
            except (EOFError, OSError):  # it ended without a word: killed
                child.join(timeout=10)
                kind, value = "died", _died(job, child.exitcode)
            report.close()
            del self.children[index]
            events.append((index, kind, value))
        return events

    def stop_all(self) -> None:
        for child, _, _ in self.children.values():
            if child.pid is not None:
                with contextlib.suppress(ProcessLookupError):  # fit checkpoints and returns
                    os.kill(child.pid, signal.SIGTERM)  # (one still starting: once it can)

    def wait(self) -> None:
        for child in self.started:
            child.join()


@contextlib.contextmanager
def _blocked(signals: set[int]):
    """``signals`` held pending in this thread for the context (where the platform allows)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


class _Threads(_Pack):
    """One thread per run (the streams and the stacked modes); stacked runs of one
    :func:`~reslab.engine.stacked.stack_key` share a group."""

    def __init__(self, stacked: bool) -> None:
        self.results, self.workers, self.stacked = queue.Queue(), [], stacked
        self.groups: dict[tuple, Any] = {}

    def start(self, job: Job, index: int, restart: bool, sharing: int) -> None:
        seat = None
        if self.stacked:
            from reslab.engine.stacked import group_for, stack_key

            key = stack_key(job[0])
            if key not in self.groups:
                self.groups[key] = group_for(job[0])
            seat = self.groups[key].join()
        args = (job, restart, index, self.results, seat)
        worker = threading.Thread(target=_fit_in_thread, args=args)
        worker.start()
        self.workers.append(worker)

    def can_start(self, job: Job, running: list[Job]) -> bool:
        """On a CPU, stacked runs of one key at a time: each stack is an OpenMP team of every
        thread, and two at once oversubscribe the cores (the next key waits for this one)."""
        if not self.stacked or not running:
            return True
        from reslab.engine.runtime import resolve_device
        from reslab.engine.stacked import stack_key

        if resolve_device(job[0].train.device).type != "cpu":
            return True
        return all(stack_key(cfg) == stack_key(job[0]) for cfg, _ in running)

    def collect(self, timeout: float) -> list[tuple[int, str, Any]]:
        try:
            return [self.results.get(timeout=timeout)]
        except queue.Empty:
            return []

    def stop_all(self) -> None:
        from reslab.engine.loop import _STOP

        _STOP.set()  # the flag every fit of this process checks after each step

    def wait(self) -> None:
        for worker in self.workers:
            worker.join()
