"""Fig. 6 and Fig. 7 of the paper from the runs in the ledger, with a Markdown report beside each.

    uv run reslab reproduce fig6 --schedule 1/8 --only plain20 plain56 resnet20 resnet56
    uv run reslab reproduce fig7 --schedule 1/8     # layer responses of those trained nets

``fig6`` draws training error (thin dashed) and test error (bold) against iterations, plain nets in
one panel and ResNets in the other, from each run's ``metrics.jsonl``. ``fig7`` measures the std of
every 3x3 layer's output after BN (before ReLU/addition) on the CIFAR-10 test set for the trained
nets of the same schedule, in layer order and sorted. Each writes ``<name>.png``, ``<name>.json``
(the plotted numbers) and ``<name>.md`` (the paper's statement beside ours, and the checks) into
``results/<experiment>/``. Runs of a reduced schedule say so in every title, file name and row.
"""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

from reslab.engine.logging import read_jsonl
from reslab.errors import MissingFileError
from reslab.experiments import paper
from reslab.experiments.ledger import collect, finished_runs, schedule_tag
from reslab.experiments.reproduce import borrowed


def _schedule_text(schedule: Fraction) -> str:
    if schedule == 1:
        return "paper schedule (64k iterations)"
    return f"reslab reduced schedule: {schedule} of the paper's iterations"


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    train, test = [], []
    for row in read_jsonl(run_dir / "metrics.jsonl"):
        if "train_error" in row and "event" not in row:
            train.append((row["iteration"], row["train_error"]))
        if "test_error" in row and "test_views" not in row:
            test.append((row["iteration"], row["test_error"]))
    return {"train": train, "test": test}


def _depth(model: str) -> int:
    return int("".join(c for c in model if c.isdigit()))


def _color(depth: int) -> str:
    """The same colour for a depth in every figure."""
    return {20: "C0", 32: "C1", 44: "C2", 56: "C3", 110: "C4", 1202: "C5"}.get(depth, "C7")


def _write(fig: Any, out: Path, stem: str, data: dict[str, Any], report: str, command: str) -> Path:
    """``stem``.png (the figure), .json (its numbers) and .md (the report) in ``out``, the latter
    two stating the command, code version and date that made them."""
    import datetime

    import matplotlib.pyplot as plt

    from reslab.engine.runtime import code_version

    made = {
        "command": command or "(called from Python)",
        "code_version": code_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    data = {**data, **made}
    report += f"\nMade by `{made['command']}` (code {made['code_version']}, {made['date']}).\n"
    out.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=120)
    plt.close(fig)
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / f"{stem}.md").write_text(report)
    return out / f"{stem}.png"


def fig6(results: str | Path, schedule: Fraction = Fraction(1), command: str = "") -> Path:
    """Plot and report Fig. 6 from ``results/fig6``; returns the PNG's path."""
    plt = _pyplot()

    results = Path(results)
    runs = finished_runs(results, schedule, "fig6", borrowed=borrowed("fig6"))  # + Table 6's
    stem = f"fig6{schedule_tag(schedule)}"
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    data: dict[str, Any] = {"schedule": str(schedule), "runs": {}}
    for model, summary in sorted(runs.items(), key=lambda kv: _depth(kv[0])):
        curves = _curves(summary["_dir"])
        data["runs"][model] = {
            **curves,
            "final_train_error": summary["train_error"],
            "final_test_error": summary["test_error"],
            "dir": str(summary["_dir"].relative_to(results)),
            "device": summary["device"],
        }
        ax = axes[0 if model.startswith("plain") else 1]
        color = _color(_depth(model))
        if curves["train"]:
            its, err = zip(*curves["train"], strict=True)
            ax.plot(its, err, "--", lw=0.8, color=color)
        if curves["test"]:
            its, err = zip(*curves["test"], strict=True)
            label = f"{model.replace('plain', 'plain-').replace('resnet', 'ResNet-')}"
            ax.plot(its, err, "-", lw=2.2, color=color, label=label)
    # the paper's axes end at 20%; a net that ends above that (plain-56 at a short schedule)
    # widens them so its curves stay visible
    worst = max(r["final_test_error"] for r in data["runs"].values())
    top = 20 if worst < 18 else 10 * math.ceil((worst + 8) / 10)
    for ax, title in zip(axes, ("plain networks", "residual networks"), strict=True):
        ax.set_title(f"{title}\n{_schedule_text(schedule)}", fontsize=10)
        ax.set_xlabel("iterations")
        ax.set_ylim(0, top)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    axes[0].set_ylabel("error (%)")
    fig.suptitle("CIFAR-10 training (dashed) and test (bold) error, as in the paper's Fig. 6")
    return _write(fig, results / "fig6", stem, data, _fig6_report(data, schedule, stem), command)


def _head(title: str, stem: str, intro: str) -> list[str]:
    """A report's title, its figure, and the paragraph that says what the table holds."""
    return [f"# {title}", "", f"![ours]({stem}.png)", "", *([intro, ""] if intro else [])]


def _fig6_report(data: dict[str, Any], schedule: Fraction, stem: str) -> str:
    runs = data["runs"]
    lines = [
        *_head(
            f"Fig. 6: training and test error of plain and residual nets ({_schedule_text(schedule)})",
            stem,
            "Final model of each run (not the best point on the test set), CIFAR-10 test set, "
            "percent. The residual nets are Table 6's runs (the same protocol, trained once and "
            "recorded under `table6/`; earlier reduced runs under `fig6/` still count).",
        ),
        "| model | ours: train error | ours: test error | paper: test error | device | run |",
        "|---|---|---|---|---|---|",
    ]
    for model, r in sorted(runs.items(), key=lambda kv: (kv[0][0], _depth(kv[0]))):
        quoted = paper.TABLE6.get(model, paper.FIG6.get(model, "-"))
        lines.append(
            f"| {model} | {r['final_train_error']:.2f} | {r['final_test_error']:.2f} | {quoted} | "
            f"{r['device']} | `{r['dir']}` |"
        )
    lines += ["", "## The paper's claims, checked on these runs", ""]
    checks = []

    def err(model: str, kind: str) -> float | None:
        return runs[model][f"final_{kind}_error"] if model in runs else None

    pairs = (
        ("plain56", "plain20", ">", "degradation: the deeper plain net has higher error"),
        ("resnet56", "plain56", "<", "residual learning removes it: ResNet-56 below plain-56"),
        (
            "resnet56",
            "resnet20",
            "<",
            "deeper ResNets are better (the paper's full-schedule claim)",
        ),
    )
    for a, b, op, claim in pairs:
        for kind in ("train", "test"):
            x, y = err(a, kind), err(b, kind)
            if x is None or y is None:
                continue
            holds = x > y if op == ">" else x < y
            checks.append(
                f"- {claim}, {kind} error: {a} {x:.2f} {op} {b} {y:.2f}: "
                f"{'holds' if holds else 'does NOT hold'}"
            )
    lines += checks or ["- (needs plain20, plain56, resnet20 and resnet56 runs)"]
    if schedule != 1:
        lines += [
            "",
            f"These runs used reslab's reduced protocol ({schedule} of the paper's 64k iterations, lr "
            "drops scaled with it); short schedules favour shallow nets, so the last check is "
            "reported as measured.",
        ]
    return "\n".join(lines) + "\n"


def fig7(
    results: str | Path,
    schedule: Fraction = Fraction(1),
    data_dir: str | None = None,
    limit: int = 0,
    command: str = "",
) -> Path:
    """Layer responses (Fig. 7) of the trained fig6/table6 nets of ``schedule``; returns the PNG."""
    plt = _pyplot()

    from reslab.analysis.common import cifar_test_batches, normalizer_for
    from reslab.analysis.responses import layer_responses
    from reslab.models.factory import load_model

    results = Path(results)
    runs = finished_runs(results, schedule, "fig6", "table6")  # e.g. ResNet-110 from Table 6
    stem = f"fig7{schedule_tag(schedule)}"
    data: dict[str, Any] = {"schedule": str(schedule), "limit": limit, "runs": {}}
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7))
    for model, summary in sorted(runs.items(), key=lambda kv: (_depth(kv[0]), kv[0])):
        weights = summary["_dir"] / "model.safetensors"
        net = load_model(model, str(weights), 0)
        batches = cifar_test_batches(data_dir, limit, normalizer_for(str(weights), data_dir))
        std = layer_responses(net, batches)
        data["runs"][model] = {
            "std": std,
            "mean_std": sum(std) / len(std),
            "dir": str(summary["_dir"].relative_to(results)),
        }
        # one colour per depth, dashed plain and solid residual: the pairs compare at a glance
        style = {"ls": "--" if model.startswith("plain") else "-", "color": _color(_depth(model))}
        label = model.replace("plain", "plain-").replace("resnet", "ResNet-")
        ax1.plot(range(1, len(std) + 1), std, label=label, **style)
        ax2.plot(range(1, len(std) + 1), sorted(std, reverse=True), label=label, **style)
    ax1.set_xlabel("layer index (original)")
    ax2.set_xlabel("layer index (sorted by magnitude)")
    for ax in (ax1, ax2):
        ax.set_ylabel("std")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"Layer responses on the CIFAR-10 test set, as in the paper's Fig. 7\n"
        f"{_schedule_text(schedule)}",
        fontsize=10,
    )
    return _write(fig, results / "fig7", stem, data, _fig7_report(data, schedule, stem), command)


def _fig7_report(data: dict[str, Any], schedule: Fraction, stem: str) -> str:
    runs = data["runs"]
    images = data["limit"] or 10000
    lines = [
        *_head(
            f"Fig. 7: layer responses ({_schedule_text(schedule)})",
            stem,
            "Std of each 3x3 layer's output after BN, before ReLU/addition, over "
            f"{images} CIFAR-10 test images. The paper: residual responses are generally smaller "
            "than plain ones, and deeper ResNets have smaller responses.",
        ),
        "| model | layers | mean std | max std | run |",
        "|---|---|---|---|---|",
    ]
    for model, r in sorted(runs.items(), key=lambda kv: (_depth(kv[0]), kv[0])):
        lines.append(
            f"| {model} | {len(r['std'])} | {r['mean_std']:.3f} | {max(r['std']):.3f} | `{r['dir']}` |"
        )
    lines += ["", "## Checks", ""]
    for depth in sorted({_depth(m) for m in runs}):
        plain, res = runs.get(f"plain{depth}"), runs.get(f"resnet{depth}")
        if plain and res:
            holds = res["mean_std"] < plain["mean_std"]
            below = sum(r < q for r, q in zip(res["std"], plain["std"], strict=True))
            lines.append(
                f"- depth {depth}: ResNet mean std {res['mean_std']:.3f} vs plain "
                f"{plain['mean_std']:.3f}: residual responses smaller: "
                f"{'holds' if holds else 'does NOT hold'} (smaller in {below} of "
                f"{len(res['std'])} layers, layer by layer)"
            )
    resnets = sorted((_depth(m), r["mean_std"]) for m, r in runs.items() if m.startswith("resnet"))
    for (d1, s1), (d2, s2) in itertools.pairwise(resnets):
        lines.append(
            f"- ResNet-{d2} mean std {s2:.3f} vs ResNet-{d1} {s1:.3f}: deeper is smaller: "
            f"{'holds' if s2 < s1 else 'does NOT hold'}"
        )
    return "\n".join(lines) + "\n"


def options(results: str | Path, schedule: Fraction = Fraction(1), command: str = "") -> Path:
    """Shortcut options A/B/C on ResNet-32/56 from ``results/options``: a grouped bar chart of the
    final test errors and a report beside the paper's ImageNet comparison (Table 3)."""
    plt = _pyplot()

    from reslab.models import create_model
    from reslab.models.complexity import count_params

    results = Path(results)
    runs = finished_runs(results, schedule, "options", borrowed=borrowed("options"))
    stem = f"options{schedule_tag(schedule)}"
    data: dict[str, Any] = {"schedule": str(schedule), "runs": {}}
    for model, summary in sorted(runs.items()):
        base, option = model.split("-")
        net = create_model(base, shortcut=option)
        data["runs"][model] = {
            "depth": _depth(base),
            "option": option,
            "params": count_params(net),
            "final_train_error": summary["train_error"],
            "final_test_error": summary["test_error"],
            "dir": str(summary["_dir"].relative_to(results)),
            "device": summary["device"],
        }
    depths = sorted({r["depth"] for r in data["runs"].values()})
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, option in enumerate("ABC"):
        xs, ys = [], []
        for j, depth in enumerate(depths):
            r = data["runs"].get(f"resnet{depth}-{option}")
            if r:
                xs.append(j + (i - 1) * 0.27)
                ys.append(r["final_test_error"])
        bars = ax.bar(xs, ys, width=0.25, label=f"option {option}")
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(range(len(depths)), [f"ResNet-{d}" for d in depths])
    ax.set_ylabel("CIFAR-10 test error (%)")
    ax.set_title(f"Shortcut options A/B/C (Sec. 3.3)\n{_schedule_text(schedule)}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _write(
        fig, results / "options", stem, data, _options_report(data, schedule, stem), command
    )


def _options_report(data: dict[str, Any], schedule: Fraction, stem: str) -> str:
    runs = data["runs"]
    lines = [
        *_head(f"Shortcut options A/B/C on CIFAR-10 ({_schedule_text(schedule)})", stem, ""),
        "A: identity shortcuts, zero-padded where the width grows (no parameters); B: 1x1 "
        "projections where the dimensions change, identity elsewhere; C: projections on every "
        "shortcut. Final model of each run, CIFAR-10 test set, percent. The paper compares the "
        "options on ImageNet only (Table 3, ResNet-34 top-1: A 25.03, B 24.52, C 24.19) and "
        "concludes that the small differences make projections unnecessary for the degradation "
        "problem; on CIFAR it uses A, so option A's runs are Table 6's (trained once, recorded "
        "under `table6/`).",
        "",
        "| model | option | parameters | ours: train error | ours: test error | device | run |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(runs.values(), key=lambda r: (r["depth"], r["option"])):
        lines.append(
            f"| resnet{r['depth']} | {r['option']} | {r['params']:,} | "
            f"{r['final_train_error']:.2f} | {r['final_test_error']:.2f} | {r['device']} | "
            f"`{r['dir']}` |"
        )
    lines += ["", "## Measured", ""]
    spread_paper = max(paper.TABLE3.values()) - min(paper.TABLE3.values())
    for depth in sorted({r["depth"] for r in runs.values()}):
        errs = {r["option"]: r["final_test_error"] for r in runs.values() if r["depth"] == depth}
        if len(errs) < 2:
            continue
        order = " < ".join(f"{o} {e:.2f}" for o, e in sorted(errs.items(), key=lambda kv: kv[1]))
        spread = max(errs.values()) - min(errs.values())
        lines.append(
            f"- ResNet-{depth}: test error {order}; spread {spread:.2f} points over "
            f"{len(errs)} options (the paper's ImageNet spread: {spread_paper:.2f})"
        )
    lines.append("- seed 0 only: differences of a few tenths are within seed-to-seed noise")
    return "\n".join(lines) + "\n"


def _stats(values: list[float]) -> dict[str, Any]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"n": n, "mean": mean, "std": std, "best": min(values), "values": values}


def _mean_text(s: dict[str, Any]) -> str:
    return f"{s['mean']:.2f}" if s["n"] == 1 else f"{s['mean']:.2f} ± {s['std']:.2f}"


def table6(results: str | Path, schedule: Fraction = Fraction(1), command: str = "") -> Path:
    """Table 6 from the ledger: CIFAR-10 test error of the final models against depth, ours as
    mean ± std over seeds (CPU and GPU runs apart) beside the paper's, with ResNet-1202 and the
    pre-activation nets as they arrive. Writes ``results/table6/table6[-schedK].{png,json,md}``."""
    plt = _pyplot()

    results = Path(results)
    wanted = "paper" if schedule == 1 else str(schedule)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in collect(results):
        if run["experiment"] in ("table6", "resnet1202", "preact") and run["schedule"] == wanted:
            kind = "CPU" if run["device"].startswith("CPU") else "GPU"
            groups.setdefault((run["model"], kind), []).append(run)
    if not groups:
        raise MissingFileError(
            f"no finished table6 runs of schedule {schedule} under {results}; run "
            f"`reslab reproduce table6 --schedule {schedule}` first"
        )
    data: dict[str, Any] = {"schedule": str(schedule), "rows": []}
    for (model, kind), runs in sorted(groups.items(), key=lambda kv: (_depth(kv[0][0]), kv[0])):
        data["rows"].append({
            "model": model, "device": kind, **_stats([r["test_error"] for r in runs]),
            "train": _stats([r["train_error"] for r in runs]),
            "paper": {**paper.TABLE6, "preact_resnet1001": paper.PREACT_RESNET1001}.get(model),
            "dirs": sorted(r["_dir"] for r in runs),
        })  # fmt: skip
    fig, ax = plt.subplots(figsize=(7, 4.5))
    depths = sorted({_depth(m) for m in paper.TABLE6})
    ax.plot(depths, [paper.TABLE6[f"resnet{d}"] for d in depths], "k--o", ms=4, label="paper (Table 6)")  # fmt: skip
    for kind, marker in (("CPU", "s"), ("GPU", "^")):
        rows = [r for r in data["rows"] if r["device"] == kind and r["model"].startswith("resnet")]
        if rows:
            ax.errorbar(
                [_depth(r["model"]) for r in rows], [r["mean"] for r in rows],
                [r["std"] or 0 for r in rows], fmt=marker, capsize=3, label=f"ours ({kind}, mean ± std)",
            )  # fmt: skip
    ax.set_xscale("log")
    ax.set_xticks(depths, [str(d) for d in depths])
    ax.set_xlabel("depth (layers)")
    ax.set_ylabel("CIFAR-10 test error (%)")
    ax.set_title(f"Table 6: ResNets on CIFAR-10\n{_schedule_text(schedule)}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    stem = f"table6{schedule_tag(schedule)}"
    return _write(
        fig, results / "table6", stem, data, _table6_report(data, schedule, stem), command
    )


def _table6_report(data: dict[str, Any], schedule: Fraction, stem: str) -> str:
    lines = [
        *_head(
            f"Table 6: CIFAR-10 test error of the ResNets ({_schedule_text(schedule)})",
            stem,
            "Final model of each run (never the best point on the test set), CIFAR-10 test set, "
            "percent; mean ± std (sample std) over the seeds where n > 1. CPU and GPU runs of the "
            "same protocol are separate rows. The paper's ResNet-110 is the best of 5 runs "
            f"(mean {paper.TABLE6_RESNET110_MEAN_STD[0]} ± {paper.TABLE6_RESNET110_MEAN_STD[1]}).",
        ),
        "| model | device | n | ours: test error | best | ours: train error | paper | runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        quoted = "-" if r["paper"] is None else f"{r['paper']}"
        dirs = ", ".join(f"`{d}`" for d in r["dirs"])
        lines.append(
            f"| {r['model']} | {r['device']} | {r['n']} | {_mean_text(r)} | {r['best']:.2f} | "
            f"{_mean_text(r['train'])} | {quoted} | {dirs} |"
        )
    missing = [m for m in paper.TABLE6 if not any(r["model"] == m for r in data["rows"])]
    if missing:
        lines += [
            "",
            f"Not run yet at this schedule: {', '.join(missing)} (see `results/PENDING.md`).",
        ]
    return "\n".join(lines) + "\n"
