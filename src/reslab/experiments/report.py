"""``reslab report``: rebuild ``results/README.md`` from every finished run in the ledger.

uv run reslab report
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from reslab.errors import DataError
from reslab.experiments import paper
from reslab.experiments.ledger import collect, ledger_fix

# what a ledger row needs of a run's summary, and of which type
ROW_KEYS = {
    "experiment": str,
    "model": str,
    "schedule": str,
    "device": str,
    "precision": str,
    "test_error": (int, float),
    "train_error": (int, float),
    "wall_time_s": (int, float),
}


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return (
        f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (best {min(values):.2f})"
    )


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _checked(run: dict, results: Path) -> dict:
    """``run`` (a summary from :func:`collect`), or a :class:`DataError` naming its file when it
    lacks what a row shows."""
    for key, kind in ROW_KEYS.items():
        if not isinstance(run.get(key), kind) or isinstance(run.get(key), bool):
            path = results / run["_dir"] / "summary.json"
            raise DataError(
                f"{path} has {key}={run.get(key)!r}, not a {getattr(kind, '__name__', 'number')}: "
                f"it is damaged; {ledger_fix(path)}"
            )
    return run


def _bench_record(path: Path) -> dict:
    from reslab.engine.logging import read_json

    return read_json(path, f"restore it (git restore {path}) or delete it")


def _title(readme: Path) -> str:
    """The first line of an analysis's README (its folder's name when it has none)."""
    lines = readme.read_text(errors="replace").splitlines()
    return (lines[0].lstrip("# ").strip() if lines else "") or readme.parent.name


def _throughput_table(results: Path, benches: list[Path]) -> list[str]:
    """Training throughput rows of the `bench train` records: reslab's path against the baseline."""
    rows = []
    for path in benches:
        b = _bench_record(path)
        if b.get("kind") != "train":
            continue
        for r in b["results"]:
            graph = r.get("cuda_graph", "off")
            mode = r.get("compile", "off")
            how = (
                "whole-step CUDA graph"
                if graph == "whole step"
                else f"compile {mode}"
                if mode != "off"
                else "eager bf16, channels_last"
            )
            eager = r.get("eager_images_per_s")
            sched = r.get("paper_schedule_s")
            rows.append(
                f"| {r['model']} | {b['device']} | {how} | {r['images_per_s']:,.0f} | "
                f"{f'{eager:,.0f}' if eager else '-'} | {r['baseline_images_per_s']:,.0f} | "
                f"{r['speedup']:.2f}x | {_duration(sched) if sched else '-'} | "
                f"`{path.relative_to(results)}` |"
            )
    if not rows:
        return []
    return [
        "",
        "Training images/s, reslab's path against the typical-user baseline measured in the same",
        "process (eager fp32 NCHW, per-sample DataLoader transforms, `.item()` every step):",
        "",
        "| model | device | reslab path | images/s | same path eager | baseline | ratio | paper schedule | record |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def build(
    results: str | Path = "results", *, verify: bool = False, data_dir: str | None = None
) -> str:
    """Rebuild ``results/README.md``; for the checkout's own ledger also the weights index
    (:mod:`reslab.experiments.index`; ``verify`` re-evaluates the runs not checked yet)."""
    results = Path(results)
    weights = _weights_section(results, verify, data_dir)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in (_checked(r, results) for r in collect(results)):
        groups[
            (run["experiment"], run["model"], run["schedule"], run["device"], run["precision"])
        ].append(run)
    lines = [
        "# Results ledger",
        "",
        "Every row was measured by a run recorded in the folder it names (`summary.json` holds the exact",
        "command, code version, hardware and date; `model.safetensors` re-evaluates with `reslab eval`).",
        "Test errors are those of the final model on the CIFAR-10 test set, in percent. Rows whose schedule",
        "is not `paper` used reslab's reduced protocol and are not comparable to the paper's numbers.",
        "This file is rebuilt by `reslab report`.",
        "",
        "| experiment | model | schedule | paper test error | ours: test error (n) | train error | device | precision | wall time | runs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (experiment, model, schedule, device, precision), runs in sorted(groups.items()):
        quoted = paper.TABLE6.get(model.removesuffix("-A"))  # Table 6 uses shortcut option A
        test = [r["test_error"] for r in runs]
        train = [r["train_error"] for r in runs]
        wall = sum(r["wall_time_s"] for r in runs) / len(runs)
        dirs = ", ".join(f"`{r['_dir']}`" for r in runs)
        lines.append(
            f"| {experiment} | {model} | {schedule} | {quoted if quoted is not None else '-'} | "
            f"{_mean_std(test)} ({len(runs)}) | {_mean_std(train)} | {device} | {precision} | "
            f"{_duration(wall)} | {dirs} |"
        )
    if not groups:
        lines.append("| (no finished runs yet) | | | | | | | | | |")
    benches = sorted(results.glob("bench/*.json"))
    if benches:
        lines += [
            "",
            "## Benchmarks",
            "",
            "| record | device | date | command |",
            "|---|---|---|---|",
        ]
        for path in benches:
            b = _bench_record(path)
            lines.append(
                f"| `{path.relative_to(results)}` | {b.get('device', '')} | {b.get('date', '')} | `{b.get('command', '')}` |"
            )
        lines += _throughput_table(results, benches)
    analyses = sorted(p.parent for p in results.glob("analysis/*/README.md"))
    if analyses:
        lines += ["", "## Analyses", ""]
        for folder in analyses:
            lines.append(f"- `{folder.relative_to(results)}/`: {_title(folder / 'README.md')}")
    lines += weights
    pending = results / "PENDING.md"
    if pending.is_file():
        lines += ["", "Runs waiting for a GPU (and the CPU queue) are listed in `PENDING.md`."]
    text = "\n".join(lines) + "\n"
    results.mkdir(parents=True, exist_ok=True)
    (results / "README.md").write_text(text)
    return text


def _weights_section(results: Path, verify: bool, data_dir: str | None) -> list[str]:
    """The weights index, rebuilt when ``results`` is the checkout's ledger, as report lines."""
    from reslab.experiments.index import build_index
    from reslab.hub import CHECKOUT_RESULTS

    if results.resolve() != CHECKOUT_RESULTS.resolve():
        return []
    index = build_index(results, verify=verify, data_dir=data_dir)
    lines = [
        "",
        "## Weights by name (`reslab weights list`, `create_model(name, weights=...)`)",
        "",
        "Runs whose weights re-evaluate on the CPU to their summary's test error (`reeval.json`).",
        "",
        "| name | test error | re-evaluated | schedule | device | ledger |",
        "|---|---|---|---|---|---|",
    ]
    for name, e in index["entries"].items():
        lines.append(
            f"| `{name}` | {e['test_error']:.2f} | {e['reevaluated_test_error']:.2f} | "
            f"{e['schedule']} | {e['device']} | `{e['ledger']}` |"
        )
    lines += ["", *(f"- alias `{a}` = `{n}`" for a, n in index["aliases"].items())]
    lines += [f"- not in the index: `{d}`: {why}" for d, why in index["skipped"].items()]
    return lines
