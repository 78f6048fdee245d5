"""Packed runs: each of several runs trained at once ends bit-identical to the same run alone
(on a CPU, alone with the same number of threads: a CPU run's arithmetic depends on it)."""

from __future__ import annotations

import pytest
import torch

from reslab.engine import fit
from reslab.engine.checkpoint import load_checkpoint
from reslab.engine.packed import fit_packed


def _weights(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "final.pt")["model"]


def _same(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_packed_processes_match_the_runs_alone(tiny_config, tmp_path, one_thread):
    """Three runs (two seeds and another depth) in three one-thread processes, one of them
    resuming from a checkpoint of its own."""
    cfgs = [
        tiny_config(**{"train.seed": 0}),
        tiny_config(**{"train.seed": 1}),
        tiny_config(**{"train.seed": 0, "model.name": "plain8"}),
    ]
    jobs = [(cfg, tmp_path / "packed" / f"run{i}") for i, cfg in enumerate(cfgs)]
    summaries = fit_packed(jobs, 3, mode="processes", threads=1)
    assert [s["status"] for s in summaries] == ["finished"] * 3
    assert all("(1 threads)" in s["device"] for s in summaries)
    for i, cfg in enumerate(cfgs):
        alone = fit(cfg, tmp_path / "alone" / f"run{i}", progress=False)
        assert alone["test_error"] == summaries[i]["test_error"]
        assert _same(_weights(tmp_path / "alone" / f"run{i}"), _weights(jobs[i][1])), i
    assert not _same(_weights(jobs[0][1]), _weights(jobs[1][1]))  # the seeds do differ


def test_packed_threads_match_the_runs_alone_and_resume(
    tiny_config, tmp_path, packed_after_interrupt
):
    """The streams mode (one thread per run in this process; on a GPU each on its own CUDA
    stream), with one run resuming from its own interrupted checkpoint."""
    cfgs = [tiny_config(**{"train.seed": 0}), tiny_config(**{"train.seed": 2})]
    jobs, _ = packed_after_interrupt(cfgs, "streams", resumed=1)
    for i, cfg in enumerate(cfgs):
        fit(cfg, tmp_path / "alone" / f"run{i}", progress=False)
        assert _same(_weights(tmp_path / "alone" / f"run{i}"), _weights(jobs[i][1])), i


def test_a_failing_packed_run_is_reported(tiny_config, tmp_path):
    from reslab.engine.rundir import RunLock
    from reslab.errors import RunError

    jobs = [(tiny_config(), tmp_path / "a"), (tiny_config(**{"train.seed": 1}), tmp_path / "b")]
    with RunLock(tmp_path / "b"), pytest.raises(RunError, match="in use by another reslab process"):
        fit_packed(jobs, 2, mode="streams")
    assert (tmp_path / "a" / "checkpoints").is_dir()  # the other run checkpointed and stopped


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none is present")
@pytest.mark.parametrize(("mode", "graph"), [("streams", "whole step"), ("stacked", "whole stacked step")])  # fmt: skip
def test_packed_runs_on_a_gpu_train_like_the_runs_alone(tiny_config, tmp_path, mode, graph):
    """Two runs at once on a GPU: their whole-step CUDA graphs on their own streams, or the two
    seeds stacked into one grouped net replayed from one graph. Each ends close to the same run
    alone (cuDNN may pick other kernels: a tolerance, not bitwise)."""
    cfgs = [tiny_config(**{"train.seed": s, "train.device": "cuda"}) for s in (0, 1)]
    jobs = [(cfg, tmp_path / "packed" / f"run{i}") for i, cfg in enumerate(cfgs)]
    summaries = fit_packed(jobs, 2, mode=mode)
    assert [s["cuda_graph"] for s in summaries] == [graph] * 2
    for i, cfg in enumerate(cfgs):
        fit(cfg, tmp_path / "alone" / f"run{i}", progress=False)
        alone, packed = _weights(tmp_path / "alone" / f"run{i}"), _weights(jobs[i][1])
        for k in alone:
            torch.testing.assert_close(packed[k].float(), alone[k].float(), rtol=1e-2, atol=1e-3)


def test_progress_bars_follow_the_runs_metrics_logs(tiny_config, tmp_path, capsys):
    """Packed runs train elsewhere (processes, threads): a bar per run reads the newest iteration
    of its metrics log, skipping a line still being written."""
    from reslab.engine.packed import _Bars, _last_iteration

    log = tmp_path / "run" / "metrics.jsonl"
    assert _last_iteration(log) is None
    log.parent.mkdir()
    log.write_text(
        '{"iteration": 2, "train_loss": 1.0}\n{"event": "resume", "iteration": 4}\n{"itera'
    )
    assert _last_iteration(log) == 4
    bars = _Bars(enabled=True)
    bars.open(0, (tiny_config(), tmp_path / "run"))
    bars.update(every_s=0)
    assert bars.bars[0][0].n == 4
    bars.close_all()
    assert "4/9" in capsys.readouterr().err


def test_a_process_gets_the_threads_of_the_runs_beside_it(monkeypatch):
    """Threads are split between the runs that train at the same time: a run started when fewer
    remain gets a larger share; a fixed ``threads`` stays fixed."""
    from reslab.engine.packed import _Processes

    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert [_Processes(None).threads_for(n) for n in (1, 2, 3, 4, 8)] == [4, 2, 1, 1, 1]
    assert _Processes(1).threads_for(1) == 1
