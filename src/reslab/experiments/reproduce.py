"""``reslab reproduce NAME``: the paper's CIFAR-10 experiments as resumable runs, recorded in the ledger.

    uv run reslab reproduce fig6 --schedule 1/8 --only plain20 resnet20

Each run trains ``configs/cifar10/<model>.yaml`` (its checkpoints under ``runs/reproduce/``; running
the same command again resumes it) and, once finished, is recorded in ``results/<experiment>/<run>/``:
``summary.json`` (the engine's plus ``schedule``, ``seed``, ``command``, ``experiment``), the resolved
config, the metrics log and the final weights. ``--schedule 1/8`` scales the iterations and the lr
milestones together; such runs are named and labelled as reslab's reduced protocol, never the paper's.
"""

from __future__ import annotations

import json
import shlex
import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from reslab.config import Config, load_config

# Table 6 test errors (%) and the models of each experiment.
PAPER_TABLE6 = {
    "resnet20": 8.75,
    "resnet32": 7.51,
    "resnet44": 7.17,
    "resnet56": 6.97,
    "resnet110": 6.43,
    "resnet1202": 7.93,
}
EXPERIMENTS: dict[str, tuple[str, ...]] = {
    "table6": ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110"),
    "fig6": (
        "plain20",
        "plain32",
        "plain44",
        "plain56",
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
    ),
    "resnet1202": ("resnet1202",),
    "preact": ("preact_resnet110", "preact_resnet164"),
}
# Models of an experiment that are a config plus overrides: the shortcut options A/B/C (Sec. 3.3;
# the paper compares them on ImageNet, Table 3, and uses A on CIFAR) on ResNet-32 and -56.
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    f"resnet{depth}-{option}": (f"resnet{depth}", (f"model.options.shortcut={option}",))
    for depth in (32, 56)
    for option in "ABC"
}
EXPERIMENTS["options"] = tuple(VARIANTS)
LEDGER_FILES = ("summary.json", "config.yaml", "metrics.jsonl", "model.safetensors")


def parse_schedule(text: str) -> Fraction:
    """``"1"``, ``"1/8"`` or ``"0.125"`` as a fraction in (0, 1]."""
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"--schedule {text!r}: expected a fraction such as 1 or 1/8") from None
    if not 0 < value <= 1:
        raise ValueError(f"--schedule {text!r} must be in (0, 1]")
    return value


def schedule_tag(schedule: Fraction) -> str:
    return "" if schedule == 1 else f"-sched{schedule.numerator}of{schedule.denominator}"


@dataclass(frozen=True)
class Run:
    experiment: str
    model: str
    seed: int
    schedule: Fraction

    @property
    def name(self) -> str:
        return f"{self.model}-seed{self.seed}{schedule_tag(self.schedule)}"

    def config(self, data_dir: str | None, device: str | None, extra: list[str] = ()) -> Config:
        name, variant = VARIANTS.get(self.model, (self.model, ()))
        base = load_config(f"cifar10/{name}", variant)
        its = max(1, round(base.train.iterations * self.schedule))
        milestones = [max(1, round(m * self.schedule)) for m in base.optim.milestones]
        overrides = [
            f"train.iterations={its}",
            f"optim.milestones={milestones}",
            f"train.seed={self.seed}",
            f"name={self.experiment}/{self.name}",
            f"train.eval_every={max(1, min(base.train.eval_every, its // 16))}",
            f"train.checkpoint_every={max(1, min(base.train.checkpoint_every, its // 8))}",
            f"train.log_every={max(1, min(base.train.log_every, its // 64))}",
        ]
        if data_dir:
            overrides.append(f"data.data_dir={data_dir}")
        if device:
            overrides.append(f"train.device={device}")
        return load_config(f"cifar10/{name}", [*variant, *overrides, *extra])


def plan(experiment: str, schedule: Fraction, seeds: int, only: list[str] | None) -> list[Run]:
    if experiment not in EXPERIMENTS:
        raise ValueError(
            f"unknown experiment {experiment!r}; valid choices: {', '.join(EXPERIMENTS)}"
        )
    models = EXPERIMENTS[experiment]
    if only:
        unknown = [m for m in only if m not in models]
        if unknown:
            raise ValueError(
                f"{experiment} has no model {unknown[0]!r}; its models: {', '.join(models)}"
            )
        models = tuple(m for m in models if m in only)
    return [Run(experiment, m, s, schedule) for m in models for s in range(seeds)]


def record(run: Run, run_dir: Path, results: Path, command: str, **extra: Any) -> Path:
    """Copy a finished run into the ledger, with the protocol stated in its summary (``extra``
    keys, such as a note, are added to it). A run already recorded (the same finish date) is left
    as it is, so reusing it (``reproduce fig7`` over the fig6 nets) keeps the command that trained
    it."""
    summary = json.loads((run_dir / "summary.json").read_text())
    # a GPU run of the same protocol is a separate ledger entry beside the CPU one
    device_tag = "" if summary.get("device", "CPU").startswith("CPU") else "-gpu"
    target = results / run.experiment / f"{run.name}{device_tag}"
    if (target / "summary.json").is_file():
        recorded = json.loads((target / "summary.json").read_text())
        if recorded.get("date") == summary.get("date") and "date" in summary:
            return target  # this very run is already recorded, with the command that trained it
    summary.update(
        **extra,
        model=run.model,  # a variant's name (resnet32-B), the config's model otherwise
        experiment=run.experiment,
        seed=run.seed,
        command=command,
        schedule=str(run.schedule) if run.schedule != 1 else "paper",
        protocol="paper"
        if run.schedule == 1
        else f"reslab reduced schedule ({run.schedule} of the paper's iterations)",
    )
    target.mkdir(parents=True, exist_ok=True)
    for name in LEDGER_FILES[1:]:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, target / name)
    (target / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return target


def reproduce(
    experiment: str,
    schedule: Fraction = Fraction(1),
    seeds: int = 1,
    only: list[str] | None = None,
    *,
    data_dir: str | None = None,
    device: str | None = None,
    runs_dir: str | Path = "runs/reproduce",
    results_dir: str | Path = "results",
    argv: list[str] | None = None,
    progress: bool = True,
    overrides: list[str] = (),
) -> list[dict[str, Any]]:
    """Train (or resume) every run of ``experiment`` and record the finished ones in the ledger."""
    from reslab.engine.trainer import fit

    command = "reslab " + shlex.join(argv or ["reproduce", experiment])
    summaries = []
    for run in plan(experiment, schedule, seeds, only):
        run_dir = Path(runs_dir) / experiment / run.name
        summary = fit(run.config(data_dir, device, list(overrides)), run_dir, progress=progress)
        if summary["status"] != "finished":
            summaries.append(summary)
            break  # interrupted: stop here; the same command resumes
        record(run, run_dir, Path(results_dir), command)
        summaries.append(summary)
    return summaries
