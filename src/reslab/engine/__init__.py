"""Training engine: paper optimiser and schedules, train/evaluate functions, checkpoints, logs."""

from reslab.engine.optim import PaperSGD, StepSchedule
from reslab.engine.trainer import TrainState, evaluate, fit, train_one_epoch, train_step

__all__ = [
    "PaperSGD",
    "StepSchedule",
    "TrainState",
    "evaluate",
    "fit",
    "train_one_epoch",
    "train_step",
]
