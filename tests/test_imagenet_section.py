"""The ImageNet section on reslab's reduced protocol: Fig. 4, Table 2 and Table 3 end to end."""

from __future__ import annotations

import json
import shutil
from fractions import Fraction

import pytest

from reslab.cli import main
from reslab.experiments import paper
from reslab.experiments.reproduce import Run, plan


def test_the_protocol_is_the_papers_recipe_at_64_pixels():
    cfg = Run("fig4", "resnet34", 0, Fraction(1)).config(None, None)
    d, o, t = cfg.data, cfg.optim, cfg.train
    assert (d.scale, d.crop, d.test_views, d.normalization, d.lighting) == (
        [73, 137],
        64,
        "tencrop",
        "pixel",
        0.1,
    )
    assert (t.batch_size, o.lr, o.momentum, o.weight_decay, o.schedule) == (
        256,
        0.1,
        0.9,
        1e-4,
        "step",
    )
    assert len(o.milestones) == 2 and o.milestones[-1] < t.iterations
    epochs = t.iterations / (9469 // 256)
    assert 60 <= epochs <= 90, epochs
    assert cfg.model.options["shortcut"] == "A" and d.train_dir == "imagenette/train"
    assert (
        Run("table3", "resnet34c", 0, Fraction(1)).config(None, None).model.options["shortcut"]
        == "C"
    )
    assert [r.experiment for r in plan("table3", Fraction(1), 1, None)] == [
        "fig4",
        "fig4",
        "table3",
        "table3",
        "table3",
    ]  # fmt: skip (plain-34 and ResNet-34 A are Fig. 4's runs)
    assert set(paper.TABLE2) == set(plan_models("fig4"))


def plan_models(experiment):
    return [r.model for r in plan(experiment, Fraction(1), 1, None)]


@pytest.fixture
def small_imagenette(data_dir, tmp_path):
    """Imagenette's ten classes, four training and two validation photographs each."""
    source = data_dir / "imagenette"
    if not (source / "train").is_dir():
        pytest.skip("imagenette/train not found")
    root = tmp_path / "data"
    for split, n in (("train", 4), ("val", 2)):
        for cls in sorted(p.name for p in (source / split).iterdir()):
            (root / split / cls).mkdir(parents=True)
            for f in sorted((source / split / cls).iterdir())[:n]:
                shutil.copy(f, root / split / cls / f.name)
    return root


def test_fig4_and_tables_from_tiny_runs(small_imagenette, tmp_path):
    """``reproduce fig4`` trains the four nets (a 540th of the schedule: 4 iterations), records
    them with the protocol named, and draws Fig. 4 and Table 2 with verdicts; ``table3`` reuses
    Fig. 4's ResNet-34 and plain-34."""
    results = tmp_path / "results"
    common = [
        "--schedule",
        "1/540",
        "--results",
        str(results),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--no-progress",
        "--set",
        f"data.data_dir={small_imagenette}",
        "--set",
        "data.train_dir=train",
        "--set",
        "data.eval_dir=val",
        "--set",
        "train.batch_size=8",
        "--set",
        "train.eval_batch_size=20",
    ]
    assert main(["reproduce", "fig4", *common]) == 0
    summary = json.loads(
        (results / "fig4" / "plain34-seed0-sched1of540" / "summary.json").read_text()
    )
    assert summary["protocol"].startswith("reslab reduced ImageNet protocol imagenette64")
    assert summary["schedule"] == "imagenette64 x 1/540" and summary["test_views"] == "tencrop"
    assert summary["test_images"] == 20 and summary["batches_per_epoch"] == 5
    fig = json.loads((results / "fig4" / "fig4-1of540.json").read_text())
    assert set(fig["runs"]) == {"plain18", "plain34", "resnet18", "resnet34"}
    assert fig["runs"]["resnet18"]["val"] and fig["runs"]["resnet18"]["train"][-1][
        0
    ] == pytest.approx(0.8)
    assert (results / "fig4" / "fig4-1of540.png").stat().st_size > 10_000
    table2 = (results / "fig4" / "table2-1of540.md").read_text()
    assert "| plain-34 | 28.54 |" in table2 and "Degradation (does plain-34 train" in table2
    assert "Does ResNet-34 beat plain-34? " in table2
    assert main(["reproduce", "table3", "--only", "resnet34", "resnet34b", *common]) == 0
    table3 = (results / "table3" / "table3-1of540.md").read_text()
    assert (
        "| ResNet-34 B | 24.52 | 7.46 |" in table3 and "fig4/resnet34-seed0-sched1of540" in table3
    )
    assert (
        "Does option B improve on A" in table3
        and "Not yet: ResNet-34 C not in the ledger" in table3
    )
    assert not (results / "table3" / "resnet34-seed0-sched1of540").exists()  # trained once, in fig4
    # the weights index re-evaluates them from files (DataLoader workers) to the error that the
    # in-memory 10-crop test gave
    from reslab.experiments.index import build_index

    index = build_index(
        results, verify=True, data_dir=str(small_imagenette), out=tmp_path / "index.json"
    )
    entry = index["entries"]["resnet34.imagenette64_B_sched1of540_seed0"]
    assert entry["dataset"] == "imagenette64" and entry["classes"][0] == "n01440764"
    assert entry["reevaluated_test_error"] == pytest.approx(entry["test_error"], abs=1e-9)
    assert len([n for n in index["entries"] if ".imagenette64" in n]) == 5
