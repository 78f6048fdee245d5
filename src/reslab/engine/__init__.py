"""Training engine: paper optimiser and schedules, the training step and loop, evaluation,
checkpoints, weights files, logs."""

from reslab.engine.evaluate import evaluate
from reslab.engine.loop import TrainState
from reslab.engine.optim import PaperSGD, StepSchedule
from reslab.engine.step import train_step
from reslab.engine.steps import EagerStep
from reslab.engine.trainer import fit

__all__ = [
    "EagerStep",
    "PaperSGD",
    "StepSchedule",
    "TrainState",
    "evaluate",
    "fit",
    "train_step",
]
