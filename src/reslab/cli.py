"""``reslab``: one sub-command per job, each parsing its arguments and calling the library.

    uv run reslab --help

A user's mistake (a :class:`~reslab.errors.ReslabError`) ends in one line and exit code 2; anything
else is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence

from reslab.errors import ConfigError, ReslabError

# Copies of names the library owns, so that parsing imports neither torch nor the library
# (tests/test_cli.py asserts they are equal): reslab.engine.packed.MODES, and the experiments and
# sections of reslab.experiments.reproduce (with fig7, which measures the fig6 nets).
PACK_MODES = ("processes", "streams", "stacked")
EXPERIMENTS = (
    "table6",
    "fig6",
    "fig7",
    "options",
    "resnet1202",
    "preact",
    "cifar",
    "fig4",
    "table2",
    "table3",
    "pilot64",
    "imagenette64",
)
DEVICES = ("auto", "cpu", "cuda")
MAIN_PROCESS = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 prints


def _at_least(low: int):
    def parse(text: str) -> int:
        if int(text) < low:
            raise argparse.ArgumentTypeError(f"{text} must be >= {low}")
        return int(text)

    return parse


_nonnegative, _positive = _at_least(0), _at_least(1)


def _given(**options):
    """The keyword arguments of ``options`` that were given (None: the function's default)."""
    return {key: value for key, value in options.items() if value is not None}


# ---- the commands: each parses nothing more and calls the library ------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    from reslab.models import get_model_spec, list_models

    for name in list_models(args.pattern):
        print(f"{name:<20} {get_model_spec(name).family}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from reslab.models import create_model
    from reslab.models.complexity import format_table

    options = _given(shortcut=args.shortcut, stride_in=args.stride_in, num_classes=args.num_classes)
    model = create_model(args.name, **options)
    size = args.input_size and (model.default_input_size[0], args.input_size, args.input_size)
    print(format_table(args.name, model, size or None))
    return 0


def _report(summary: dict) -> int:
    from reslab.engine.summary import summary_lines

    if MAIN_PROCESS:
        print("\n".join(summary_lines(summary)))
    codes = {"finished": 0, "died": 1}  # else interrupted (130): the same command resumes it
    return codes.get(summary["status"], 130)


def _train(args: argparse.Namespace, config: str, overrides: Sequence[str]) -> dict:
    from reslab.config import load_config
    from reslab.engine.trainer import fit

    given = {
        "data.data_dir": args.data_dir,
        "train.device": args.device,
        "train.init": getattr(args, "init", None),
    }
    machine = [f"{key}={value}" for key, value in given.items() if value]
    cfg = load_config(config, [*overrides, *machine])
    out = args.out or f"runs/{cfg.name}"
    if MAIN_PROCESS:
        print(f"run directory: {out}", flush=True)
    progress, resume = not getattr(args, "no_progress", False), getattr(args, "resume", False)
    return fit(cfg, out, restart=args.restart, require_checkpoint=resume, progress=progress)


def cmd_train(args: argparse.Namespace) -> int:
    return _report(_train(args, args.config, args.overrides))


def cmd_demo(args: argparse.Namespace) -> int:
    from reslab.engine.summary import demo_overrides

    summary = _train(args, "cifar10/resnet20", demo_overrides(args.iterations))
    code = _report(summary)
    if code == 0 and MAIN_PROCESS:
        accuracy = 100 - summary["test_error"]
        print(
            f"reslab demo: CIFAR-10 test accuracy of ResNet-20 after {args.iterations} "
            f"iterations: {accuracy:.2f}%"
        )
    return code


def cmd_eval(args: argparse.Namespace) -> int:
    from reslab.engine.evaluate import describe, evaluate_weights

    result = evaluate_weights(
        args.weights,
        data_dir=args.data_dir,
        split=args.split,
        eval_dir=args.eval_dir,
        views=args.views,
        limit=args.limit,
        device=args.device,
        batch_size=args.batch_size,
    )
    print(f"{describe(result)}\n{json.dumps(result)}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from reslab.engine.predict import predict

    predictions, bad = predict(args.weights, args.images, args.topk, args.device)
    try:
        for path, top in predictions:
            print(f"{path}: " + ", ".join(f"{name} {100 * p:.1f}%" for name, p in top))
    finally:  # also before the error of a folder where no image could be read
        for line in bad:
            print(f"reslab predict: skipped {line}", file=sys.stderr)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from reslab.experiments.reproduce import parse_schedule
    from reslab.experiments.run import reproduce_and_report

    if args.throughput and not args.dry_run:
        raise ConfigError("--throughput projects a --dry-run; add --dry-run (nothing trains then)")
    if args.dry_run:
        from reslab.experiments.reproduce import format_status, queue_status

        rows = queue_status(
            args.experiment,
            parse_schedule(args.schedule),
            args.seeds,
            args.only,
            runs_dir=args.runs_dir,
            results_dir=args.results,
            throughput=args.throughput,
        )
        print(format_status(rows, args.throughput))
        return 0

    summaries, written = reproduce_and_report(
        args.experiment,
        parse_schedule(args.schedule),
        seeds=args.seeds,
        only=args.only,
        data_dir=args.data_dir,
        device=args.device,
        runs_dir=args.runs_dir,
        results_dir=args.results,
        argv=args.argv,
        progress=not args.no_progress,
        overrides=args.overrides,
        restart=args.restart,
        concurrent=args.concurrent,
        pack=args.pack,
    )
    codes = [_report(s) for s in summaries]
    print("\n".join(f"wrote {path}" for path in written))
    return max(codes, default=0)


def cmd_queue(args: argparse.Namespace) -> int:
    from reslab.experiments import queue

    if args.verb == "run":
        return queue.run_queue(
            args.queue, results_dir=args.results, runs_dir=args.runs_dir, data_dir=args.data_dir
        )
    if args.verb == "status":
        entries, rows = queue.queue_status(
            args.queue, results_dir=args.results, runs_dir=args.runs_dir
        )
        print(queue.format_status(entries, rows))
    elif args.verb == "pause":
        running = queue.pause(args.holder).queues
        print(f"paused {running} running queue(s) until process {args.holder} exits")
    else:
        queue.release()
        print("resumed")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from reslab.experiments.report import build

    print(build(args.results, verify=args.verify, data_dir=args.data_dir), end="")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from reslab.analysis.common import run

    options = {"data_dir": args.data_dir, "limit": args.limit, "seed": args.seed, "out": args.out}
    summary, out = run(args.kind, args.model, args.weights, **options)
    print(f"{summary}\nwrote {out}/{args.kind}.json, .png, .txt")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from reslab import hub

    print(hub.table())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from reslab.engine.export import export

    info = export(args.weights, args.format, args.out, bare=args.bare, input_dtype=args.input_dtype)
    print(f"wrote {info['file']}: {info['model']} ({info['format']}), input {info['input']}")
    return 0


def _bench_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of the ``run`` that ``reslab bench KIND`` measures with."""
    if args.kind == "data":  # reslab.bench.data.run (on the CPU)
        return _given(data_dir=args.data_dir, workers=args.workers)
    if args.kind == "infer":  # reslab.bench.infer.run (CPU runtimes)
        return _given(models=args.models)
    if args.concurrent:  # reslab.bench.concurrent.run: packed runs against one alone
        return _given(
            models=args.models,
            concurrent=args.concurrent,
            data_dir=args.data_dir,
            device=args.device,
            steps=args.steps,
            pack=args.pack,
        )
    return _given(  # reslab.bench.train.run
        models=args.models,
        data_dir=args.data_dir,
        device=args.device,
        steps=args.steps,
        imagenet_batch=args.imagenet_batch,
        compile=args.compile,
        workers=args.workers,
        cuda_graph=args.cuda_graph,
    )


def cmd_bench(args: argparse.Namespace) -> int:
    from reslab.bench import run_and_record, table
    from reslab.experiments.queue import paused

    command = "reslab " + shlex.join(args.argv)
    with paused():  # a queued run training beside the benchmark would falsify both
        rows, path, kind = run_and_record(
            args.kind, args.out, command, args.note, **_bench_options(args)
        )
    print(f"{table(kind, rows)}\nwrote {path}")
    return 0


# ---- the parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    about = "Deep residual networks (He et al., 2016): models, training, analysis."
    parser = argparse.ArgumentParser(prog="reslab", description=about)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name,
        func,
        help,
        *,
        weights=False,
        device=None,
        progress=False,
        data=False,
        sets="",
        restart=False,
        results=False,
        sub=sub,
    ):
        """A sub-command and the options several share (``device``: its default, "" for none)."""
        p = sub.add_parser(name, help=help)
        p.set_defaults(func=func)
        if weights:
            p.add_argument(
                "weights",
                help="run directory, .safetensors file, or weights name (`reslab weights list`)",
            )
        if device is not None:
            p.add_argument("--device", default=device or None, choices=DEVICES, help="where to run")
        if progress:
            p.add_argument("--no-progress", action="store_true", help="no progress bar")
        if data:
            p.add_argument(
                "--data-dir", help="dataset root (default: $RESLAB_DATA or ~/.cache/reslab/data)"
            )
        if sets:
            p.add_argument(
                "--set",
                dest="overrides",
                action="append",
                default=[],
                metavar="KEY=VALUE",
                help=sets,
            )
        if restart:
            p.add_argument(
                "--restart", action="store_true", help="delete the run's outputs and start it over"
            )
        if results:
            p.add_argument("--results", default="results", help="the ledger")
        return p

    from reslab.detection.cli import add_detect

    _add_model_commands(command)
    _add_training_commands(command)
    _add_experiment_commands(command)
    add_detect(command, _nonnegative)
    _add_weights_commands(command)
    _add_bench_command(command)
    return parser


def _add_model_commands(command) -> None:
    """``list`` and ``info``: the registered models."""
    p = command("list", cmd_list, "list the registered models")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'plain*'")

    p = command("info", cmd_info, "Table-1 style summary of a model: stages, params, multiply-adds")
    p.add_argument("name", help="model name (see `reslab list`)")
    p.add_argument("--shortcut", choices=["A", "B", "C"], help="shortcut option (residual models)")
    p.add_argument("--stride-in", choices=["1x1", "3x3"], help="bottleneck stride position")
    p.add_argument("--num-classes", type=_positive, help="classifier outputs")
    p.add_argument("--input-size", type=_positive, help="input height = width (default: 32 or 224)")


def _add_training_commands(command) -> None:
    """``train``, ``demo``, ``eval`` and ``predict``: one run and its weights."""
    p = command(
        "train",
        cmd_train,
        "train a config (resumes its run directory)",
        device="",
        progress=True,
        data=True,
        sets="override a config key, e.g. --set train.iterations=400 (repeatable)",
        restart=True,
    )
    p.add_argument("config", help="config name (e.g. cifar10/resnet20) or YAML path")
    p.add_argument("--out", help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="require a checkpoint to resume from")
    p.add_argument(
        "--init",
        help="start from these weights (run directory, file, or a name of `reslab weights list`)",
    )

    p = command(
        "demo",
        cmd_demo,
        "train a CIFAR-10 ResNet-20 briefly and test it",
        device="",
        data=True,
        restart=True,
    )
    p.add_argument("--iterations", type=_positive, default=800, help="training iterations")
    p.add_argument("--out", default="runs/demo", help="run directory")

    p = command("eval", cmd_eval, "test trained weights", weights=True, device="auto", data=True)
    p.add_argument("--split", default="test", choices=["test", "val5k"], help="CIFAR-10 split")
    p.add_argument("--eval-dir", help="image folder under the data root (default: the run's)")
    views = p.add_mutually_exclusive_group()
    views.add_argument(
        "--tencrop",
        dest="views",
        action="store_const",
        const="tencrop",
        help="10-crop testing (image folders)",
    )
    views.add_argument(
        "--multiscale",
        dest="views",
        action="store_const",
        const="multiscale",
        help="multi-scale testing, shorter sides 224-640",
    )
    p.set_defaults(views="single")
    p.add_argument(
        "--limit", type=_nonnegative, default=0, help="test at most this many images (0: all)"
    )
    p.add_argument("--batch-size", type=_positive, default=500)

    p = command(
        "predict",
        cmd_predict,
        "top-k classes of an image or of every image in a folder",
        weights=True,
        device="auto",
    )
    p.add_argument("images", help="an image file or a folder of images")
    p.add_argument("--topk", type=_positive, default=5, help="classes to show per image")


def _add_experiment_commands(command) -> None:
    """``reproduce``, ``queue``, ``report`` and ``analyze``: the paper's experiments and the
    ledger of their results."""
    p = command(
        "reproduce",
        cmd_reproduce,
        "run one of the paper's CIFAR-10 experiments into the results ledger",
        device="",
        progress=True,
        data=True,
        sets="extra config override for every run (recorded in its config)",
        restart=True,
        results=True,
    )
    p.add_argument(
        "experiment",
        choices=EXPERIMENTS,
        help="fig6/options also draw their figure and report; fig7 trains (or reuses) the fig6 "
        "nets of the schedule and measures their layer responses; cifar: the whole CIFAR-10 "
        "section but ResNet-1202 (table6 with ResNet-110 over 5 seeds, fig6, options), each run "
        "once; fig4/table2/table3: the ImageNet section on reslab's reduced protocol imagenette64 "
        "(imagenette64: all three; pilot64: the pilot that set its schedule)",
    )
    p.add_argument(
        "--schedule", default="1", help="fraction of the paper's iterations, e.g. 1/8 (default 1)"
    )
    p.add_argument("--seeds", type=_positive, default=1, help="runs per model (seeds 0..K-1)")
    p.add_argument(
        "--concurrent",
        default="1",
        help="runs trained at once on the device: a number, or auto (measured choice)",
    )
    p.add_argument(
        "--pack",
        default="auto",
        choices=["auto", *PACK_MODES],
        help="how packed runs share the device (auto: processes on CPU, streams on CUDA)",
    )
    p.add_argument("--only", nargs="+", help="only these models of the experiment")
    p.add_argument("--runs-dir", default="runs/reproduce", help="where checkpoints live")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="train nothing: list the runs, their checkpoints and ledger entries",
    )
    p.add_argument(
        "--throughput",
        help="with --dry-run: a `reslab bench train` record whose images/s project the remaining "
        "time (a --concurrent record: its best packed aggregate)",
    )

    p = command(
        "queue",
        cmd_queue,
        "the CPU queue of results/queue.yaml: run it, see it, pause it",
        data=True,
        results=True,
    )
    p.add_argument(
        "verb",
        choices=["run", "status", "pause", "resume"],
        help="run: train the unfinished runs in order; status: each run's state and the CPU-hours "
        "left; pause: stop the running queue until --while exits; resume: end every pause",
    )
    p.add_argument("--queue", default="results/queue.yaml", help="the queue file")
    p.add_argument(
        "--runs-dir", default="results/inflight", help="where in-flight runs live (tracked by git)"
    )
    p.add_argument(
        "--while",
        dest="holder",
        type=_positive,
        default=os.getppid(),
        help="pause: until this process exits (default: the calling shell)",
    )

    p = command(
        "report",
        cmd_report,
        "rebuild results/README.md (and the weights index) from the ledger",
        data=True,
        results=True,
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="re-evaluate the runs' weights not checked yet (for the index)",
    )

    p = command(
        "analyze",
        cmd_analyze,
        "why residual learning works: responses, lesion, gradients, shattered",
        data=True,
    )
    p.add_argument("kind", choices=["responses", "lesion", "gradients", "shattered"])
    p.add_argument("--model", action="append", required=True, help="model name (repeat to compare)")
    p.add_argument(
        "--weights",
        action="append",
        default=[],
        help="weights of the --model at the same place (.safetensors, run directory or state "
        "dict); 'none' or none given: fresh He-init",
    )
    p.add_argument(
        "--limit", type=_nonnegative, default=1000, help="first N CIFAR-10 test images (0: all)"
    )
    p.add_argument(
        "--seed", type=_nonnegative, default=0, help="seed of fresh models and random draws"
    )
    p.add_argument("--out", required=True, help="directory for KIND.json, KIND.png, KIND.txt")


def _add_weights_commands(command) -> None:
    """``weights`` and ``export``: trained weights by name, and as files for other runtimes."""
    p = command("weights", cmd_weights, "trained weights by name, with their measured errors")
    p.add_argument("verb", choices=["list"])

    p = command(
        "export",
        cmd_export,
        "a trained net as ONNX, TorchScript or an ExportedProgram",
        weights=True,
    )
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript", "exported-program"])
    p.add_argument("--out", required=True, help="the file to write")
    p.add_argument(
        "--bare",
        action="store_true",
        help="the network alone (normalised input), without its input normalisation",
    )
    p.add_argument(
        "--input-dtype", default="uint8", choices=["uint8", "float32"], help="raw pixels 0-255 as"
    )


def _add_bench_command(command) -> None:
    """``bench``: throughput beside a baseline (which options each kind takes: _bench_options)."""
    p = command(
        "bench",
        cmd_bench,
        "measure throughput side by side with a baseline; table + JSON",
        data=True,
    )
    p.add_argument(
        "kind",
        choices=["data", "train", "infer"],
        help="input pipelines, training, CPU inference runtimes",
    )
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56", "resnet110", "resnet50"])
    p.add_argument("--steps", type=_positive, default=20, help="timed training steps per model")
    p.add_argument(
        "--concurrent",
        type=_positive,
        nargs="+",
        help="measure N runs trained at once against one alone (packed runs)",
    )
    p.add_argument(
        "--pack",
        nargs="+",
        default=["auto"],
        choices=["auto", *PACK_MODES],
        help="packing modes measured with --concurrent",
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--compile",
        default="auto",
        choices=["auto", "false", "default", "reduce-overhead", "max-autotune"],
        help="torch.compile mode of reslab's path (auto: the engine's default)",
    )
    p.add_argument(
        "--cuda-graph",
        default="auto",
        choices=["auto", "true", "false"],
        help="replay whole CIFAR steps from one CUDA graph (auto: on CUDA unless --compile names "
        "a mode)",
    )
    p.add_argument(
        "--imagenet-batch",
        type=_positive,
        help="batch of ImageNet-size models (default 256 on CUDA, 16 on CPU)",
    )
    p.add_argument(
        "--workers",
        type=_nonnegative,
        help="loader workers (JPEG decoding; the baseline's DataLoader)",
    )
    p.add_argument("--out", default="results/bench", help="directory for the JSON record")
    p.add_argument(
        "--note", default="", help="free text stored with the record (e.g. machine load)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    import signal
    import threading

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if threading.current_thread() is threading.main_thread():
        # past a file size limit (`ulimit -f`) a write fails with EFBIG, which names the file,
        # instead of the signal that kills the process without a word
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        return args.func(args)
    except ReslabError as err:
        print(f"reslab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        return 0
    except KeyboardInterrupt:  # Ctrl-C outside training (which checkpoints and stops itself)
        print(f"reslab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
