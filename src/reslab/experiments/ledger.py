"""The results ledger: ``results/<experiment>/<run>/`` folders, written and read in one place.

    uv run reslab report      # rebuilds results/README.md from every finished run here

A ledger run folder holds ``summary.json`` (the engine's summary plus the experiment, model, seed,
schedule, protocol and the command that trained it), the resolved ``config.yaml``, the
``metrics.jsonl`` log and the final ``model.safetensors``.
"""

from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Any

from reslab.errors import MissingFileError

LEDGER_FILES = ("summary.json", "config.yaml", "metrics.jsonl", "model.safetensors")


def schedule_tag(schedule: Fraction) -> str:
    """The suffix of a run's name for a reduced schedule (``-sched1of8``); none for the paper's."""
    return "" if schedule == 1 else f"-sched{schedule.numerator}of{schedule.denominator}"


def schedule_label(schedule: Fraction, family: str = "cifar10") -> str:
    """What a ledger summary's ``schedule`` says: ``paper`` (CIFAR-10 at the paper's iterations),
    ``1/8`` (a fraction of them), ``imagenette64`` (reslab's reduced ImageNet protocol) or
    ``imagenette64 x 1/8``."""
    if family == "cifar10":
        return "paper" if schedule == 1 else str(schedule)
    return family if schedule == 1 else f"{family} x {schedule}"


def recorded(run: Any, results: str | Path) -> Path | None:
    """The ledger folder of ``run`` (its CPU entry, else its GPU one), None when not recorded."""
    entry = Path(results) / run.experiment / run.name
    for folder in (entry, entry.parent / f"{entry.name}-gpu"):
        if (folder / "summary.json").is_file():
            return folder
    return None


def record(run: Any, run_dir: Path, results: Path, command: str, **extra: Any) -> Path:
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
        schedule=schedule_label(run.schedule, run.family),
        protocol=run.protocol,
    )
    target.mkdir(parents=True, exist_ok=True)
    for name in LEDGER_FILES[1:]:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, target / name)
    (target / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return target


def ledger_fix(path: Path) -> str:
    """What to do about a damaged file of the ledger folder holding ``path``."""
    return f"restore it (git restore {path}) or delete its run folder {path.parent}"


def read_summary(path: Path) -> dict[str, Any]:
    """The ``summary.json`` at ``path`` of a ledger run; a damaged one is one line naming it."""
    from reslab.engine.logging import read_json  # here: importing reslab.engine imports torch

    return read_json(path, ledger_fix(path))


def collect(results: str | Path) -> list[dict[str, Any]]:
    """Every finished run recorded in the ledger (its summary, with ``_dir`` relative to it)."""
    results = Path(results)
    runs = []
    for path in sorted(results.glob("*/*/summary.json")):
        summary = read_summary(path)
        if summary.get("status") == "finished" and "experiment" in summary:
            summary["_dir"] = str(path.parent.relative_to(results))
            runs.append(summary)
    return runs


def finished_runs(
    results: str | Path,
    schedule: Fraction,
    *experiments: str,
    borrowed: dict[str, tuple[str, str]] | None = None,
    family: str = "cifar10",
) -> dict[str, dict[str, Any]]:
    """model -> summary (``_dir`` its folder) of the finished seed-0 runs of ``schedule`` in the
    first experiment, completed by the later ones (the first found of a model wins) and by the
    ``borrowed`` runs kept under another experiment (model -> (experiment, its model there)); a
    clear error naming the command to run when there are none."""
    runs: dict[str, dict[str, Any]] = {}
    for experiment in experiments:
        for model, summary in _seed0_runs(results, schedule, experiment, family).items():
            runs.setdefault(model, summary)
    for model, (home, name) in (borrowed or {}).items():
        found = _seed0_runs(results, schedule, home, family).get(name)
        if found is not None and model not in runs:
            runs[model] = found
    if not runs:
        raise MissingFileError(
            f"no finished {'/'.join(experiments)} runs of schedule {schedule} under {results}; "
            f"run `reslab reproduce {experiments[0]} --schedule {schedule}` first"
        )
    return runs


def _seed0_runs(
    results: str | Path, schedule: Fraction, experiment: str, family: str = "cifar10"
) -> dict[str, Any]:
    """model -> summary of the finished seed-0 runs of ``schedule`` in ``results/experiment``
    (a CPU run before a GPU run of the same model)."""
    wanted = schedule_label(schedule, family)
    runs: dict[str, dict[str, Any]] = {}
    for path in sorted((Path(results) / experiment).glob("*/summary.json")):
        summary = read_summary(path)
        if summary.get("status") != "finished" or summary.get("schedule") != wanted:
            continue
        if summary.get("seed", 0) == 0 and summary["model"] not in runs:
            runs[summary["model"]] = {**summary, "_dir": path.parent}
    return runs
