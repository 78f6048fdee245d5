"""``reslab reproduce NAME``: the paper's CIFAR-10 experiments as resumable runs, recorded in the ledger.

    uv run reslab reproduce fig6 --schedule 1/8 --only plain20 resnet20
    uv run reslab reproduce cifar --dry-run    # the whole CIFAR-10 section: each run, what is left

Each run trains the config ``cifar10/<model>`` (its checkpoints under ``runs/reproduce/``; running
the same command again resumes it) and, once finished, is recorded in ``results/<experiment>/<run>/``:
``summary.json`` (the engine's plus ``schedule``, ``seed``, ``command``, ``experiment``), the resolved
config, the metrics log and the final weights. ``--schedule 1/8`` scales the iterations and the lr
milestones together; such runs are named and labelled as reslab's reduced protocol, never the paper's.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from reslab.config import Config, ConfigError, load_config
from reslab.experiments.ledger import record, recorded, schedule_tag

# the models of each experiment
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
# The ImageNet section on reslab's reduced protocol ``imagenette64`` (configs/base/imagenette64.yaml):
# Fig. 4 and Table 2 (plain-18/34 against ResNet-18/34, option A) and Table 3 (ResNet-34 with
# options A/B/C, ResNet-50); the pilot that fixed the protocol's schedule on a split of train/.
EXPERIMENTS.update(
    fig4=("plain18", "plain34", "resnet18", "resnet34"),
    table2=("plain18", "plain34", "resnet18", "resnet34"),
    table3=("plain34", "resnet34", "resnet34b", "resnet34c", "resnet50"),
    pilot64=("resnet18",),
)
# the config family of an experiment's models (``<family>/<model>``); CIFAR-10 otherwise
FAMILY = {name: "imagenette64" for name in ("fig4", "table2", "table3", "pilot64")}
# A run that several experiments name trains once, under its home experiment, where the ledger
# records it and every figure that names it reads it: Fig. 6's residual nets are Table 6's runs
# (the same config, seed and schedule), and option A of the options (the CIFAR default) is Table
# 6's ResNet-32 and ResNet-56. (experiment, model) -> (home experiment, model there).
HOME: dict[tuple[str, str], tuple[str, str]] = {
    **{("fig6", f"resnet{depth}"): ("table6", f"resnet{depth}") for depth in (20, 32, 44, 56)},
    **{("options", f"resnet{depth}-A"): ("table6", f"resnet{depth}") for depth in (32, 56)},
    # Table 2 is Fig. 4's four nets tested with 10 crops; Table 3's plain-34 and ResNet-34 A too
    **{("table2", model): ("fig4", model) for model in EXPERIMENTS["fig4"]},
    **{("table3", model): ("fig4", model) for model in ("plain34", "resnet34")},
}


# The paper's whole CIFAR-10 section but ResNet-1202 (which no device loan fits), every run once:
# ``reslab reproduce cifar``. ResNet-110 trains over 5 seeds there, as the paper reports it.
SECTIONS: dict[str, tuple[str, ...]] = {
    "cifar": ("table6", "fig6", "options"),
    "imagenette64": ("fig4", "table2", "table3"),
}
PAPER_SEEDS: dict[str, int] = {"resnet110": 5}


def borrowed(experiment: str) -> dict[str, tuple[str, str]]:
    """The runs ``experiment`` reads from their home: model -> (home experiment, model there)."""
    return {model: home for (name, model), home in HOME.items() if name == experiment}


def parse_schedule(text: str) -> Fraction:
    """``"1"``, ``"1/8"`` or ``"0.125"`` as a fraction in (0, 1]."""
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"--schedule {text!r}: expected a fraction such as 1 or 1/8") from None
    if not 0 < value <= 1:
        raise ConfigError(f"--schedule {text!r} must be in (0, 1]")
    return value


@dataclass(frozen=True)
class Run:
    experiment: str
    model: str
    seed: int
    schedule: Fraction

    @property
    def name(self) -> str:
        return f"{self.model}-seed{self.seed}{schedule_tag(self.schedule)}"

    @property
    def family(self) -> str:
        """The config family: ``cifar10`` (the paper's protocol) or ``imagenette64`` (reslab's)."""
        return FAMILY.get(self.experiment, "cifar10")

    @property
    def protocol(self) -> str:
        """The protocol in words, as the ledger states it."""
        if self.family == "imagenette64":
            scaled = f", {self.schedule} of its iterations" if self.schedule != 1 else ""
            return f"reslab reduced ImageNet protocol imagenette64 (configs/base/imagenette64.yaml{scaled})"
        if self.schedule == 1:
            return "paper"
        return f"reslab reduced schedule ({self.schedule} of the paper's iterations)"

    def config(self, data_dir: str | None, device: str | None, extra: list[str] = ()) -> Config:
        name, variant = VARIANTS.get(self.model, (self.model, ()))
        name = f"{self.family}/{name}"
        base = load_config(name, variant)
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
        return load_config(name, [*variant, *overrides, *extra])


def plan(experiment: str, schedule: Fraction, seeds: int, only: list[str] | None) -> list[Run]:
    """The runs of ``experiment`` (``seeds`` per model; in a section such as ``cifar``, at least
    the paper's count), each once: a run that another experiment owns (:data:`HOME`) is planned
    under its home."""
    parts = SECTIONS.get(experiment, (experiment,))
    if any(part not in EXPERIMENTS for part in parts):
        choices = ", ".join([*EXPERIMENTS, *SECTIONS])
        raise ConfigError(f"unknown experiment {experiment!r}; valid choices: {choices}")
    models = [(part, m) for part in parts for m in EXPERIMENTS[part]]
    if only:
        names = list(dict.fromkeys(m for _, m in models))
        unknown = [m for m in only if m not in names]
        if unknown:
            raise ConfigError(
                f"{experiment} has no model {unknown[0]!r}; its models: {', '.join(names)}"
            )
        models = [(part, m) for part, m in models if m in only]
    runs = {}
    for part, model in models:
        home, name = HOME.get((part, model), (part, model))
        n = max(seeds, PAPER_SEEDS.get(model, 1)) if experiment in SECTIONS else seeds
        for seed in range(n):
            run = Run(home, name, seed, schedule)
            runs.setdefault((run.experiment, run.name), run)
    return list(runs.values())


# Packed runs (reslab.engine.packed). On the 2-core CPU two processes of one thread each train
# 1.10-1.23x the images/s of one two-thread process, stacking them into one grouped net 0.84-1.04x
# (ResNet-20/56; records results/bench/2026-11-25-cpu-train-concurrent*.json), so "auto" packs
# two runs there, as processes. On CUDA the candidates have not been measured yet, so "auto"
# trains one run at a time there.
AUTO_CONCURRENT = {"cpu": 2, "cuda": 1}


def concurrency(concurrent: int | str, device: str | None, runs: int, seeds: int = 1) -> int:
    """How many runs train at once: ``concurrent`` (a number, or "auto": the measured choice for
    the device, and never more than the ``seeds`` of one model, so that only runs of one length
    share the device: a packed run keeps its share of the threads after its partner ends), never
    more than there are runs."""
    if str(concurrent) == "auto":
        from reslab.engine.runtime import resolve_device

        return min(runs, seeds, AUTO_CONCURRENT[resolve_device(device or "auto").type])
    try:
        n = int(concurrent)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"--concurrent {concurrent!r}: expected a number >= 1 or auto")
    return min(runs, n)


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
    restart: bool = False,
    concurrent: int | str = 1,
    pack: str = "auto",
    skip_recorded: bool = False,
) -> list[dict[str, Any]]:
    """Train (or resume) every run of ``experiment`` and record the finished ones in the ledger;
    with ``skip_recorded``, the runs the ledger holds already are left out (the queue's way).

    Each run follows the engine's resume rules: a run directory holding another config is refused
    (naming the keys), unless ``restart`` starts it over. With ``concurrent`` > 1 (or "auto") the
    runs train packed, that many at once (:mod:`reslab.engine.packed`), the way ``pack`` names
    ("auto": processes on a CPU, CUDA streams on a GPU)."""
    from reslab.engine.packed import fit_packed
    from reslab.engine.trainer import fit

    command = "reslab " + shlex.join(argv or ["reproduce", experiment])
    runs = plan(experiment, schedule, seeds, only)
    if skip_recorded:
        runs = [run for run in runs if recorded(run, results_dir) is None]
    if not runs:
        return []
    jobs = [
        (run.config(data_dir, device, list(overrides)), Path(runs_dir) / run.experiment / run.name)
        for run in runs
    ]
    n = concurrency(concurrent, device, len(runs), seeds)
    if n > 1:
        from reslab.engine.runtime import resolve_device

        if pack == "auto":
            cuda = resolve_device(jobs[0][0].train.device).type == "cuda"
            pack = "streams" if cuda else "processes"
        summaries = fit_packed(jobs, n, mode=pack, restart=restart, progress=progress)
    else:
        summaries = []
        for cfg, run_dir in jobs:
            summaries.append(fit(cfg, run_dir, restart=restart, progress=progress))
            if summaries[-1]["status"] != "finished":
                break  # interrupted: stop here; the same command resumes
    for run, (_, run_dir), summary in zip(runs, jobs, summaries, strict=False):
        if summary["status"] == "finished":
            record(run, run_dir, Path(results_dir), command)
    return summaries


def queue_status(
    experiment: str,
    schedule: Fraction = Fraction(1),
    seeds: int = 1,
    only: list[str] | None = None,
    *,
    runs_dir: str | Path = "runs/reproduce",
    results_dir: str | Path = "results",
    throughput: str | Path | None = None,
) -> list[dict[str, Any]]:
    """``reslab reproduce ... --dry-run``: each run of the command, where it stands (in the ledger
    on a CPU and/or a GPU, its checkpoint's iteration under ``runs_dir``) and, given a
    ``throughput`` record of ``reslab bench train`` (its images/s per model; a model it lacks is
    scaled from the measured one nearest in multiply-adds), the time its remaining iterations
    project to on that record's device. Nothing trains."""
    from reslab.engine.checkpoint import latest_checkpoint

    speeds = _measured_speeds(throughput) if throughput else {}
    experiment = "fig6" if experiment == "fig7" else experiment  # fig7 measures the fig6 nets
    rows = []
    for run in plan(experiment, schedule, seeds, only):
        cfg = run.config(None, None)
        entry = Path(results_dir) / run.experiment / run.name
        ledger = [tag for tag, suffix in (("CPU", ""), ("GPU", "-gpu")) if (entry.parent / f"{entry.name}{suffix}" / "summary.json").is_file()]  # fmt: skip
        found = latest_checkpoint(Path(runs_dir) / run.experiment / run.name / "checkpoints")
        done = found[0]["state"]["iteration"] if found else 0
        row = {"run": f"{run.experiment}/{run.name}", "iterations": cfg.train.iterations,
               "checkpoint": done, "ledger": "+".join(ledger) or "-"}  # fmt: skip
        if speeds:
            images_per_s, how = scaled_speed(cfg.model.name, cfg.model.options, speeds)
            remaining = cfg.train.iterations - done
            row.update(images_per_s=round(images_per_s), speed=how,
                       projected_s=remaining * cfg.train.batch_size / images_per_s)  # fmt: skip
        rows.append(row)
    return rows


def format_status(rows: list[dict[str, Any]], throughput: str | Path | None = None) -> str:
    """:func:`queue_status` as a table, with the projected total when there is one."""
    lines = [f"{'run':<34} {'iterations':>10} {'checkpoint':>10} {'ledger':>7}"
             + ("  images/s  projected  (speed)" if throughput else "")]  # fmt: skip
    for r in rows:
        line = f"{r['run']:<34} {r['iterations']:>10} {r['checkpoint']:>10} {r['ledger']:>7}"
        if "projected_s" in r:
            line += f"  {r['images_per_s']:>8} {r['projected_s'] / 60:>8.1f} min  ({r['speed']})"
        lines.append(line)
    if throughput:
        total = sum(r["projected_s"] for r in rows if r["ledger"] == "-") / 60
        lines.append(f"runs not in the ledger: {total:.1f} min one after another at the speeds of "
                     f"{throughput}")  # fmt: skip
    return "\n".join(lines)


def _measured_speeds(path: str | Path) -> dict[str, float]:
    """Training images/s per model of a ``reslab bench train`` record; of a packed-runs record
    (``--concurrent``), the best aggregate: each run then takes its share of the device's time,
    so the sum over runs projects the queue trained packed (with runs enough to fill the packs)."""
    import json

    try:
        record = json.loads(Path(path).read_text())
        speeds: dict[str, float] = {}
        for r in record["results"]:
            speed = float(r["aggregate_images_per_s"] if "concurrent" in r else r["images_per_s"])
            speeds[r["model"]] = max(speed, speeds.get(r["model"], 0.0))
        return speeds
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"--throughput {path}: not a `reslab bench train` record ({err}); give one of "
            "results/bench/*-train*.json"
        ) from None


def scaled_speed(
    model: str, options: dict[str, Any], speeds: dict[str, float], size: int | None = None
) -> tuple[float, str]:
    """(images/s, "measured" or "scaled from <model>") of ``model`` (at input ``size``, default
    its own) from measured ``speeds`` (model -> images/s at its default size): a model measured
    as it is keeps its speed, any other takes the nearest one's scaled by multiply-adds."""
    if model in speeds and not options and size is None:
        return speeds[model], "measured"
    macs = _macs(model, tuple(sorted(options.items())), size)
    nearest = min(speeds, key=lambda m: abs(_macs(m, (), None) - macs))
    return speeds[nearest] * _macs(nearest, (), None) / macs, f"scaled from {nearest}"


_MACS: dict[tuple, int] = {}


def _macs(model: str, options: tuple, size: int | None) -> int:
    if (model, options, size) not in _MACS:
        from reslab.models import create_model
        from reslab.models.complexity import complexity

        net = create_model(model, **dict(options))
        shape = (net.default_input_size[0], size, size) if size else None
        _MACS[model, options, size] = complexity(net, shape).macs
    return _MACS[model, options, size]
