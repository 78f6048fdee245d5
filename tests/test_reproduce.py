"""reslab reproduce / report: scaled schedules, labelled reduced runs, ledger copies, the report."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from reslab.cli import main
from reslab.experiments.reproduce import HOME, Run, parse_schedule, plan


def test_schedule_scales_iterations_and_milestones_together():
    cfg = Run("fig6", "resnet56", 0, Fraction(1, 8)).config(None, None)
    assert cfg.train.iterations == 8000 and cfg.optim.milestones == [4000, 6000]
    assert cfg.name == "fig6/resnet56-seed0-sched1of8"
    full = Run("table6", "resnet110", 3, Fraction(1)).config(None, None)
    assert full.train.iterations == 64000 and full.optim.milestones == [32000, 48000]
    assert (
        full.train.seed == 3
        and full.optim.warmup_lr == 0.01
        and full.name == "table6/resnet110-seed3"
    )


def test_plan_and_errors():
    assert [r.name for r in plan("table6", Fraction(1), 2, ["resnet20"])] == [
        "resnet20-seed0",
        "resnet20-seed1",
    ]
    with pytest.raises(ValueError, match="no model 'plain20'"):
        plan("table6", Fraction(1), 1, ["plain20"])
    # a run that several experiments name trains once, under its home: Fig. 6's residual nets and
    # option A (the CIFAR default) are Table 6's runs
    shared = plan("fig6", Fraction(1), 1, ["plain20", "resnet20"]) + plan("options", Fraction(1), 1, ["resnet32-A", "resnet32-B"])  # fmt: skip
    assert [(r.experiment, r.name) for r in shared] == [
        ("fig6", "plain20-seed0"),
        ("table6", "resnet20-seed0"),
        ("table6", "resnet32-seed0"),
        ("options", "resnet32-B-seed0"),
    ]
    # the whole CIFAR-10 section but ResNet-1202: each run once, ResNet-110 over the paper's 5 seeds
    section = plan("cifar", Fraction(1), 1, None)
    names = [f"{r.experiment}/{r.name}" for r in section]
    assert len(names) == len(set(names)) == 17 and "table6/resnet110-seed4" in names
    assert {r.experiment for r in section} == {"table6", "fig6", "options"}
    assert [r.name for r in plan("cifar", Fraction(1), 2, ["plain20", "resnet56-A"])] == [
        "plain20-seed0",
        "plain20-seed1",
        "resnet56-seed0",
        "resnet56-seed1",
    ]  # fmt: skip (Fig. 6's, then the options' option A: Table 6's ResNet-56)
    with pytest.raises(ValueError, match="cifar has no model 'resnet1202'"):
        plan("cifar", Fraction(1), 1, ["resnet1202"])
    with pytest.raises(ValueError, match=r"valid choices: .*cifar"):
        plan("table7", Fraction(1), 1, None)
    for experiment, model in HOME:  # the same training, apart from the run's name
        home, there = HOME[experiment, model]
        a = Run(experiment, model, 0, Fraction(1)).config(None, None)
        b = Run(home, there, 0, Fraction(1)).config(None, None)
        a.name = b.name
        if experiment == "options":  # option A, named there, is the CIFAR nets' default
            a.model.options.pop("shortcut")
        assert a.to_dict() == b.to_dict(), (experiment, model)
    with pytest.raises(ValueError, match="must be in"):
        parse_schedule("3/2")
    with pytest.raises(ValueError, match="expected a fraction"):
        parse_schedule("an eighth")


def test_reproduce_records_reduced_runs_and_report(data_dir, tmp_path, capsys):
    args = [
        "reproduce",
        "fig6",
        "--schedule",
        "1/6400",
        "--only",
        "resnet20",
        "--results",
        str(tmp_path / "results"),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--data-dir",
        str(data_dir),
        "--no-progress",
        "--set",
        "train.eval_every=0",
        "--set",
        "data.eval_split=val5k",
        "--set",
        "data.split=train45k",
        "--set",
        "train.checkpoint_every=5",
    ]
    assert main(args) == 0
    run = tmp_path / "results" / "table6" / "resnet20-seed0-sched1of6400"  # Fig. 6's is Table 6's
    assert sorted(p.name for p in run.iterdir()) == [
        "config.yaml",
        "metrics.jsonl",
        "model.safetensors",
        "summary.json",
    ]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["schedule"] == "1/6400" and "reduced" in summary["protocol"]
    assert summary["command"].startswith("reslab reproduce fig6") and summary["iterations"] == 10
    report = (tmp_path / "results" / "README.md").read_text()
    assert "| table6 | resnet20 | 1/6400 | 8.75 |" in report
    assert main(["report", "--results", str(tmp_path / "results")]) == 0
    assert "table6/resnet20-seed0-sched1of6400" in capsys.readouterr().out
    assert (tmp_path / "results" / "table6" / "table6-sched1of6400.md").is_file()  # drawn too

    # the figure and its report, labelled as the reduced protocol
    fig_dir = tmp_path / "results" / "fig6"
    assert (fig_dir / "fig6-sched1of6400.png").stat().st_size > 10_000
    md = (fig_dir / "fig6-sched1of6400.md").read_text()
    assert "reduced schedule: 1/6400" in md and "| resnet20 |" in md and "| 8.75 |" in md
    assert "`table6/resnet20-seed0-sched1of6400`" in md
    assert "Made by `reslab reproduce fig6 --schedule 1/6400 --only resnet20" in md
    curves = json.loads((fig_dir / "fig6-sched1of6400.json").read_text())["runs"]["resnet20"]
    assert [it for it, _ in curves["train"]][-1] == 10 and curves["test"][-1][0] == 10

    from fractions import Fraction

    from reslab.experiments import figures

    png = figures.fig7(tmp_path / "results", Fraction(1, 6400), str(data_dir), limit=200)
    record = json.loads(png.with_suffix(".json").read_text())["runs"]["resnet20"]
    assert len(record["std"]) == 18 and all(s > 0 for s in record["std"])  # 9 blocks x 2 BNs
    assert "| resnet20 | 18 |" in png.with_suffix(".md").read_text()


def test_gpu_runs_get_their_own_ledger_entry(tmp_path):
    """A run of the same protocol on a GPU is recorded beside the CPU one, not over it."""
    from fractions import Fraction

    from reslab.experiments.reproduce import Run, record

    run = Run("table6", "resnet20", 0, Fraction(1))
    for device in ("CPU AMD EPYC (2 threads)", "NVIDIA H100 80GB HBM3"):
        src = tmp_path / device[:3]
        src.mkdir()
        (src / "summary.json").write_text(json.dumps({"device": device, "test_error": 8.0}))
        record(run, src, tmp_path / "results", "cmd", note="n")
    names = sorted(p.name for p in (tmp_path / "results" / "table6").iterdir())
    assert names == ["resnet20-seed0", "resnet20-seed0-gpu"]
    gpu = json.loads((tmp_path / "results/table6/resnet20-seed0-gpu/summary.json").read_text())
    assert gpu["note"] == "n" and gpu["schedule"] == "paper" and gpu["protocol"] == "paper"


def test_fig7_report_checks_the_papers_claims():
    """Residual below plain (mean and layer by layer), deeper ResNets smaller; a failed check is
    reported as such, not hidden."""
    from fractions import Fraction

    from reslab.experiments.figures import _fig7_report

    runs = {
        "plain20": {"std": [2.0, 1.0, 3.0], "mean_std": 2.0, "dir": "fig6/plain20"},
        "resnet20": {"std": [1.0, 1.5, 0.5], "mean_std": 1.0, "dir": "fig6/resnet20"},
        "resnet56": {"std": [1.2, 1.2, 1.2], "mean_std": 1.2, "dir": "fig6/resnet56"},
    }
    md = _fig7_report({"runs": runs, "limit": 0}, Fraction(1, 8), "fig7-sched1of8")
    assert "ResNet mean std 1.000 vs plain 2.000: residual responses smaller: holds" in md
    assert "(smaller in 2 of 3 layers, layer by layer)" in md
    assert "ResNet-56 mean std 1.200 vs ResNet-20 1.000: deeper is smaller: does NOT hold" in md
    assert "10000 CIFAR-10 test images" in md and "| resnet56 | 3 | 1.200 | 1.200 |" in md


def test_options_experiment_trains_each_shortcut_and_charts_them(data_dir, tmp_path, capsys):
    """``reproduce options``: each variant is ResNet-32 with its shortcut option in the recorded
    config (so ``reslab eval`` rebuilds the same net), named by the variant in the ledger."""
    results = tmp_path / "results"
    common = ["--results", str(results), "--runs-dir", str(tmp_path / "runs")]
    args = ["reproduce", "options", "--schedule", "1/6400", "--only", "resnet32-A", "resnet32-B"]
    sets = ["train.eval_every=0", "data.eval_split=val5k", "data.split=train45k"]
    sets += ["train.batch_size=32", "train.checkpoint_every=5"]
    args += [*common, "--data-dir", str(data_dir), "--no-progress"]
    assert main(args + [a for s in sets for a in ("--set", s)]) == 0
    run = results / "options" / "resnet32-B-seed0-sched1of6400"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == "resnet32-B" and summary["experiment"] == "options"
    config = (run / "config.yaml").read_text()
    assert "shortcut: B" in config and "batch_size: 32" in config  # --set reaches every run
    record = json.loads((results / "options" / "options-sched1of6400.json").read_text())["runs"]
    assert record["resnet32-B"]["params"] > record["resnet32-A"]["params"]  # B adds projections
    md = (results / "options" / "options-sched1of6400.md").read_text()
    assert "| resnet32 | A |" in md and "| resnet32 | B |" in md and "ResNet-32: test error" in md
    ledger = (results / "README.md").read_text()
    assert "| table6 | resnet32 | 1/6400 | 7.51 |" in ledger  # option A is Table 6's run
    assert record["resnet32-A"]["dir"] == "table6/resnet32-seed0-sched1of6400"
    assert "| options | resnet32-B | 1/6400 | - |" in ledger
    capsys.readouterr()
    evaluate = ["eval", str(run), "--device", "cpu", "--data-dir", str(data_dir)]
    assert main([*evaluate, "--split", "val5k"]) == 0
    again = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert again["images"] == 5000  # B's projections loaded: the same net as trained
    assert again["test_error"] == pytest.approx(summary["test_error"], abs=0.1)


def test_a_recorded_run_keeps_the_command_that_trained_it(tmp_path):
    """Reusing a finished run (fig7 over the fig6 nets) leaves its ledger entry alone; a new
    finish of the same run (another date) replaces it."""
    from fractions import Fraction

    from reslab.experiments.reproduce import Run, record

    run, src = Run("fig6", "resnet20", 0, Fraction(1, 8)), tmp_path / "run"
    src.mkdir()
    (src / "summary.json").write_text(json.dumps({"device": "CPU x", "date": "d1"}))
    target = record(run, src, tmp_path / "results", "reslab reproduce fig6")
    record(run, src, tmp_path / "results", "reslab reproduce fig7")
    assert json.loads((target / "summary.json").read_text())["command"].endswith("fig6")
    (src / "summary.json").write_text(json.dumps({"device": "CPU x", "date": "d2"}))
    record(run, src, tmp_path / "results", "reslab reproduce fig7")
    assert json.loads((target / "summary.json").read_text())["command"].endswith("fig7")


def test_packed_seeds_go_into_the_ledger_with_table6(tmp_path, table6_args, capsys):
    """``--concurrent 2``: two seeds trained at once (two one-thread processes), both recorded;
    Table 6 and the ledger report give mean ± std over them; a bad --concurrent is one line."""
    results, args = tmp_path / "results", table6_args
    assert main([*args, "--concurrent", "0"]) == 2
    assert "--concurrent '0': expected a number >= 1 or auto" in capsys.readouterr().err
    assert main([*args, "--concurrent", "2"]) == 0
    runs = [json.loads((results / "table6" / f"resnet20-seed{s}-sched1of12800" / "summary.json").read_text()) for s in (0, 1)]  # fmt: skip
    assert [r["seed"] for r in runs] == [0, 1] and all("(1 threads)" in r["device"] for r in runs)
    errors = [r["test_error"] for r in runs]
    md = (results / "table6" / "table6-sched1of12800.md").read_text()
    mean = sum(errors) / 2
    assert f"| resnet20 | CPU | 2 | {mean:.2f} ± " in md and "| 8.75 |" in md
    assert (results / "table6" / "table6-sched1of12800.png").stat().st_size > 10_000
    assert (
        f"| table6 | resnet20 | 1/12800 | 8.75 | {mean:.2f} ± "
        in (results / "README.md").read_text()
    )


def test_auto_concurrency_packs_seeds_of_one_model_only():
    """``--concurrent auto`` on the CPU packs two runs, but only seeds of one model (equal
    lengths): fig6's plain-20 and plain-56 of one seed train one after the other."""
    from reslab.experiments.reproduce import concurrency

    assert concurrency("auto", "cpu", runs=2, seeds=1) == 1
    assert concurrency("auto", "cpu", runs=10, seeds=5) == 2
    assert concurrency("3", "cpu", runs=2, seeds=1) == 2


def test_dry_run_lists_the_queue_and_projects_its_time(tmp_path, capsys):
    """``reslab reproduce table6 --dry-run --throughput RECORD``: each run's ledger entries and
    projected time at the record's speeds (a model it lacks scaled by multiply-adds); a file that
    is no bench record is one line."""
    results = tmp_path / "results"
    (results / "table6" / "resnet20-seed0-gpu").mkdir(parents=True)
    (results / "table6" / "resnet20-seed0-gpu" / "summary.json").write_text("{}")
    record = tmp_path / "speeds.json"
    record.write_text(json.dumps({"results": [{"model": "resnet20", "images_per_s": 1000.0}]}))
    args = ["reproduce", "table6", "--only", "resnet20", "resnet56", "--dry-run",
            "--results", str(results), "--runs-dir", str(tmp_path / "runs")]  # fmt: skip
    assert main([*args, "--throughput", str(record)]) == 0
    out = capsys.readouterr().out
    assert "table6/resnet20-seed0" in out and " GPU " in out
    assert "136.5 min  (measured)" in out  # 64000 x 128 images at 1000 images/s
    r56 = next(line for line in out.splitlines() if "resnet56" in line)
    assert "(scaled from resnet20)" in r56 and float(r56.split()[5]) > 2.5 * 136.5
    assert f"runs not in the ledger: {float(r56.split()[5]):.1f} min" in out
    assert main([a for a in args if a != "--dry-run"] + ["--throughput", str(record)]) == 2
    assert "add --dry-run" in capsys.readouterr().err
    packed = tmp_path / "packed.json"  # a --concurrent record: the best aggregate counts
    rows = [{"model": "resnet20", "concurrent": n, "aggregate_images_per_s": v} for n, v in ((1, 1000.0), (4, 4000.0))]  # fmt: skip
    packed.write_text(json.dumps({"results": rows}))
    assert main([*args, "--only", "resnet20", "--throughput", str(packed)]) == 0
    assert "34.1 min  (measured)" in capsys.readouterr().out  # 136.5 min at 4x
    # the whole section, each run once: its total is what a GPU loan plan needs
    section = ["reproduce", "cifar", "--dry-run", "--results", str(results), "--runs-dir", str(tmp_path / "runs")]  # fmt: skip
    assert main([*section, "--throughput", str(record)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + 17 + 1 and sum(" GPU " in line for line in lines) == 1
    (tmp_path / "bad.json").write_text("[]")
    assert main([*args, "--throughput", str(tmp_path / "bad.json")]) == 2
    assert "not a `reslab bench train` record" in capsys.readouterr().err
