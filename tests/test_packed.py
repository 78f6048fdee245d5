"""Packed runs: each of several runs trained at once ends bit-identical to the same run alone
(on a CPU, alone with the same number of threads: a CPU run's arithmetic depends on it, so every
run here pins ``train.threads``, and ``train.precision`` so that it computes the same on every CPU).
On a GPU, stacked nets and graphs run other kernels: there a step equals the step alone to
rounding, checked one step from the same state."""

from __future__ import annotations

import shutil

import pytest
import torch

from reslab.engine import fit
from reslab.engine.checkpoint import load_checkpoint
from reslab.engine.packed import fit_packed


def _weights(run_dir, name="final.pt"):
    return load_checkpoint(run_dir / "checkpoints" / name)["model"]


def _same(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("threads", [1, 2])
def test_packed_processes_match_the_runs_alone_at_equal_threads(tiny_config, tmp_path, threads):
    """Three runs (two seeds and another depth) in three processes of ``threads`` threads each,
    bit-identical to the same runs alone with ``threads`` threads: the contract holds at equal
    thread counts only (reductions are split per thread), which is what is checked, at 1 and at
    2 threads (2: each run's reductions do split)."""
    pinned = {"train.threads": threads, "train.precision": "fp32"}
    cfgs = [
        tiny_config(**{"train.seed": 0, **pinned}),
        tiny_config(**{"train.seed": 1, **pinned}),
        tiny_config(**{"train.seed": 0, "model.name": "plain8", **pinned}),
    ]
    jobs = [(cfg, tmp_path / "packed" / f"run{i}") for i, cfg in enumerate(cfgs)]
    summaries = fit_packed(jobs, 3, mode="processes", threads=threads)
    assert [s["status"] for s in summaries] == ["finished"] * 3
    for i, cfg in enumerate(cfgs):
        alone = fit(cfg, tmp_path / "alone" / f"run{i}", progress=False)
        assert summaries[i]["device"] == alone["device"]
        assert alone["device"].endswith(f"({threads} threads)")
        assert alone["test_error"] == summaries[i]["test_error"]
        assert _same(_weights(tmp_path / "alone" / f"run{i}"), _weights(jobs[i][1])), i
    assert not _same(_weights(jobs[0][1]), _weights(jobs[1][1]))  # the seeds do differ


def test_packed_threads_match_the_runs_alone_and_resume(
    tiny_config, tmp_path, packed_after_interrupt
):
    """The streams mode (one thread per run in this process; on a GPU each on its own CUDA
    stream), with one run resuming from its own interrupted checkpoint: bit-identical to the runs
    alone, each with one intra-op thread in both."""
    pinned = {"train.threads": 1, "train.precision": "fp32"}
    cfgs = [tiny_config(**{"train.seed": 0, **pinned}), tiny_config(**{"train.seed": 2, **pinned})]
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
    seeds stacked into one grouped net replayed from one graph. cuDNN may pick other kernels (and
    the stacked net is another net), so a packed step equals the step alone to rounding only: the
    last step, replayed, is checked against the run alone from the same checkpoint (iteration 8)
    for that one step; whole trajectories would part by more than rounding."""
    pinned = {"train.device": "cuda", "train.precision": "bf16", "train.checkpoint_every": 8}
    cfgs = [tiny_config(**{"train.seed": s, **pinned}) for s in (0, 1)]
    jobs = [(cfg, tmp_path / "packed" / f"run{i}") for i, cfg in enumerate(cfgs)]
    summaries = fit_packed(jobs, 2, mode=mode)
    assert [s["cuda_graph"] for s in summaries] == [graph] * 2
    for i, cfg in enumerate(cfgs):
        out = tmp_path / "alone" / f"run{i}"
        (out / "checkpoints").mkdir(parents=True)
        shutil.copy(jobs[i][1] / "checkpoints" / "ckpt_0000008.pt", out / "checkpoints")
        assert fit(cfg, out, progress=False)["status"] == "finished"  # one step, from 8 to 9
        alone, packed = _weights(out), _weights(jobs[i][1])
        for k in alone:
            torch.testing.assert_close(packed[k].float(), alone[k].float(), rtol=1e-3, atol=1e-4)


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
