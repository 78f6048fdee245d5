"""The paper's ImageNet section on reslab's reduced protocol ``imagenette64``: Fig. 4, Tables 2 and 3.

    uv run reslab reproduce fig4      # plain-18/34 and ResNet-18/34: fig4.png and table2.md
    uv run reslab reproduce table3    # ResNet-34 with options A/B/C and ResNet-50: table3.md

``fig4`` draws training error (thin) and validation error of the centre crops (bold) against
epochs, the plain nets in one panel and the ResNets in the other, as the paper's Fig. 4. ``table2``
and ``table3`` give the 10-crop validation errors of the final models beside the paper's, and every
report states its verdicts in words from the numbers (degradation, depth, shortcut options), with
the standard error that the 3,925 validation images leave on a difference. These runs are reslab's
reduced protocol (64x64 crops of 10 ImageNet classes, configs/base/imagenette64.yaml), never the
paper's: their errors are not comparable to the paper's 1000-class numbers, only their order is.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Any

from reslab.engine.logging import read_jsonl
from reslab.experiments import paper
from reslab.experiments.figures import _pyplot, _write
from reslab.experiments.ledger import finished_runs, schedule_label
from reslab.experiments.reproduce import borrowed

FAMILY = "imagenette64"
NAMES = {
    "plain18": "plain-18",
    "plain34": "plain-34",
    "resnet18": "ResNet-18",
    "resnet34": "ResNet-34 A",
    "resnet34b": "ResNet-34 B",
    "resnet34c": "ResNet-34 C",
    "resnet50": "ResNet-50",
}
COLORS = {"18": "C0", "34": "C3", "50": "C2"}


def _runs(results: Path, schedule: Fraction, experiment: str) -> dict[str, dict[str, Any]]:
    return finished_runs(
        results, schedule, experiment, borrowed=borrowed(experiment), family=FAMILY
    )


def _protocol(schedule: Fraction) -> str:
    label = schedule_label(schedule, FAMILY)
    return f"reslab reduced ImageNet protocol ({label}: 64x64 crops, 10 classes)"


def _epoch_curves(summary: dict[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """(epoch, training error) of each logging window and (epoch, centre-crop validation error)
    of each periodic evaluation of a ledger run."""
    rows = read_jsonl(Path(summary["_dir"]) / "metrics.jsonl")
    logged = [r for r in rows if "train_error" in r and "event" not in r]
    per_epoch = summary.get("batches_per_epoch") or summary["iterations"] / max(
        max((r["epoch"] for r in logged), default=1), 1
    )
    train = [(r["iteration"] / per_epoch, r["train_error"]) for r in logged]
    val = [
        (r["iteration"] / per_epoch, r["test_error"])
        for r in rows
        if "test_error" in r and "test_views" not in r
    ]
    return {"train": train, "val": val}


def _standard_error(a: float, b: float, n: int) -> float:
    """Standard error (points) of the difference of two error rates (percent) on ``n`` images."""
    pa, pb = a / 100, b / 100
    return 100 * math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / n)


def _compare(better: str, worse: str, runs: dict[str, Any], key: str = "test_error") -> str:
    """Whether ``better`` has the lower ``key`` than ``worse``, with the difference and its
    standard error, in words."""
    a, b = runs[better][key], runs[worse][key]
    n = runs[better].get("test_images") or 3925
    se = _standard_error(a, b, n)
    verdict = "yes" if a < b else "no"
    sure = "" if abs(a - b) >= 2 * se else f" (within 2 standard errors, {2 * se:.2f} points)"
    return (
        f"{verdict}: {NAMES[better]} {a:.2f}% against {NAMES[worse]} {b:.2f}% "
        f"({b - a:+.2f} points{sure})"
    )


def _tail_train_error(summary: dict[str, Any], windows: int = 9) -> float:
    """The mean training error of the last ``windows`` logging windows (the final epochs),
    steadier than the last window alone."""
    curves = _epoch_curves(summary)["train"][-windows:]
    return sum(e for _, e in curves) / len(curves)


def fig4(results: str | Path, schedule: Fraction = Fraction(1), command: str = "") -> Path:
    """Plot and report Fig. 4 (and Table 2, the same runs tested with 10 crops) from the ledger;
    returns the figure's path."""
    plt = _pyplot()
    results = Path(results)
    runs = _runs(results, schedule, "fig4")
    stem = (
        "fig4"
        if schedule == 1
        else f"fig4-{schedule_label(schedule, FAMILY).split()[-1].replace('/', 'of')}"
    )
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    data: dict[str, Any] = {"protocol": _protocol(schedule), "runs": {}}
    for model, summary in sorted(runs.items()):
        curves = _epoch_curves(summary)
        data["runs"][model] = {
            **curves,
            "final_train_error": summary["train_error"],
            "tail_train_error": _tail_train_error(summary),
            "tencrop_top1": summary["test_error"],
            "tencrop_top5": summary["test_top5_error"],
            "dir": str(Path(summary["_dir"]).relative_to(results)),
            "device": summary["device"],
        }
        ax = axes[0 if model.startswith("plain") else 1]
        color = COLORS[model[-2:]]
        if curves["train"]:
            ax.plot(*zip(*curves["train"], strict=True), "-", lw=0.7, color=color)
        if curves["val"]:
            ax.plot(*zip(*curves["val"], strict=True), "-", lw=2.4, color=color, label=NAMES[model])
    for ax, title in zip(axes, ("plain networks", "residual networks"), strict=True):
        ax.set_title(f"{title}\n{_protocol(schedule)}", fontsize=10)
        ax.set_xlabel("epochs")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    axes[0].set_ylabel("error (%)")
    fig.suptitle(
        "Imagenette at 64x64: training (thin) and centre-crop validation (bold) error, as the paper's Fig. 4"
    )
    table2 = results / "fig4" / f"{stem.replace('fig4', 'table2')}.md"
    table2.parent.mkdir(parents=True, exist_ok=True)
    table2.write_text(_table2_report(data, runs, stem, command))
    return _write(fig, results / "fig4", stem, data, _fig4_report(data, runs, stem), command)


def _fig4_verdicts(runs: dict[str, Any], data: dict[str, Any]) -> list[str]:
    lines = []
    tails = {m: r["tail_train_error"] for m, r in data["runs"].items()}
    if {"plain18", "plain34"} <= tails.keys():
        a, b = tails["plain18"], tails["plain34"]
        lines.append(
            "- Degradation (does plain-34 train to a higher training error than plain-18?): "
            f"{'yes' if b > a else 'no'}: {b:.2f}% against {a:.2f}% over the last epochs "
            "(training crops, with augmentation)."
        )
    if {"resnet18", "resnet34"} <= tails.keys():
        a, b = tails["resnet18"], tails["resnet34"]
        lines.append(
            "- With shortcuts, does the deeper net train to a lower training error? "
            f"{'yes' if b < a else 'no'}: ResNet-34 {b:.2f}% against ResNet-18 {a:.2f}%."
        )
    if {"resnet34", "resnet18"} <= runs.keys():
        lines.append(
            f"- Does ResNet-34 beat ResNet-18 (10-crop top-1)? {_compare('resnet34', 'resnet18', runs)}."
        )
    if {"resnet34", "plain34"} <= runs.keys():
        lines.append(f"- Does ResNet-34 beat plain-34? {_compare('resnet34', 'plain34', runs)}.")
    if {"resnet18", "plain18"} <= runs.keys():
        lines.append(
            f"- Does ResNet-18 beat plain-18 (the paper: about equal, 27.88 against 27.94)? {_compare('resnet18', 'plain18', runs)}."
        )
    return lines


def _fig4_report(data: dict[str, Any], runs: dict[str, Any], stem: str) -> str:
    lines = [
        "# Fig. 4 on Imagenette at 64x64 (reslab's reduced ImageNet protocol)",
        "",
        f"![ours]({stem}.png)",
        "",
        "The paper (Fig. 4): on ImageNet the 34-layer plain net has higher training error than the",
        "18-layer plain net throughout training (degradation), while the 34-layer ResNet has lower",
        f"training and validation error than the 18-layer one. Ours, {data['protocol']}:",
        "",
        *_fig4_verdicts(runs, data),
        "",
        "| net | training error, last epochs | training error, last window | 10-crop top-1 | run |",
        "|---|---|---|---|---|",
    ]
    for model, r in data["runs"].items():
        lines.append(
            f"| {NAMES[model]} | {r['tail_train_error']:.2f} | {r['final_train_error']:.2f} | "
            f"{r['tencrop_top1']:.2f} | `{r['dir']}` |"
        )
    return "\n".join(lines) + "\n"


def _table2_report(data: dict[str, Any], runs: dict[str, Any], stem: str, command: str) -> str:
    lines = [
        "# Table 2 on Imagenette at 64x64 (reslab's reduced ImageNet protocol)",
        "",
        "Top-1 error (%) on Imagenette's 3,925 validation images, 10-crop testing, final models;",
        "the paper's column is ImageNet's (1000 classes, 224 crops): compare the order, not the values.",
        "",
        "| net | paper (ImageNet) | ours: 10-crop top-1 | ours: top-5 | run |",
        "|---|---|---|---|---|",
    ]
    for model in ("plain18", "plain34", "resnet18", "resnet34"):
        r = data["runs"].get(model)
        ours = (
            f"{r['tencrop_top1']:.2f} | {r['tencrop_top5']:.2f} | `{r['dir']}`"
            if r
            else "not run yet | | "
        )
        lines.append(f"| {NAMES[model]} | {paper.TABLE2[model]} | {ours} |")
    lines += ["", "Verdicts, from the numbers above:", "", *_fig4_verdicts(runs, data), ""]
    lines.append(f"Written with `{stem}.png` by `{command or '(called from Python)'}`.")
    return "\n".join(lines) + "\n"


def table3(results: str | Path, schedule: Fraction = Fraction(1), command: str = "") -> Path:
    """Report Table 3 (ResNet-34 with shortcut options A/B/C, plain-34 and ResNet-50) from the
    ledger; returns the report's path."""
    results = Path(results)
    runs = _runs(results, schedule, "table3")
    label = schedule_label(schedule, FAMILY)
    stem = "table3" if schedule == 1 else f"table3-{label.split()[-1].replace('/', 'of')}"
    lines = [
        "# Table 3 on Imagenette at 64x64 (reslab's reduced ImageNet protocol)",
        "",
        f"Top-1 and top-5 error (%) on Imagenette's validation images, 10-crop testing, final models; {_protocol(schedule)}.",
        "The paper's columns are ImageNet's: compare the order, not the values.",
        "",
        "| net | paper top-1 | paper top-5 | ours: top-1 | ours: top-5 | run |",
        "|---|---|---|---|---|---|",
    ]
    for model, (top1, top5) in paper.TABLE3_TOP1_TOP5.items():
        r = runs.get(model)
        ours = (
            f"{r['test_error']:.2f} | {r['test_top5_error']:.2f} | `{Path(r['_dir']).relative_to(results)}`"
            if r
            else "not run yet | | "
        )
        lines.append(f"| {NAMES[model]} | {top1} | {top5} | {ours} |")
    lines += ["", "Verdicts, from the numbers above:", ""]
    for better, worse, question in (
        ("resnet34b", "resnet34", "Does option B improve on A (the paper: 24.52 against 25.03)?"),
        ("resnet34c", "resnet34b", "Does option C improve on B (the paper: 24.19 against 24.52)?"),
        ("resnet34", "plain34", "Does ResNet-34 A beat plain-34?"),
        (
            "resnet50",
            "resnet34b",
            "Does ResNet-50 beat ResNet-34 B (the paper: 22.85 against 24.52)?",
        ),
    ):
        if {better, worse} <= runs.keys():
            lines.append(f"- {question} {_compare(better, worse, runs)}.")
        else:
            missing = ", ".join(NAMES[m] for m in (better, worse) if m not in runs)
            lines.append(f"- {question} Not yet: {missing} not in the ledger.")
    lines.append("")
    lines.append(f"Written by `{command or '(called from Python)'}`.")
    out = results / "table3" / f"{stem}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out
