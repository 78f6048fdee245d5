"""The ``reslab`` command: one entry point, one sub-command per job.

uv run reslab --help
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence


def _add_overrides(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir", help="dataset root (default: $RESLAB_DATA or ~/.cache/reslab/data)"
    )


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info", help="Table-1 style summary of a model: stages, params, multiply-adds"
    )
    p.add_argument("name", help="model name (see `reslab list`)")
    p.add_argument("--shortcut", choices=["A", "B", "C"], help="shortcut option (residual models)")
    p.add_argument("--stride-in", choices=["1x1", "3x3"], help="bottleneck stride position")
    p.add_argument("--num-classes", type=int, help="classifier outputs")
    p.add_argument("--input-size", type=int, help="input height = width (default: 32 or 224)")
    p.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    from reslab.models import create_model
    from reslab.models.complexity import complexity, stage_table

    options = {
        k: v
        for k, v in (
            ("shortcut", args.shortcut),
            ("stride_in", args.stride_in),
            ("num_classes", args.num_classes),
        )
        if v is not None
    }
    model = create_model(args.name, **options)
    size = None
    if args.input_size is not None:
        size = (model.default_input_size[0], args.input_size, args.input_size)
    total = complexity(model, size)
    rows = stage_table(model, size)
    kind = (
        "plain"
        if not model.residual
        else ("pre-activation residual" if model.preact else "residual")
    )
    print(
        f"{args.name}: {kind} network, {model.stem_kind} family, input {'x'.join(map(str, total.input_size))}"
    )
    header = f"{'stage':<8} {'output':<12} {'params':>12} {'mult-adds':>14}  layout"
    print(header)
    print("-" * len(header))
    for r in rows:
        out = "x".join(map(str, r.output_size))
        print(f"{r.name:<8} {out:<12} {r.params:>12,} {r.macs:>14,}  {r.layout}")
    print("-" * len(header))
    print(
        f"{'total':<8} {'':<12} {total.params:>12,} {total.macs:>14,}  ({total.macs / 1e9:.3f}e9 multiply-adds)"
    )
    return 0


def _add_list(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list the registered models")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'plain*'")
    p.set_defaults(func=cmd_list)


def cmd_list(args: argparse.Namespace) -> int:
    from reslab.models import get_model_spec, list_models

    for name in list_models(args.pattern):
        print(f"{name:<20} {get_model_spec(name).family}")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a config (resumes automatically in the same run directory)"
    )
    p.add_argument("config", help="config name (e.g. cifar10/resnet20) or YAML path")
    _add_overrides(p, "override a config key, e.g. --set train.iterations=400 (repeatable)")
    _add_data_dir(p)
    p.add_argument("--out", help="run directory (default: runs/<config name>)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to train")
    p.add_argument("--resume", action="store_true", help="require a checkpoint to resume from")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def _load_run_config(args: argparse.Namespace, extra: list[str] = ()):
    from reslab.config import load_config

    overrides = list(extra) + list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    return load_config(args.config, overrides)


def _comparable(cfg) -> dict:
    """A config without its machine-specific keys (where the data lives may change on resume)."""
    d = cfg.to_dict()
    d["data"].pop("data_dir")
    return d


def _run(cfg, out: str | None, *, resume_required: bool = False, progress: bool = True) -> dict:
    from pathlib import Path

    import yaml

    from reslab.config import config_from_dict
    from reslab.engine.checkpoint import list_checkpoints
    from reslab.engine.trainer import fit

    run_dir = Path(out or Path("runs") / cfg.name)
    has_ckpt = (
        bool(list_checkpoints(run_dir / "checkpoints"))
        or (run_dir / "checkpoints" / "final.pt").is_file()
    )
    if resume_required and not has_ckpt:
        raise FileNotFoundError(f"--resume given but {run_dir / 'checkpoints'} holds no checkpoint")
    if has_ckpt and (run_dir / "config.yaml").is_file():
        previous = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
        if _comparable(previous) != _comparable(cfg):
            raise ValueError(
                f"{run_dir} holds a run of a different config; resume it with its own settings, or "
                "start a new run with --out <another directory>"
            )
    if _is_main_process():
        print(f"run directory: {run_dir}", flush=True)
    return fit(cfg, run_dir, progress=progress)


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _print_summary(summary: dict) -> None:
    import json

    if not _is_main_process():
        return
    if summary["status"] != "finished":
        print(
            f"interrupted at iteration {summary['iteration']}; checkpoint {summary['checkpoint']}; "
            "run the same command again to resume"
        )
        return
    print(
        f"{summary['model']}: {summary['iterations']} iterations, training error "
        f"{summary['train_error']:.2f}%, test error {summary['test_error']:.2f}% "
        f"(accuracy {100 - summary['test_error']:.2f}%), top-5 error {summary['test_top5_error']:.2f}%, "
        f"{summary['images_per_s']:.0f} images/s on {summary['device']}, {summary['wall_time_s']:.0f} s"
    )
    print(
        json.dumps(
            {k: summary[k] for k in ("test_error", "test_top5_error", "train_error", "iterations")}
        )
    )


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _load_run_config(args)
    summary = _run(cfg, args.out, resume_required=args.resume, progress=not args.no_progress)
    _print_summary(summary)
    return 0 if summary["status"] == "finished" else 130


DEMO_ITERATIONS = 800


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help=f"train a CIFAR-10 ResNet-20 for {DEMO_ITERATIONS} iterations and test it"
    )
    p.add_argument("--iterations", type=int, default=DEMO_ITERATIONS, help="training iterations")
    _add_data_dir(p)
    p.add_argument("--out", default="runs/demo", help="run directory")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """The paper's recipe on a 1/80 schedule: lr drops at 50% and 75% of the iterations."""
    n = args.iterations
    args.config, args.device = "cifar10/resnet20", None
    args.overrides = [
        f"train.iterations={n}",
        f"optim.milestones=[{n // 2},{3 * n // 4}]",
        "train.eval_every=0",
        f"train.checkpoint_every={max(n // 4, 1)}",
        f"train.log_every={max(min(100, n // 8), 1)}",
        f"name=demo-resnet20-{n}it",
    ]
    cfg = _load_run_config(args)
    summary = _run(cfg, args.out)
    _print_summary(summary)
    if summary["status"] == "finished" and _is_main_process():
        print(
            f"reslab demo: CIFAR-10 test accuracy of ResNet-20 after {n} iterations: "
            f"{100 - summary['test_error']:.2f}%"
        )
    return 0 if summary["status"] == "finished" else 130


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="test a run directory or model.safetensors (CIFAR-10 or an image folder)"
    )
    p.add_argument("weights", help="run directory or .safetensors file")
    _add_data_dir(p)
    p.add_argument("--split", default="test", choices=["test", "val5k"], help="CIFAR-10 split")
    p.add_argument("--eval-dir", help="image folder under the data root (default: the run's)")
    views = p.add_mutually_exclusive_group()
    views.add_argument("--tencrop", action="store_true", help="10-crop testing (image folders)")
    views.add_argument(
        "--multiscale", action="store_true", help="multi-scale testing, shorter sides 224-640"
    )
    p.add_argument(
        "--limit", type=int, default=0, help="evaluate at most this many images (0: all)"
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=500)
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from reslab.engine.runtime import describe_device, resolve_device
    from reslab.engine.weights import find_weights, load_weights, normalizer_from_metadata

    path = find_weights(args.weights)
    model, meta = load_weights(path)
    device = resolve_device(args.device)
    model = model.to(device)
    normalize = normalizer_from_metadata(meta)
    if meta.get("dataset", "cifar10") == "cifar10":
        if args.tencrop or args.multiscale:
            raise ValueError(
                "--tencrop/--multiscale apply to image-folder models; CIFAR is tested on the single 32x32 view"
            )
        result, what = _eval_cifar(model, meta, normalize, args, device), f"CIFAR-10 {args.split}"
    else:
        result, what = _eval_folder(model, meta, normalize, args, device)
    print(
        f"{meta.get('model')} ({path}): {what} error {result['error']:.2f}% "
        f"(accuracy {100 - result['error']:.2f}%), top-5 error {result['top5_error']:.2f}%, "
        f"{result['images']} images, {describe_device(device)}"
    )
    record = {
        "test_error": result["error"],
        "test_top5_error": result["top5_error"],
        "images": result["images"],
        "split": what,
        "weights": str(path),
    }
    print(json.dumps(record))
    return 0


def _eval_cifar(model, meta, normalize, args, device) -> dict:
    from reslab.data.cifar import load_cifar10
    from reslab.data.loaders import TensorLoader
    from reslab.data.transforms import Normalize
    from reslab.engine.trainer import evaluate

    if normalize is None:  # weights written before the statistics were stored: refit them
        train_x, _ = load_cifar10(args.data_dir, meta.get("train_split", "train"))
        normalize = Normalize.fit(train_x, meta.get("normalization", "pixel"))
    images, labels = load_cifar10(args.data_dir, args.split)
    if args.limit:
        images, labels = images[: args.limit], labels[: args.limit]
    loader = TensorLoader(
        images, labels, args.batch_size, normalize.to(device), train=False, device=device
    )
    return evaluate(model, loader)


def _eval_folder(model, meta, normalize, args, device) -> tuple[dict, str]:
    import torch

    from reslab.data.imagefolder import CenterCrop, ImageFolder, ImageFolderLoader, TenCrop, decode
    from reslab.data.paths import data_root
    from reslab.engine.multiview import multiscale_probs, topk_errors
    from reslab.engine.trainer import evaluate

    root = data_root(args.data_dir) / (args.eval_dir or meta.get("eval_dir", "imagenet/val"))
    resize, crop = int(meta.get("resize", 256)), int(meta.get("crop", 224))
    normalize = normalize.to(device)
    if args.multiscale:
        dataset = ImageFolder(root).strided(args.limit)
        top1 = top5 = 0
        for path, label in dataset.samples:
            probs = multiscale_probs(model.eval(), decode(path), normalize)
            e1, e5 = topk_errors(probs[None], torch.tensor([label], device=probs.device))
            top1, top5 = top1 + e1, top5 + e5
        n = len(dataset.samples)
        return {
            "error": 100 * top1 / n,
            "top5_error": 100 * top5 / n,
            "images": n,
        }, f"{root} multi-scale"
    transform = TenCrop(resize, crop) if args.tencrop else CenterCrop(resize, crop)
    batch = max(1, args.batch_size // 10) if args.tencrop else args.batch_size
    dataset = ImageFolder(root, transform).strided(args.limit)
    loader = ImageFolderLoader(dataset, batch, normalize, train=False, device=device)
    return evaluate(model, loader), f"{root} {'10-crop' if args.tencrop else 'centre crop'}"


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="top-k classes of an image or of every image in a folder")
    p.add_argument("weights", help="run directory or .safetensors file")
    p.add_argument("images", help="an image file or a folder of images")
    p.add_argument("--topk", type=int, default=5, help="classes to show per image")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import torch
    import torchvision.transforms.v2.functional as TF

    from reslab.data.imagefolder import IMG_EXTENSIONS, CenterCrop, decode
    from reslab.engine.runtime import resolve_device
    from reslab.engine.weights import find_weights, load_weights, normalizer_from_metadata

    model, meta = load_weights(find_weights(args.weights))
    normalize = normalizer_from_metadata(meta)
    if normalize is None:
        raise ValueError(
            f"{args.weights} does not store its input normalisation; retrain or use `reslab eval`"
        )
    classes = json.loads(meta.get("classes", "[]"))
    device = resolve_device(args.device)
    model, normalize = model.to(device).eval(), normalize.to(device)
    target = Path(args.images)
    if target.is_dir():
        files = sorted(p for p in target.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
    elif target.is_file():
        files = [target]
    else:
        raise FileNotFoundError(f"{target} is neither an image file nor a folder")
    if not files:
        raise FileNotFoundError(f"no {'/'.join(IMG_EXTENSIONS)} images in {target}")
    size = json.loads(meta.get("input_size", "[3, 224, 224]"))[-1]
    view = CenterCrop(int(meta.get("resize", 256)), int(meta.get("crop", 224)))
    for path in files:
        image = decode(path)
        x = (
            TF.resize(image, [size, size], antialias=True)
            if meta.get("dataset") == "cifar10"
            else view(image)
        )
        with torch.no_grad():
            probs = torch.softmax(model(normalize(x[None].to(device))).float(), 1)[0]
        top = probs.topk(min(args.topk, len(probs)))
        names = [classes[i] if i < len(classes) else str(i) for i in top.indices.tolist()]
        print(
            f"{path}: "
            + ", ".join(
                f"{n} {100 * p:.1f}%" for n, p in zip(names, top.values.tolist(), strict=True)
            )
        )
    return 0


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze", help="why residual learning works: responses, lesion, gradients, shattered"
    )
    p.add_argument("kind", choices=["responses", "lesion", "gradients", "shattered"])
    p.add_argument("--model", action="append", required=True, help="model name (repeat to compare)")
    p.add_argument(
        "--weights",
        action="append",
        default=[],
        help="weights for the --model at the same position: model.safetensors, a run directory "
        "or a state-dict file; 'none' (or leaving them all out) for a fresh He-initialised model",
    )
    _add_data_dir(p)
    p.add_argument(
        "--limit", type=int, default=1000, help="first N CIFAR-10 test images (0: all 10,000)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of fresh models and random draws")
    p.add_argument("--out", required=True, help="directory for KIND.json, KIND.png, KIND.txt")
    p.set_defaults(func=cmd_analyze)


def cmd_analyze(args: argparse.Namespace) -> int:
    from reslab.analysis import gradients, lesion, responses, shattered
    from reslab.analysis.common import cifar_test_batches, load_model, normalizer_for, write_outputs

    if args.weights and len(args.weights) != len(args.model):
        raise ValueError(
            f"{len(args.model)} --model but {len(args.weights)} --weights; give one per model ('none' for fresh)"
        )
    weights = [
        None if w in (None, "none") else w for w in (args.weights or [None] * len(args.model))
    ]
    models = []
    for name, w in zip(args.model, weights, strict=True):
        model = load_model(name, w, args.seed)
        if getattr(model, "stem_kind", "") != "cifar":
            raise ValueError(
                f"{name}: the analyses run on CIFAR-family models (e.g. resnet20, plain56)"
            )
        models.append((name if w is None else f"{name} ({w})", model, w))
    normalize = normalizer_for(weights[0], args.data_dir)
    batches = cifar_test_batches(args.data_dir, args.limit, normalize)
    if args.kind == "responses":
        record, summary, fig = responses.analyze(models, batches, args.limit)
    elif args.kind == "lesion":
        if len(models) != 1:
            raise ValueError("lesion analyses one model at a time")
        record, summary, fig = lesion.analyze(*models[0][:2], batches, args.limit, seed=args.seed)
        record["weights"] = models[0][2]
    elif args.kind == "gradients":
        x, y = batches[0]
        record, summary, fig = gradients.analyze(models, x[:64], y[:64])
    else:
        x, _ = batches[0]
        record, summary, fig = shattered.analyze(models, (x[0], x[1]), [1, 2, 4, 8, 16, 32, 50])
    record["limit"] = args.limit
    out = write_outputs(args.out, args.kind, record, summary, fig)
    print(summary)
    print(f"wrote {out}/{args.kind}.json, .png, .txt")
    return 0


def _add_detect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="Faster R-CNN over reslab ResNets: train, evaluate, draw")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    t = verbs.add_parser("train", help="train a detection config (resumable)")
    t.add_argument("config", help="config name (e.g. detection/coco128_fpn_resnet50) or YAML path")
    _add_overrides(t, "config override, e.g. train.iterations=20")
    _add_data_dir(t)
    t.add_argument("--out", help="run directory (default runs/<config name>)")
    t.add_argument("--no-progress", action="store_true")
    e = verbs.add_parser("eval", help="COCO mAP (and VOC07 mAP for VOC data) of trained weights")
    e.add_argument("weights", help="run directory or model.safetensors of `detect train`")
    e.add_argument("--data", help="data root holding the run's validation set (default: its own)")
    e.add_argument("--limit", type=int, default=0, help="first N validation images (0: all)")
    e.add_argument("--visualize", help="write PNGs of the first --draw images with boxes here")
    e.add_argument("--draw", type=int, default=8, help="images to draw with --visualize")
    e.add_argument("--threshold", type=float, default=0.5, help="score threshold for drawing")
    p.set_defaults(func=cmd_detect)


def cmd_detect(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from reslab.detection import train as det

    if args.verb == "train":
        overrides = list(args.overrides)
        if args.data_dir:
            overrides.append(f"data.data_dir={args.data_dir}")
        cfg = det.load_det_config(args.config, overrides)
        out = Path(args.out or Path("runs") / cfg.name)
        print(f"run directory: {out}")
        summary = det.fit_detector(cfg, out, progress=not args.no_progress)
        if summary["status"] != "finished":
            print(
                f"interrupted at iteration {summary['iteration']}; run the same command to resume"
            )
            return 130
        print(
            f"{cfg.name}: {summary['iterations']} iterations, mAP@[.5:.95] {summary['val_map']:.3f}, "
            f"mAP@.5 {summary['val_map50']:.3f} on {summary['device']}"
        )
        return 0
    model, cfg, classes = det.load_detector(args.weights)
    if args.data:
        cfg.data.data_dir = args.data
    cfg.data.val_limit = args.limit
    _, val = det.build_datasets(cfg)
    device = torch_device()
    model.to(device)
    preds = det.predict(model, val, device, test_size=cfg.model.test_size, progress=True)
    result = det.score(val, preds, cfg.data.format)
    if args.visualize:
        for i in range(min(args.draw, len(val))):
            image, target = val[i]
            image_id = int(target["image_id"])
            det.visualize(
                image,
                preds[image_id],
                classes,
                Path(args.visualize) / f"{image_id}.png",
                args.threshold,
            )
        print(f"drew {min(args.draw, len(val))} images into {args.visualize}")
    print(
        f"mAP@[.5:.95] {result['map']:.3f}, mAP@.5 {result['map50']:.3f} on {len(val)} images"
        + (f", VOC07 mAP {result['voc07_map']:.3f}" if "voc07_map" in result else "")
    )
    print(json.dumps({**result, "images": len(val), "weights": str(args.weights)}))
    return 0


def torch_device():
    from reslab.engine.runtime import resolve_device

    return resolve_device("auto")


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce", help="run one of the paper's CIFAR-10 experiments into the results ledger"
    )
    p.add_argument(
        "experiment",
        choices=["table6", "fig6", "fig7", "options", "resnet1202", "preact"],
        help="fig6 also draws the figure and its report; fig7 trains (or reuses) the fig6 nets "
        "of the schedule and measures their layer responses; options trains ResNet-32/56 with "
        "shortcut options A/B/C and charts them",
    )
    p.add_argument(
        "--schedule", default="1", help="fraction of the paper's iterations, e.g. 1/8 (default 1)"
    )
    p.add_argument("--seeds", type=int, default=1, help="runs per model (seeds 0..K-1)")
    p.add_argument("--only", nargs="+", help="only these models of the experiment")
    _add_data_dir(p)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--runs-dir", default="runs/reproduce", help="where checkpoints live")
    p.add_argument("--results", default="results", help="the ledger")
    _add_overrides(p, "extra config override for every run (recorded in the run's config)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_reproduce)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from reslab.experiments import figures
    from reslab.experiments.report import build
    from reslab.experiments.reproduce import parse_schedule, reproduce

    schedule = parse_schedule(args.schedule)
    experiment = "fig6" if args.experiment == "fig7" else args.experiment
    summaries = reproduce(
        experiment,
        schedule,
        args.seeds,
        args.only,
        data_dir=args.data_dir,
        device=args.device,
        runs_dir=args.runs_dir,
        results_dir=args.results,
        argv=args.argv,
        progress=not args.no_progress,
        overrides=args.overrides,
    )
    for summary in summaries:
        _print_summary(summary)
    finished = all(s["status"] == "finished" for s in summaries)
    command = "reslab " + shlex.join(args.argv)
    if experiment == "fig6" and any(s["status"] == "finished" for s in summaries):
        print(f"wrote {figures.fig6(args.results, schedule, command)}")
    if args.experiment == "fig7" and finished:
        print(f"wrote {figures.fig7(args.results, schedule, args.data_dir, command=command)}")
    if experiment == "options" and any(s["status"] == "finished" for s in summaries):
        print(f"wrote {figures.options(args.results, schedule, command)}")
    build(args.results)
    return 0 if finished else 130


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="rebuild results/README.md from the finished runs in the ledger"
    )
    p.add_argument("--results", default="results", help="the ledger")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from reslab.experiments.report import build

    print(build(args.results), end="")
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="measure throughput side by side with a baseline; table + JSON"
    )
    p.add_argument("kind", choices=["data", "train"], help="input pipelines, or training/inference")
    p.add_argument(
        "--models",
        nargs="+",
        default=["resnet20", "resnet56", "resnet110", "resnet50"],
        help="models for `bench train`",
    )
    p.add_argument(
        "--steps", type=int, default=20, help="timed training steps per model (`bench train`)"
    )
    p.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="where to measure (`bench train`)"
    )
    p.add_argument(
        "--compile",
        default="auto",
        choices=["auto", "off", "default", "reduce-overhead", "max-autotune"],
        help="torch.compile mode of reslab's path (`bench train`; auto: the engine's default, "
        "CUDA graphs on CUDA, eager on CPU)",
    )
    p.add_argument(
        "--cuda-graph",
        default="auto",
        choices=["auto", "on", "off"],
        help="replay whole CIFAR steps from one CUDA graph (`bench train`; auto: on CUDA unless "
        "--compile names a mode)",
    )
    p.add_argument(
        "--imagenet-batch",
        type=int,
        default=None,
        help="batch of the ImageNet-size models (`bench train`; default 256 on CUDA, 16 on CPU)",
    )
    _add_data_dir(p)
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="loader workers: JPEG decoding (`bench data`, default 2) or the baseline's "
        "DataLoader (`bench train`, default 4 on CUDA, 2 on CPU)",
    )
    p.add_argument("--out", default="results/bench", help="directory for the JSON record")
    p.add_argument(
        "--note", default="", help="free text stored with the record (e.g. machine load)"
    )
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    import datetime as dt
    import json
    from pathlib import Path

    import torch

    from reslab.bench import data as data_bench
    from reslab.bench import train as train_bench
    from reslab.engine.runtime import code_version, describe_device

    if args.kind == "data":
        rows = data_bench.run(args.data_dir, 2 if args.workers is None else args.workers)
        print(f"{'benchmark':<24} {'images/s':>10} {'baseline':>10} {'ratio':>6}")
        for r in rows:
            base = r.get("baseline_images_per_s")
            ratio = f"{r['images_per_s'] / base:.2f}x" if base else "-"
            print(f"{r['name']:<24} {r['images_per_s']:>10.0f} {base or 0:>10.0f} {ratio:>6}")
    else:
        rows = train_bench.run(
            args.models,
            args.data_dir,
            args.device,
            args.steps,
            imagenet_batch=args.imagenet_batch,
            compile=args.compile,
            workers=args.workers,
            cuda_graph=args.cuda_graph,
        )
        print(
            f"{'model':<10} {'train img/s':>11} {'baseline':>9} {'ratio':>6} {'paper schedule':>15} {'infer img/s':>12} {'baseline':>9}"
        )
        for r in rows:
            sched = f"{r['paper_schedule_s'] / 3600:.2f} h" if "paper_schedule_s" in r else "-"
            print(
                f"{r['model']:<10} {r['images_per_s']:>11.0f} {r['baseline_images_per_s']:>9.0f} "
                f"{r['speedup']:>5.2f}x {sched:>15} {r['inference_images_per_s']:>12.0f} "
                f"{r['baseline_inference_images_per_s']:>9.0f}"
            )
    now = dt.datetime.now(dt.UTC)
    record = {
        "kind": args.kind,
        "device": describe_device(
            getattr(args, "device", "cpu") if args.kind == "train" else "cpu"
        ),
        "command": "reslab " + shlex.join(args.argv),
        "code_version": code_version(),
        "torch_version": torch.__version__,
        "date": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "note": args.note,
        "results": rows,
    }
    where = args.device if args.kind == "train" else "cpu"
    out = Path(args.out) / f"{now:%Y-%m-%d}-{where}-{args.kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reslab",
        description="Deep residual networks (He et al., 2016): models, training, analysis.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_list,
        _add_info,
        _add_train,
        _add_eval,
        _add_predict,
        _add_demo,
        _add_reproduce,
        _add_detect,
        _add_report,
        _add_analyze,
        _add_bench,
    ):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"reslab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        return 0


if __name__ == "__main__":
    sys.exit(main())
