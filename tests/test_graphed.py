"""The whole-step CUDA graph trains exactly like the engine's eager step.

On CPU the graphed step runs its body eagerly, which checks everything but the capture: the batch
picked inside the step from the epoch tables, the learning rate as a device tensor, the paper SGD
update and the metric window. The capture itself is checked on a GPU (marked ``gpu``).
"""

from __future__ import annotations

import pytest
import torch

from reslab.data.loaders import TensorLoader
from reslab.data.transforms import Normalize
from reslab.engine import EagerStep, PaperSGD, StepSchedule, TrainState
from reslab.engine.graphed import GraphedStep
from reslab.models import create_model


def _setup(device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (96,), generator=g)
    normalize = Normalize.fit(images).to(device)
    loader = TensorLoader(images, labels, 32, normalize, train=True, seed=1, device=device)
    torch.manual_seed(seed)
    model = create_model("resnet8").to(device)
    opt = PaperSGD(model.parameters(), 0.1, 0.9, 1e-4)
    return model, opt, loader


def _run(step, schedule: StepSchedule, iterations: int) -> TrainState:
    """The engine's loop without its logging: one step per iteration, epochs rolling over."""
    state = TrainState()
    step.start_epoch(0)
    while state.iteration < iterations:
        step(schedule.lr(state.iteration))
        if state.advance(len(step)):
            step.start_epoch(state.epoch)
    return state


def _train(device: str, graphed: bool, iterations: int, capture: bool | None = None):
    model, opt, loader = _setup(device)
    schedule = StepSchedule(0.1, [4])  # an lr drop inside the run
    window = torch.zeros(3, dtype=torch.float64, device=device)
    if graphed:
        step = GraphedStep(model, opt, loader, window, "fp32", capture=capture, warmup=2)
    else:
        step = EagerStep(model, opt, loader, window, "fp32")
    state = _run(step, schedule, iterations)
    return model, window.cpu(), state


def test_graphed_step_matches_eager_step_on_cpu():
    """7 steps over three epochs (3 batches each) with an lr drop: same weights, same metrics."""
    eager, w_eager, s_eager = _train("cpu", graphed=False, iterations=7)
    graphed, w_graphed, s_graphed = _train("cpu", graphed=True, iterations=7)
    assert (s_graphed.iteration, s_graphed.epoch, s_graphed.position) == (7, 2, 1)
    assert (s_eager.iteration, s_eager.epoch, s_eager.position) == (7, 2, 1)
    for (name, a), b in zip(eager.state_dict().items(), graphed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # the same kernels in the same order: bit-identical
    assert torch.equal(w_graphed, w_eager) and w_graphed[2] == 7 * 32


@pytest.mark.slow
def test_graphed_step_with_a_compiled_model_trains_like_eager():
    """compile_mode="default" inside the graphed step (Inductor's kernels, run eagerly on CPU):
    one step from the same initial state agrees with the eager step's up to float rounding (its
    fused kernels sum in another order; over several steps trajectories would part by more)."""
    eager, w_eager, _ = _train("cpu", graphed=False, iterations=1)
    model, opt, loader = _setup("cpu")
    window = torch.zeros(3, dtype=torch.float64)
    step = GraphedStep(model, opt, loader, window, "fp32", compile_mode="default")
    _run(step, StepSchedule(0.1, [4]), 1)
    for (name, a), b in zip(eager.state_dict().items(), model.state_dict().values(), strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(window[0], w_eager[0], rtol=1e-5, atol=0)


def test_graphed_step_refuses_what_it_cannot_capture():
    model, opt, loader = _setup("cpu")
    window = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        GraphedStep(model, opt, loader, window, capture=True)
    sharded = TensorLoader(
        loader.images, loader.labels, 32, loader.normalize, train=True, shard=(0, 2)
    )
    with pytest.raises(ValueError, match="one process"):
        GraphedStep(model, opt, sharded, window)
    with pytest.raises(ValueError, match="nest CUDA graphs"):
        GraphedStep(model, opt, loader, window, compile_mode="reduce-overhead")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none is present")
def test_captured_step_matches_eager_step_on_gpu():
    """A replay of the captured graph trains like an eager step: step 7 (a replay, after the lr
    drop and two epochs' rollovers) from the graphed run's state at 6 against an eager step from
    that same state. cuDNN may pick other kernels in a capture, so to rounding, one step at a time
    (over several steps trajectories would part by more)."""
    import copy

    model, opt, loader = _setup("cuda")
    window = torch.zeros(3, dtype=torch.float64, device="cuda")
    graphed = GraphedStep(model, opt, loader, window, "fp32", capture=True, warmup=2)
    schedule = StepSchedule(0.1, [4])
    state = _run(graphed, schedule, 6)  # 2 eager warm-up steps, the capture, 3 replays
    assert graphed.replay.graph is not None and (state.epoch, state.position) == (2, 0)
    e_model, e_opt, e_loader = _setup("cuda")
    e_model.load_state_dict(model.state_dict())
    e_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # its own momentum buffers
    e_window = torch.zeros(3, dtype=torch.float64, device="cuda")
    eager = EagerStep(e_model, e_opt, e_loader, e_window, "fp32")
    eager.start_epoch(state.epoch, state.position)
    before = window.clone()
    eager(schedule.lr(6))
    graphed(schedule.lr(6))
    for (name, a), b in zip(e_model.state_dict().items(), model.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=name)
    step_window, e_window = (window - before).cpu(), e_window.cpu()
    assert step_window[2] == e_window[2] == 32 and window[2].item() == 7 * 32
    torch.testing.assert_close(step_window[0], e_window[0], rtol=1e-4, atol=0)


def test_fit_through_the_graphed_step_resumes_and_matches_the_eager_engine(
    tiny_config, tmp_path, monkeypatch
):
    """``train.cuda_graph=true`` (run eagerly on CPU): an interrupted and resumed run ends with the
    same weights as a straight one, and both agree with the engine's eager step."""
    from reslab.engine import fit
    from reslab.engine.checkpoint import load_checkpoint

    def cfg(**extra):
        pinned = {"train.precision": "fp32", "train.threads": 1}  # bit for bit: same threads
        return tiny_config(**{**pinned, "train.tensorboard": "false", **extra})

    graphed = fit(cfg(**{"train.cuda_graph": "true"}), tmp_path / "graphed", progress=False)
    eager = fit(cfg(), tmp_path / "eager", progress=False)
    assert graphed["cuda_graph"] == "eager" and eager["cuda_graph"] == "off"
    assert graphed["train_error"] == eager["train_error"]

    calls = {"n": 0}
    real_step = GraphedStep.step

    def step_then_interrupt(self):
        real_step(self)
        calls["n"] += 1
        if calls["n"] == 5:
            import signal

            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(GraphedStep, "step", step_then_interrupt)
    first = fit(cfg(**{"train.cuda_graph": "true"}), tmp_path / "resumed", progress=False)
    assert first["status"] == "interrupted" and first["iteration"] == 5
    monkeypatch.undo()
    resumed = fit(cfg(**{"train.cuda_graph": "true"}), tmp_path / "resumed", progress=False)
    assert resumed["status"] == "finished" and resumed["train_error"] == graphed["train_error"]

    def weights(name):
        return load_checkpoint(tmp_path / name / "checkpoints" / "final.pt")["model"]

    for key, value in weights("graphed").items():
        assert torch.equal(value, weights("resumed")[key]), key
        assert torch.equal(value, weights("eager")[key]), key
