"""The weights index ``reslab/hub/index.json``, generated from the results ledger (``reslab report``
calls this).

    uv run reslab report --verify     # re-evaluates the runs not yet checked, then writes the index

A ledger run becomes an entry when it is a finished run (CIFAR-10, or the imagenette64 protocol's)
whose ``model.safetensors`` re-evaluates to its summary's error (within ``TOLERANCE`` points); the
re-evaluation is kept in the run's ``reeval.json`` with the file's sha256, so a later report
reuses it and a changed file is checked again.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from reslab.hub import INDEX, TOLERANCE, sha256


def reevaluate(
    run_dir: Path, data_dir: str | None, digest: str, views: str = "single"
) -> dict[str, Any]:
    """Test the run's weights on the data it was tested on (CIFAR-10's test set, or the run's
    evaluation folder with its ``views``), on the CPU, and keep the result."""
    from reslab.engine.evaluate import evaluate_weights
    from reslab.engine.runtime import code_version, describe_device

    result = evaluate_weights(run_dir, data_dir=data_dir, device="cpu", views=views)
    record = {
        "sha256": digest,
        "test_error": result["test_error"],
        "images": result["images"],
        "device": describe_device("cpu"),
        "code_version": code_version(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": f"reslab eval {run_dir} --device cpu"
        + (f" --{views}" if views in ("tencrop", "multiscale") else ""),
    }
    (run_dir / "reeval.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _dataset(summary: dict[str, Any]) -> str | None:
    """The data set a ledger run's weights are indexed under: ``cifar10``, ``imagenette64`` (the
    reduced ImageNet protocol's runs), or None for runs that are no result (a pilot)."""
    if summary.get("dataset", "cifar10") == "cifar10":
        return "cifar10"
    if (
        summary.get("schedule", "").startswith("imagenette64")
        and summary["experiment"] != "pilot64"
    ):
        return "imagenette64"
    return None


def _tag(summary: dict[str, Any], variant: str) -> str:
    dataset = _dataset(summary)
    if dataset == "imagenette64":
        parts = ["imagenette64", variant]
        if summary["schedule"] != "imagenette64":  # imagenette64 x 1/8
            a, _, b = summary["schedule"].split()[-1].partition("/")
            parts.append(f"sched{a}of{b}")
        parts.append(f"seed{summary.get('seed', 0)}")
        if not summary["device"].startswith("CPU"):
            parts.append("gpu")
        return "_".join(p for p in parts if p)
    parts = ["cifar10", variant]
    if summary.get("schedule", "paper") != "paper":
        a, _, b = summary["schedule"].partition("/")
        parts.append(f"sched{a}of{b}")
    parts.append(f"seed{summary.get('seed', 0)}")
    if not summary["device"].startswith("CPU"):
        parts.append("gpu")
    return "_".join(p for p in parts if p)


def build_index(
    results: str | Path, *, verify: bool = False, data_dir: str | None = None, out: Path = INDEX
) -> dict[str, Any]:
    """Write the index from the ledger under ``results``; returns it, with ``skipped`` listing
    the runs left out and why. ``verify`` re-evaluates runs without a current ``reeval.json``."""
    from reslab.engine.logging import read_json
    from reslab.experiments.ledger import collect
    from reslab.models import create_model
    from reslab.models.factory import model_options
    from reslab.weights.files import read_metadata

    results = Path(results)
    entries: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for summary in collect(results):
        run_dir = results / summary["_dir"]
        path = run_dir / "model.safetensors"
        dataset = _dataset(summary)
        if dataset is None or not path.is_file():
            continue
        views = summary.get("test_views", "single") if dataset != "cifar10" else "single"
        digest = sha256(path)
        reeval_path = run_dir / "reeval.json"
        fix = "delete it: `reslab report --verify` re-evaluates the run"
        reeval = read_json(reeval_path, fix) if reeval_path.is_file() else {}
        if reeval.get("sha256") != digest:
            if not verify:
                skipped[summary["_dir"]] = "not re-evaluated yet (reslab report --verify)"
                continue
            reeval = reevaluate(run_dir, data_dir, digest, views)
        if abs(reeval["test_error"] - summary["test_error"]) > TOLERANCE:
            skipped[summary["_dir"]] = (
                f"re-evaluates to {reeval['test_error']:.2f}%, not the {summary['test_error']:.2f}% claimed"
            )
            continue
        meta = read_metadata(path)
        model = meta["model"]
        options = model_options(model, create_model(model, **json.loads(meta.get("model_options", "{}"))))  # fmt: skip
        variant = summary["model"].removeprefix(model).lstrip("-")
        variant = variant.upper() if len(variant) == 1 else variant  # resnet34b: option B
        entries[f"{model}.{_tag(summary, variant)}"] = {
            "model": model,
            "model_options": options,
            "file": f"{summary['_dir']}/model.safetensors",
            "sha256": digest,
            "bytes": path.stat().st_size,
            "dataset": dataset,
            "classes": json.loads(meta["classes"]),
            "normalization": meta.get("normalization", "pixel"),
            "test_error": summary["test_error"],
            "reevaluated_test_error": reeval["test_error"],
            "schedule": summary.get("schedule", "paper"),
            "seed": summary.get("seed", 0),
            "device": summary["device"],
            "code_version": summary.get("code_version"),
            "command": summary.get("command"),
            "ledger": summary["_dir"],
        }
    aliases = {}
    for suffix in ("_seed0", "_seed0_gpu"):  # the full schedule's seed 0, the CPU run first
        for name in sorted(entries):
            model, tag = name.split(".")
            for dataset in ("cifar10", "imagenette64"):
                if tag == f"{dataset}{suffix}":
                    aliases.setdefault(f"{model}.{dataset}", name)
    data = {
        "generated_by": "reslab report",
        "base_url": None,
        "entries": dict(sorted(entries.items())),
        "aliases": dict(sorted(aliases.items())),
    }
    out.write_text(json.dumps(data, indent=1) + "\n")
    from reslab.hub import index

    index.cache_clear()
    return {**data, "skipped": skipped}
